"""The Python API (``biplanar.api``, exported by ``import biplanar``) and the CLI as a thin wrapper over it."""

from __future__ import annotations

import ast
import importlib
import inspect
import math
import re
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

import biplanar
from biplanar import api, cli
from biplanar.cli import app
from biplanar.data.analytic import voxelize_ellipsoid
from biplanar.errors import InputError
from biplanar.geometry import VolumeGrid
from biplanar.training.trainer import TrainingInterrupted, TrainingRun

runner = CliRunner()

# CLI command -> the API function it calls.
COMMANDS = {
    "drr": "drr",
    "geometry": "write_geometry",
    "atlas": "write_atlas",
    "simulate": "simulate",
    "train": "train",
    "train-baseline": "train_baseline",
    "train-pose": "train_pose",
    "register": "register",
    "segment": "segment",
    "preprocess": "preprocess",
    "demo": "run_demo",
    "evaluate": "evaluate",
    "pose": "estimate_pose",
    "evaluate-pose": "evaluate_pose",
    "experiments": "run_experiments",
}
SUBPACKAGES = [
    "api",
    "cli",
    "config",
    "data",
    "demo",
    "devices",
    "errors",
    "evaluation",
    "experiments",
    "geometry",
    "io",
    "layers",
    "models",
    "optimisation",
    "physics",
    "pose",
    "registration",
    "training",
]


def test_every_command_has_an_api_function():
    commands = {info.name or info.callback.__name__.replace("_", "-") for info in app.registered_commands}
    assert commands == set(COMMANDS)
    assert set(COMMANDS.values()) <= set(api.__all__)


@pytest.mark.parametrize("name", api.__all__)
def test_api_functions_are_exported_typed_and_documented(name):
    function = getattr(api, name)
    assert getattr(biplanar, name) is function
    assert name in biplanar.__all__ and name in dir(biplanar)
    doc = inspect.getdoc(function)
    assert doc and "Args:" in doc and "Returns:" in doc
    if name in COMMANDS.values():
        assert "Raises:" in doc and "InputError" in doc
    signature = inspect.signature(function)
    assert signature.return_annotation is not inspect.Signature.empty
    assert all(parameter.annotation is not inspect.Parameter.empty for parameter in signature.parameters.values())
    documented = doc.split("Args:")[1].split("Returns:")[0]
    assert all(f"{parameter}:" in documented for parameter in signature.parameters)


def test_package_exports_exactly_the_api():
    assert sorted(biplanar.__all__) == sorted(api.__all__)
    assert biplanar.__version__ == version("biplanar")
    with pytest.raises(AttributeError, match="no_such_function"):
        biplanar.no_such_function  # noqa: B018


def test_api_names_are_not_shadowed_by_subpackages():
    """Importing every subpackage sets it as an attribute of ``biplanar``; no API name may be one."""
    for subpackage in SUBPACKAGES:
        importlib.import_module(f"biplanar.{subpackage}")
    assert not set(api.__all__) & set(SUBPACKAGES)
    for name in api.__all__:
        assert getattr(biplanar, name) is getattr(api, name)


def test_import_biplanar_does_not_import_torch(fresh_python):
    """Importing the package, the API and the CLI (and listing the API) loads nothing heavy; so does
    fetching an API function defined in ``biplanar.api``. Fetching one of ``api.IMPLEMENTED_IN`` imports
    its module (and so torch)."""
    code = (
        "import sys, biplanar, biplanar.api, biplanar.cli; "
        "listed = dir(biplanar) + dir(biplanar.api); "
        "own = [getattr(biplanar, name) for name in biplanar.__all__ if name not in biplanar.api.IMPLEMENTED_IN]; "
        "heavy = lambda: sorted(name for name in ('torch', 'numpy', 'nibabel', 'monai') if name in sys.modules); "
        "print(heavy()); "
        "functions = [getattr(biplanar, name) for name in biplanar.__all__]; "
        "print(len(functions), 'torch' in heavy())"
    )
    assert fresh_python(code).split() == ["[]", str(len(api.__all__)), "True"]


