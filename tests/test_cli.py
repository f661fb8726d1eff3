"""The command line: success paths, one-line errors, nothing half-written (CONTRACT section 5)."""

import json
import subprocess
import sys
import textwrap

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from biplanar.cli import app
from biplanar.data.analytic import ellipsoid_chord_lengths, voxelize_ellipsoid
from biplanar.geometry import VolumeGrid
from biplanar.io.geometry_file import read_geometry

runner = CliRunner()
SEMI_AXES = (20.0, 15.0, 25.0)


@pytest.fixture()
def case(tmp_path):
    """A water-equivalent ellipsoid CT (0 HU inside, -1000 outside) off the origin, and a geometry file."""
    grid = VolumeGrid.from_spacing((40, 36, 44), (1.5, 1.5, 1.5), centre_world=(10.0, -20.0, 30.0))
    occupancy = voxelize_ellipsoid(grid, tuple(grid.centre_world), SEMI_AXES).numpy()
    hu = (-1000.0 + 1000.0 * occupancy).astype(np.float32)
    nib.save(nib.Nifti1Image(hu, grid.affine), str(tmp_path / "ct.nii.gz"))
    result = runner.invoke(
        app, ["geometry", "--out", str(tmp_path / "g.json"), "--rows", "64", "--cols", "48", "--pixel-spacing", "1.5"]
    )
    assert result.exit_code == 0, result.output
    return tmp_path, grid


def test_drr_matches_the_analytic_chord(case):
    tmp_path, grid = case
    result = runner.invoke(
        app,
        [
            "drr",
            "--volume",
            str(tmp_path / "ct.nii.gz"),
            "--geometry",
            str(tmp_path / "g.json"),
            "--view",
            "LAT",
            "--out",
            str(tmp_path / "lat.tif"),
            "--preview",
            str(tmp_path / "lat.png"),
        ],
    )
    assert result.exit_code == 0, result.output
    import tifffile

    image = tifffile.imread(tmp_path / "lat.tif")
    assert image.shape == (64, 48) and image.dtype == np.float32
    view = read_geometry(tmp_path / "g.json", default_isocenter_mm=grid.centre_world)["LAT"]
    chord = ellipsoid_chord_lengths(view, tuple(grid.centre_world), SEMI_AXES).numpy()
    centre = chord >= 0.8 * chord.max()
    np.testing.assert_allclose(image[centre], 0.02 * chord[centre], rtol=0.01)
    assert (tmp_path / "lat.png").stat().st_size > 0


def test_drr_modes(case):
    tmp_path, _ = case
    outputs = {}
    for mode in ("line_integral", "beer_lambert", "poisson"):
        out = tmp_path / f"{mode}.npy"
        result = runner.invoke(
            app,
            [
                "drr",
                "--volume",
                str(tmp_path / "ct.nii.gz"),
                "--geometry",
                str(tmp_path / "g.json"),
                "--mode",
                mode,
                "--photons",
                "1e6",
                "--out",
                str(out),
            ],
        )
        assert result.exit_code == 0, result.output
        outputs[mode] = np.load(out)
    np.testing.assert_allclose(outputs["beer_lambert"], np.exp(-outputs["line_integral"]), rtol=1e-6)
    np.testing.assert_allclose(outputs["poisson"], outputs["line_integral"], atol=0.02)
    assert not np.array_equal(outputs["poisson"], outputs["line_integral"])


def write_json(path, document):
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--volume", "{d}/missing.nii.gz"], "missing.nii.gz: file not found"),
        (["--geometry", "{d}/missing.json"], "missing.json: file not found"),
        (["--view", "OBLIQUE"], "views: missing OBLIQUE"),
        (["--geometry", "{d}/bad.json"], "bad.json: views.AP.image_shape"),
        (["--volume", "{d}/flat.nii.gz"], "flat.nii.gz: expected a 3D volume"),
        (["--volume", "{d}/broken.nii.gz"], "broken.nii.gz: not a readable NIfTI volume"),
        (["--out", "{d}/out.jpg"], "out.jpg: unsupported output format"),
    ],
)
def test_bad_input_gives_one_line_and_no_output(case, arguments, message):
    tmp_path, _ = case
    write_json(tmp_path / "bad.json", {"views": {"AP": {"image_shape": [64], "carm": {}}}})
    nib.save(nib.Nifti1Image(np.zeros((5, 6), np.float32), np.eye(4)), str(tmp_path / "flat.nii.gz"))
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti file")
    defaults = {"--volume": "{d}/ct.nii.gz", "--geometry": "{d}/g.json", "--out": "{d}/out.npy"}
    options = dict(defaults, **dict(zip(arguments[::2], arguments[1::2])))
    command = ["drr"] + [part.format(d=tmp_path) for pair in options.items() for part in pair]
    before = set(tmp_path.iterdir())
    result = runner.invoke(app, command)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("biplanar: error:") and message in lines[0]
    assert set(tmp_path.iterdir()) == before  # nothing written, no temporary debris