@pytest.mark.parametrize("name", sorted(api.IMPLEMENTED_IN))
def test_api_exposes_the_implementing_functions_themselves(name):
    """An API function of ``IMPLEMENTED_IN`` is its module's function, listed by ``dir`` and exported."""
    module = importlib.import_module(api.IMPLEMENTED_IN[name])
    assert getattr(api, name) is getattr(module, name) is getattr(biplanar, name)
    assert name in api.__all__ and name in dir(api)
    with pytest.raises(AttributeError, match="no_such_function"):
        api.no_such_function  # noqa: B018


def _function_level_imports(path: Path) -> list[tuple[int, str]]:
    """``(line number, line)`` of every import inside a function of ``path``."""
    lines = path.read_text().splitlines()
    found = []
    for function in ast.walk(ast.parse(path.read_text())):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    found.append((node.lineno, lines[node.lineno - 1]))
    return found


@pytest.mark.parametrize("module", [api, cli])
def test_function_level_imports_are_marked_lazy(module):
    imports = _function_level_imports(Path(module.__file__))
    assert imports
    assert [line for _, line in imports if "# lazy: CLI start-up time" not in line] == []


def test_cli_imports_only_the_api_below_it():
    imports = [line.strip() for _, line in _function_level_imports(Path(cli.__file__))]
    assert {line.split("  #")[0] for line in imports} == {
        "from biplanar import api",
        "from rich.console import Console",
    }


def _recorder(name: str, calls: list[tuple[str, dict[str, Any]]], result: Any):
    """A stand-in for ``api.<name>`` recording its arguments by parameter name (defaults filled in)."""
    signature = inspect.signature(getattr(api, name))

    def record(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append((name, dict(bound.arguments)))
        return result(bound.arguments) if callable(result) else result

    return record


def _defaults(name: str) -> dict[str, Any]:
    parameters = inspect.signature(getattr(api, name)).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def _summary(arguments: dict[str, Any], rows: Any) -> Any:
    """Write the ``summary.md`` the ``evaluate`` / ``evaluate-pose`` commands print."""
    out = Path(arguments["out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text("| summary |\n")
    return rows if rows is not None else SimpleNamespace(out_dir=out)


def _cases(tmp: Path) -> list[tuple[list[str], str, dict[str, Any], Any, str]]:
    """Per command: arguments, the API function, the values it must get, its stand-in result, a line printed."""
    t = str(tmp)
    return [
        (
            ["drr", "--volume", "ct.nii.gz", "--geometry", "g.json", "--out", f"{t}/lat.tif", "--view", "LAT"]
            + ["--mode", "poisson", "--units", "mu", "--mu-water", "0.019", "--samples", "64", "--photons", "1e4"]
            + ["--seed", "3", "--kvp", "70", "--aluminium-mm", "3", "--preview", f"{t}/lat.png"],
            "drr",
            {
                "volume": Path("ct.nii.gz"),
                "geometry": Path("g.json"),
                "out": Path(f"{t}/lat.tif"),
                "view": "LAT",
                "mode": "poisson",
                "units": "mu",
                "mu_water_per_mm": 0.019,
                "num_samples": 64,
                "photons": 1e4,
                "seed": 3,
                "kvp": 70.0,
                "aluminium_mm": 3.0,
                "preview": Path(f"{t}/lat.png"),
            },
            np.full((3, 4), 0.5, np.float32),
            f"wrote {t}/lat.tif (3 x 4, min 0.5, max 0.5)",
        ),
        (
            ["geometry", "--out", f"{t}/g.json", "--ap-angle", "5", "--lat-angle", "80", "--rows", "64"]
            + ["--cols", "48", "--pixel-spacing", "1.5"],
            "write_geometry",
            {
                "out": Path(f"{t}/g.json"),
                "ap_angle_deg": 5.0,
                "lat_angle_deg": 80.0,
                "image_shape": (64, 48),
                "pixel_spacing_mm": 1.5,
            },
            {},
            f"wrote {t}/g.json",
        ),
        (
            ["atlas", "--out", f"{t}/atlas", "--preset", "tiny"],
            "write_atlas",
            {"out": Path(f"{t}/atlas"), "preset": "tiny"},
            Path(f"{t}/atlas"),
            f"wrote the tiny atlas to {t}/atlas",
        ),
        (
            ["simulate", "--out", f"{t}/sim", "--n", "4", "--seed", "2", "--geometry", "mixed", "--preset", "tiny"]
            + ["--mode", "polychromatic", "--photons", "1e3", "--kvp", "90", "--aluminium-mm", "1", "--workers", "2"]
            + ["--off-model-mm", "1.5"],
            "simulate",
            {
                "out": Path(f"{t}/sim"),
                "n": 4,
                "seed": 2,
                "geometry": "mixed",
                "preset": "tiny",
                "mode": "polychromatic",
                "photons": 1e3,
                "kvp": 90.0,
                "aluminium_mm": 1.0,
                "workers": 2,
                "off_model_mm": 1.5,
            },
            SimpleNamespace(written=("case_00000", "case_00001"), skipped=("case_00002",)),
            f"wrote 2 subjects to {t}/sim, 1 already there",
        ),
        (
            ["train", "--config", "tiny", "--out", f"{t}/run", "--on-the-fly", "5", "--resume", "--epochs", "3"],
            "train",
            {"config": "tiny", "out": Path(f"{t}/run"), "on_the_fly": 5, "resume": True, "epochs": 3},
            SimpleNamespace(epochs_completed=3, global_step=12, best_val_dice=math.nan),
            f"trained 3 epochs (12 steps); best validation Dice n/a; checkpoints in {t}/run",
        ),
        (
            ["train-baseline", "--method", "sdm", "--config", "tiny", "--data", f"{t}/sim", "--out", f"{t}/sdm"]
            + ["--epochs", "2"],
            "train_baseline",
            {"method": "sdm", "config": "tiny", "data": Path(f"{t}/sim"), "out": Path(f"{t}/sdm"), "epochs": 2},
            SimpleNamespace(epochs_completed=2, global_step=6, best_val_dice=0.8123),
            f"trained sdm for 2 epochs (6 steps); best validation Dice 0.812; checkpoints in {t}/sdm",
        ),
        (
            ["train-pose", "--config", "sopi_tiny", "--out", f"{t}/rtpi", "--network", "rtpi", "--steps", "40"]
            + ["--max-steps", "20"],
            "train_pose",
            {"config": "sopi_tiny", "out": Path(f"{t}/rtpi"), "network": "rtpi", "steps": 40, "max_steps": 20},
            SimpleNamespace(global_step=20, best_val_loss=0.25),
            f"trained rtpi for 20 steps; best validation loss 0.2500; checkpoints in {t}/rtpi",
        ),
        (
            ["register", "--geometry", "g.json", "--ap", "AP.npy", "--lat", "LAT.npy", "--out", f"{t}/reg"]
            + ["--model", "m.pt", "--atlas", "atlas", "--ap-mask", "APm.npy", "--lat-mask", "LATm.npy"]
            + ["--truth-labels", "labels.nii.gz", "--refine", "5", "--estimate-pose", "--pose-method", "opt-ncc"]
            + ["--mesh-format", "vtk"],
            "register",
            {
                "geometry": Path("g.json"),
                "ap": Path("AP.npy"),
                "lat": Path("LAT.npy"),
                "out": Path(f"{t}/reg"),
                "model": Path("m.pt"),
                "atlas": Path("atlas"),
                "ap_mask": Path("APm.npy"),
                "lat_mask": Path("LATm.npy"),
                "truth_labels": Path("labels.nii.gz"),
                "refine": 5,
                "estimate_pose": True,
                "pose_method": "opt-ncc",
                "mesh_format": "vtk",
            },
            SimpleNamespace(report={"dice": 0.91, "assd_mm": None, "timings_s": {"total": 1.25}}),
            f"wrote {t}/reg in 1.2 s (dice 0.910)",
        ),
        (
            ["segment", "--image", "LAT.dcm", "--out", f"{t}/mask.png", "--view", "LAT", "--side", "left"]
            + ["--intensity", "transmission", "--air-level", "4000"],
            "segment",
            {
                "image": Path("LAT.dcm"),
                "out": Path(f"{t}/mask.png"),
                "view": "LAT",
                "side": "left",
                "intensity": "transmission",
                "air_level": 4000.0,
            },
            np.zeros((2, 3), dtype=bool),
            f"wrote {t}/mask.png (0 femur pixels of 6)",
        ),
        (
            ["preprocess", "--ct", "ct.nii.gz", "--labels", "seg.nii.gz", "--label", "76", "--side", "left"]
            + ["--out", f"{t}/femur", "--preset", "tiny"],
            "preprocess",
            {
                "ct": Path("ct.nii.gz"),
                "labels": Path("seg.nii.gz"),
                "label": 76,
                "side": "left",
                "out": Path(f"{t}/femur"),
                "preset": "tiny",
            },
            SimpleNamespace(
                frame=SimpleNamespace(axes=SimpleNamespace(head_radius_mm=22.04, neck_shaft_angle_deg=128))
            ),
            f"wrote {t}/femur (head radius 22.0 mm, neck-shaft angle 128.0 deg)",
        ),
        (
            ["demo", "--out", f"{t}/demo", "--model", "m.pt", "--seed", "9"],
            "run_demo",
            {"out": Path(f"{t}/demo"), "model": Path("m.pt"), "seed": 9},
            SimpleNamespace(report_page=Path(f"{t}/demo/registration/report.html")),
            f"report: {t}/demo/registration/report.html (open it in a browser)",
        ),
        (
            ["evaluate", "--model", "m.pt", "--data", f"{t}/sim", "--out", f"{t}/eval", "--split", "all"]
            + ["--refine", "2", "--limit", "3"],
            "evaluate",
            {
                "model": Path("m.pt"),
                "data": Path(f"{t}/sim"),
                "out": Path(f"{t}/eval"),
                "split": "all",
                "refine": 2,
                "limit": 3,
            },
            lambda arguments: _summary(arguments, None),
            "| summary |",
        ),
        (
            ["pose", "--ct", "ct.nii.gz", "--geometry", "g.json", "--ap", "ap.npy", "--out", f"{t}/pose"]
            + ["--lat", "lat.npy", "--method", "sopi+opt", "--units", "mu", "--mu-water", "0.021"]
            + ["--levels", "8, 4,2", "--evaluations", "30", "--refine-steps", "0", "--sigma-deg", "2"]
            + ["--sigma-mm", "4", "--rtpi", "r.pt", "--fine", "f.pt", "--turns", "3"],
            "estimate_pose",
            {
                "ct": Path("ct.nii.gz"),
                "geometry": Path("g.json"),
                "ap": Path("ap.npy"),
                "out": Path(f"{t}/pose"),
                "lat": Path("lat.npy"),
                "method": "sopi+opt",
                "units": "mu",
                "mu_water_per_mm": 0.021,
                "levels_mm": (8.0, 4.0, 2.0),
                "evaluations": 30,
                "refine_steps": 0,
                "sigma_deg": 2.0,
                "sigma_mm": 4.0,
                "rtpi": Path("r.pt"),
                "fine": Path("f.pt"),
                "turns": 3,
            },
            SimpleNamespace(
                document={"params": {"rotation_deg": [1, 2, 3], "translation_mm": [4, 5, 6]}, "timings_s": {"total": 2}}
            ),
            f"wrote {t}/pose: rotation (1.00, 2.00, 3.00) deg, translation (4.00, 5.00, 6.00) mm, 2.0 s",
        ),
        (
            ["evaluate-pose", "--out", f"{t}/poses", "--datasets", "femur", "--methods", "opt-gc, sopi"]
            + ["--methods", "opt-ncc", "--n", "2", "--seed", "4", "--rtpi", "femur=r.pt", "--fine", "f.pt"]
            + ["--evaluations", "20", "--refine-steps", "1", "--max-levels", "1", "--turns", "2"],
            "evaluate_pose",
            {
                "out": Path(f"{t}/poses"),
                "datasets": ("femur",),
                "ranges": None,
                "cases": 2,
                "seed": 4,
                "methods": ("opt-gc", "sopi", "opt-ncc"),
                "rtpi": ["femur=r.pt"],
                "fine": ["f.pt"],
                "evaluations": 20,
                "refine_steps": 1,
                "max_levels": 1,
                "turns": 2,
            },
            lambda arguments: _summary(arguments, [{}, {}, {}]),
            f"wrote {t}/poses: cases.csv (3 rows), summary.md",
        ),
        (
            ["experiments", "--out", f"{t}/exp", "--budget", "tiny", "--model-full", "full.pt"]
            + ["--model-generalized", "gen.pt", "--docs", "--docs-dir", f"{t}/docs", "--workers", "2"]
            + ["--sopi-rtpi", "femur=r.pt", "--sopi-fine", "femur=f.pt"],
            "run_experiments",
            {
                "out": Path(f"{t}/exp"),
                "budget": "tiny",
                "model_full": Path("full.pt"),
                "model_generalized": Path("gen.pt"),
                "docs_dir": Path(f"{t}/docs"),
                "workers": 2,
                "sopi_rtpi": ["femur=r.pt"],
                "sopi_fine": ["femur=f.pt"],
            },
            SimpleNamespace(results_md=Path(f"{t}/exp/results.md"), ran=["simulate"], skipped=["a", "b"]),
            f"wrote {t}/exp/results.md (1 stages run, 2 reused)",
        ),
    ]


@pytest.mark.parametrize("index", range(len(COMMANDS)))
def test_each_command_calls_its_api_function_with_the_parsed_values(index, tmp_path, monkeypatch):
    arguments, name, expected, result, printed = _cases(tmp_path)[index]
    calls: list[tuple[str, dict[str, Any]]] = []
    defaults = _defaults(name)
    monkeypatch.setattr(api, name, _recorder(name, calls, result))
    monkeypatch.setattr(api, "demo_summary_tables", lambda result: [])
    outcome = runner.invoke(app, arguments)
    assert outcome.exit_code == 0, outcome.output
    assert calls == [(name, {**defaults, **expected})]
    assert printed in outcome.output.splitlines()


def test_the_cases_cover_every_command():
    cases = _cases(Path("x"))
    assert [COMMANDS[arguments[0]] for arguments, *_ in cases] == [name for _, name, *_ in cases]
    assert {arguments[0] for arguments, *_ in cases} == set(COMMANDS)


def test_cli_leaves_the_defaults_to_the_api(tmp_path, monkeypatch):
    """Options not given reach the API function as its own defaults (the CLI's match them)."""
    calls: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(api, "run_demo", _recorder("run_demo", calls, SimpleNamespace(report_page=Path("r.html"))))
    monkeypatch.setattr(api, "demo_summary_tables", lambda result: [])
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["demo"]).exit_code == 0
    pose = SimpleNamespace(
        document={"params": {"rotation_deg": [0] * 3, "translation_mm": [0] * 3}, "timings_s": {"total": 1}}
    )
    monkeypatch.setattr(api, "estimate_pose", _recorder("estimate_pose", calls, pose))
    assert runner.invoke(app, ["pose", "--ct", "c", "--geometry", "g", "--ap", "a", "--out", "o"]).exit_code == 0
    assert calls[0] == (
        "run_demo",
        {"out": Path("biplanar_demo"), "model": None, "seed": None, "progress": True, "clinical": False},
    )
    pose_defaults = {"lat": None, "method": "opt-gc", "units": "hu", "mu_water_per_mm": 0.02, "levels_mm": (12.0, 6.0)}
    assert {key: calls[1][1][key] for key in pose_defaults} == pose_defaults


def test_stage_and_interruption_are_reported(tmp_path, monkeypatch):
    experiment = SimpleNamespace(results_md=tmp_path / "results.md", ran=["train_kasten"], skipped=[])
    monkeypatch.setattr(api, "run_experiments", lambda *args, **kwargs: experiment)
    result = runner.invoke(app, ["experiments", "--out", str(tmp_path), "--budget", "tiny", "--stage", "train_kasten"])
    assert result.exit_code == 0 and result.output.strip() == "stage train_kasten: done"

    def interrupted(*args, **kwargs):
        raise TrainingInterrupted(tmp_path / "run" / "last.pt")

    monkeypatch.setattr(api, "train", interrupted)
    result = runner.invoke(app, ["train", "--config", "tiny", "--out", str(tmp_path / "run")])
    assert result.exit_code == 130
    assert result.output.strip() == f"biplanar: interrupted: checkpoint {tmp_path}/run/last.pt; continue with --resume"

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "train", stopped)
    result = runner.invoke(app, ["train", "--config", "tiny", "--out", str(tmp_path / "run")])
    assert result.exit_code == 130  # no checkpoint: nothing to resume from
    assert result.output.strip() == "biplanar: interrupted: no output was left half-written"


def test_api_errors_become_one_line_and_exit_2(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise InputError("atlas: preset: expected one of paper, lite, tiny, got 'huge'")

    monkeypatch.setattr(api, "write_atlas", refuse)
    result = runner.invoke(app, ["atlas", "--out", str(tmp_path), "--preset", "huge"])
    assert result.exit_code == 2
    assert result.output.strip() == "biplanar: error: atlas: preset: expected one of paper, lite, tiny, got 'huge'"


@pytest.fixture()
def ellipsoid(tmp_path):
    """A small water ellipsoid CT (0 HU inside, -1000 outside)."""
    grid = VolumeGrid.from_spacing((24, 20, 28), (2.0, 2.0, 2.0), centre_world=(5.0, -10.0, 15.0))
    occupancy = voxelize_ellipsoid(grid, tuple(grid.centre_world), (12.0, 9.0, 15.0)).numpy()
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image((-1000.0 + 1000.0 * occupancy).astype(np.float32), grid.affine), str(path))
    return path


def test_python_api_matches_the_cli(ellipsoid, tmp_path):
    """``biplanar.write_geometry`` + ``biplanar.drr`` write what ``biplanar geometry`` + ``biplanar drr`` do."""
    views = biplanar.write_geometry(tmp_path / "g.json", lat_angle_deg=85.0, image_shape=(32, 24), pixel_spacing_mm=3)
    assert set(views) == {"AP", "LAT"} and views["LAT"].image_shape == (32, 24)
    image = biplanar.drr(ellipsoid, tmp_path / "g.json", tmp_path / "lat.npy", view="LAT", num_samples=64)
    assert image.shape == (32, 24) and image.dtype == np.float32 and image.max() > 0
    np.testing.assert_array_equal(np.load(tmp_path / "lat.npy"), image)

    geometry = ["geometry", "--out", str(tmp_path / "g_cli.json"), "--lat-angle", "85", "--rows", "32"]
    assert runner.invoke(app, [*geometry, "--cols", "24", "--pixel-spacing", "3"]).exit_code == 0
    assert (tmp_path / "g_cli.json").read_text() == (tmp_path / "g.json").read_text()
    drr = ["drr", "--volume", str(ellipsoid), "--geometry", str(tmp_path / "g_cli.json"), "--view", "LAT"]
    assert runner.invoke(app, [*drr, "--samples", "64", "--out", str(tmp_path / "lat_cli.npy")]).exit_code == 0
    np.testing.assert_array_equal(np.load(tmp_path / "lat_cli.npy"), image)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda d: biplanar.drr(d / "ct.nii.gz", d / "g.json", d / "x.npy", mode="fluoro"), "mode: expected one of"),
        (lambda d: biplanar.drr(d / "ct.nii.gz", d / "g.json", d / "x.npy", units="HU"), "units: expected one of"),
        (lambda d: biplanar.drr(d / "ct.nii.gz", d / "g.json", d / "x.jpg"), "unsupported output format"),
        (lambda d: biplanar.drr(d / "ct.nii.gz", d / "g.json", d / "x.npy", view="OBLIQUE"), "missing OBLIQUE"),
        (lambda d: biplanar.write_geometry(d / "g.yaml"), "unsupported output format"),
        (lambda d: biplanar.write_geometry(d / "h.json", image_shape=(0, 5)), "image_shape"),
        (lambda d: biplanar.write_atlas(d / "atlas", preset="huge"), "preset"),
        (lambda d: biplanar.simulate(d / "sim", 1, 0, geometry="oblique", progress=False), "geometry"),
        (lambda d: biplanar.estimate_pose(d / "ct.nii.gz", d / "g.json", d / "a.npy", d / "o", rtpi="r.pt"), "--fine"),
        (lambda d: biplanar.estimate_pose(d / "c", d / "g", d / "a", d / "o", levels_mm=(-1.0,)), "--levels"),
        (lambda d: biplanar.evaluate_pose(d / "o", datasets="spine", progress=False), "--datasets"),
        (lambda d: biplanar.run_experiments(d / "o", "huge", progress=False), "--budget"),
        # the output-folder checks of the functions of api.IMPLEMENTED_IN, done by them before any work
        (lambda d: biplanar.evaluate(d / "m.pt", d / "sim", d / "ct.nii.gz", progress=False), "not a folder"),
        (lambda d: biplanar.register(d / "g.json", d / "a", d / "l", d / "ct.nii.gz/o"), "cannot write here"),
        (lambda d: biplanar.register(d / "g.json", d / "a", d / "l", d / "o", air_level=-1.0), "air_level: expected"),
        (lambda d: biplanar.train_pose("sopi_tiny", d / "ct.nii.gz", "rtpi", progress=False), "not a folder"),
        (lambda d: biplanar.run_experiments(d / "ct.nii.gz", "huge", progress=False), "not a folder"),
    ],
)
def test_python_api_raises_input_error(ellipsoid, call, message):
    tmp_path = ellipsoid.parent
    biplanar.write_geometry(tmp_path / "g.json", image_shape=(8, 6), pixel_spacing_mm=6)
    before = set(tmp_path.iterdir())
    with pytest.raises(InputError, match=re.escape(message)):
        call(tmp_path)
    assert set(tmp_path.iterdir()) == before