def test_cli_as_a_subprocess(case):
    tmp_path, _ = case
    command = [
        sys.executable,
        "-m",
        "biplanar",
        "drr",
        "--volume",
        str(tmp_path / "ct.nii.gz"),
        "--geometry",
        str(tmp_path / "g.json"),
        "--out",
        str(tmp_path / "ap.npy"),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert np.load(tmp_path / "ap.npy").shape == (64, 48)
    failed = subprocess.run(command + ["--view", "NONE", "--overwrite"], capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr and "NONE" in failed.stderr


def test_entry_point_sets_the_garbage_collector_for_start_up_and_exit(fresh_python):
    """main() raises generation 0's threshold for the command and freezes every object at exit,
    exit code and output unchanged."""
    code = (
        "import gc, sys\n"
        "from biplanar.cli import GC_GENERATION0_THRESHOLD, main\n"
        "sys.argv = ['biplanar', '--help']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as error:\n"
        "    code = error.code\n"
        "print(code, gc.get_threshold()[0] == GC_GENERATION0_THRESHOLD, gc.get_freeze_count() > 0)\n"
    )
    output = fresh_python(code)
    assert "register" in output
    assert output.splitlines()[-1] == "0 True True"


INTERRUPTED_IN_EXEC = {
    # Ctrl-C lands inside an ``exec`` of a string, as it does while torch's dataclasses are created.
    "command": "with cli._reporting_errors():\n    exec('raise KeyboardInterrupt')\n",
    "training": (
        "with cli._reporting_interruption():\n"
        "    exec('stop = KeyboardInterrupt(); stop.checkpoint = \"last.pt\"; raise stop')\n"
    ),
}


@pytest.mark.parametrize("where", sorted(INTERRUPTED_IN_EXEC))
def test_interruption_inside_exec_still_exits_130(where, tmp_path):
    """CPython marks a KeyboardInterrupt raised inside ``exec(str)`` as unhandled even once it is
    caught, and a program run with ``-m`` (as ``python -m biplanar``) would then end by SIGINT (-2);
    the CLI's interrupted exit must stay 130."""
    code = (
        "import sys, typer\n"
        "from biplanar import cli\n"
        "try:\n" + textwrap.indent(INTERRUPTED_IN_EXEC[where], "    ") + "except typer.Exit as stop:\n"
        "    sys.exit(stop.exit_code)\n"
    )
    (tmp_path / "interrupted_in_exec.py").write_text(code)
    command = [sys.executable, "-m", "interrupted_in_exec"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert completed.returncode == 130, (completed.returncode, completed.stderr)
    assert completed.stderr.strip().splitlines()[-1].startswith("biplanar: interrupted")


def test_train_command_runs_and_refuses_bad_input(tmp_path):
    """`biplanar train` on a 3-subject tiny dataset for one epoch, then one-line refusals."""
    from biplanar.data.simulate import SimulationConfig, simulate_dataset

    simulate_dataset(tmp_path / "data", 3, 0, SimulationConfig(preset="tiny"), progress=False)
    arguments = ["train", "--config", "tiny", "--data", str(tmp_path / "data"), "--epochs", "1"]
    result = runner.invoke(app, arguments + ["--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "trained 1 epochs" in result.output and (tmp_path / "run" / "last.pt").is_file()
    again = runner.invoke(app, arguments + ["--out", str(tmp_path / "run")])
    assert again.exit_code == 2 and "--resume" in again.output
    wrong = runner.invoke(
        app, ["train", "--config", "lite", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run2")]
    )
    assert wrong.exit_code == 2 and "grid_preset" in wrong.output and not (tmp_path / "run2").exists()


def test_register_command_defaults_to_the_bundled_model(tmp_path):
    """No --model: the bundled lite model is loaded, and the next error is the missing geometry file."""
    result = runner.invoke(
        app,
        [
            "register",
            "--geometry",
            str(tmp_path / "g.json"),
            "--ap",
            "a.npy",
            "--lat",
            "b.npy",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    errors = [line for line in result.output.splitlines() if line.startswith("biplanar: error:")]
    assert result.exit_code == 2 and len(errors) == 1 and errors[0].endswith("g.json: file not found")
    assert not (tmp_path / "out").exists()