def _delegates(d: Path) -> list[tuple[str, str, Any, dict[str, Any]]]:
    """Per API function: the module function doing its work, a call, the values that function must get."""
    sim = {"out_dir": d / "sim", "n": 3, "seed": 1, "workers": 2, "progress": False}
    pose_args = (d / "ct.nii.gz", d / "g.json", d / "ap.npy", d / "pose")
    return [
        (
            "biplanar.data.ct_atlas",
            "atlas_from_phantom",
            lambda: api.write_atlas(d / "a", "tiny"),
            {"out_dir": d / "a"},
        ),
        (
            "biplanar.data.simulate",
            "simulate_dataset",
            lambda: api.simulate(d / "sim", 3, 1, preset="tiny", workers=2, progress=False),
            sim,
        ),
        (
            "biplanar.training.trainer",
            "train",
            lambda: api.train("tiny", d / "run", data=d / "sim", epochs=2, progress=False),
            {"config": "tiny", "run": TrainingRun(d / "run", data_dir=d / "sim", epochs=2, progress=False)},
        ),
        (
            "biplanar.training.baselines",
            "train_baseline",
            lambda: api.train_baseline("sdm", d / "sim", d / "run", config="tiny", resume=True, progress=False),
            {
                "method": "sdm",
                "config": "tiny",
                "run": TrainingRun(d / "run", data_dir=d / "sim", resume=True, progress=False),
            },
        ),
        (
            "biplanar.data.preprocess",
            "preprocess_femur",
            lambda: api.preprocess("ct", "seg", 75, "left", d / "f", preset="tiny"),
            {"ct_path": "ct", "labels_path": "seg", "label": 75, "side": "left", "preset": "tiny"},
        ),
        (
            "biplanar.demo",
            "run_demo",
            lambda: api.run_demo(d / "demo", progress=False),
            {"seed": importlib.import_module("biplanar.demo").DEMO_SEED},
        ),
        (
            "biplanar.pose.estimate",
            "estimate_pose_files",
            lambda: api.estimate_pose(*pose_args, lat="lat.npy", rtpi="r.pt", fine="f.pt", progress=False),
            {"image_paths": {"AP": d / "ap.npy", "LAT": "lat.npy"}, "method": "opt-gc", "progress": False},
        ),
        (
            "biplanar.evaluation.pose_accuracy",
            "evaluate_pose_accuracy",
            lambda: api.evaluate_pose(d / "p", datasets="femur", cases=2, progress=False),
            {"out_dir": d / "p", "networks": {}, "progress": False},
        ),
    ]


@pytest.mark.parametrize("index", range(8))
def test_api_functions_call_the_module_doing_the_work(index, tmp_path, monkeypatch):
    """Each call binds to the signature of the module function it delegates to, with the values given."""
    module_name, attribute, call, expected = _delegates(tmp_path)[index]
    module = importlib.import_module(module_name)
    signature = inspect.signature(getattr(module, attribute))
    calls = []

    def record(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append(dict(bound.arguments))

    monkeypatch.setattr(module, attribute, record)
    call()
    assert len(calls) == 1
    assert {key: calls[0][key] for key in expected} == expected


def test_the_delegates_cover_the_commands():
    called = {name for _, _, call, _ in _delegates(Path("x")) for name in call.__code__.co_names}
    # drr and write_geometry: real calls above; segment: real calls in tests/test_clinical_register.py;
    # the functions of IMPLEMENTED_IN are the module's own (test_api_exposes_the_implementing_functions_themselves)
    unwrapped = {"drr", "write_geometry", "segment", *api.IMPLEMENTED_IN}
    assert len(_delegates(Path("x"))) == 8
    assert called & set(api.__all__) == set(COMMANDS.values()) - unwrapped
