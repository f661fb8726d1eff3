"""Pose from files, the corrected geometry, calibration correction of views, and the `pose` command."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from biplanar.cli import app
from biplanar.errors import InputError
from biplanar.geometry.presets import biplanar_pair
from biplanar.geometry.projection import CarmPose, ProjectionView
from biplanar.geometry.se3 import pose_errors
from biplanar.geometry.transforms import rigid_matrix
from biplanar.io.geometry_file import read_geometry, write_geometry
from biplanar.io.volumes import read_volume
from biplanar.layers.prost import ProST
from biplanar.physics.attenuation import hu_to_mu
from biplanar.pose.baselines import OptimisationConfig
from biplanar.pose.estimate import (
    QUALITY_MIN_GC,
    check_rigid,
    compose_each_view,
    compose_view,
    estimate_view_rotations,
    read_initial_pose,
)
from biplanar.pose.similarity import ncc

SMALL_CT = Path(__file__).parents[1] / "data" / "real_ct" / "lumbar_ct_small.nii.gz"
DETECTOR = (64, 64)
PIXEL_MM = (6.0, 6.0)
runner = CliRunner()


@pytest.fixture(scope="module")
def small_ct():
    """The 30-slice real lumbar CT crop (3 mm voxels) as attenuation, and its grid."""
    data, grid = read_volume(SMALL_CT)
    return hu_to_mu(torch.from_numpy(data))[None, None], grid


def drr(view: ProjectionView, mu: torch.Tensor, grid, pose: torch.Tensor | None = None) -> torch.Tensor:
    """``(1, 1, rows, cols)`` DRR, 256 samples per ray, of the CT moved by ``pose`` ``(4, 4)``."""
    with torch.no_grad():
        return ProST(view, grid, 256, margin_mm=60.0)(mu, None if pose is None else pose[None].float())


def test_composed_view_projects_the_unmoved_ct_as_the_moved_one(small_ct):
    mu, grid = small_ct
    view = biplanar_pair(image_shape=DETECTOR, pixel_spacing_mm=PIXEL_MM, isocenter_mm=grid.centre_world)["LAT"]
    pose = rigid_matrix(
        torch.tensor([0.1, -0.05, 0.2, 8.0, -5.0, 12.0], dtype=torch.float64), torch.as_tensor(grid.centre_world)
    )
    moved = drr(view, mu, grid, pose)
    composed = drr(compose_view(view, pose), mu, grid)
    assert float(ncc(moved, composed)[0]) > 0.9999
    unmoved = drr(view, mu, grid)
    assert float(ncc(moved, unmoved)[0]) < 0.99  # the pose does change the image


def test_check_rigid_and_read_initial_pose(tmp_path):
    scaled = np.eye(4) * 1.1
    scaled[3, 3] = 1.0
    with pytest.raises(InputError, match="where: not a rigid transform"):
        check_rigid(scaled, "where")
    with pytest.raises(InputError, match="where: expected a finite 4x4"):
        check_rigid(np.eye(3), "where")
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    with pytest.raises(InputError, match="not a rigid"):
        check_rigid(mirror, "where")
    (tmp_path / "bad.json").write_text(json.dumps({"params": [0, 0, 0]}))
    with pytest.raises(InputError, match="bad.json: expected an object with a 4x4 'matrix'"):
        read_initial_pose(tmp_path / "bad.json")
    pose = rigid_matrix(torch.tensor([0.1, 0.2, 0.3, 1.0, 2.0, 3.0], dtype=torch.float64))
    (tmp_path / "good.json").write_text(json.dumps({"matrix": pose.tolist()}))
    torch.testing.assert_close(read_initial_pose(tmp_path / "good.json"), pose)


def test_per_view_correction_recovers_an_erroneous_c_arm_angle(small_ct):
    """The LAT radiograph was taken at 93 deg; the geometry says 90: the estimate rotates about the isocentre."""
    mu, grid = small_ct
    iso = tuple(grid.centre_world)
    stated = ProjectionView.from_carm(
        CarmPose(90.0, 0.0, pixel_spacing_mm=PIXEL_MM, isocenter_mm=iso), DETECTOR, name="LAT"
    )
    actual = ProjectionView.from_carm(
        CarmPose(93.0, 0.0, pixel_spacing_mm=PIXEL_MM, isocenter_mm=iso), DETECTOR, name="LAT"
    )
    radiograph = drr(actual, mu, grid)[0, 0]
    config = OptimisationConfig(levels_mm=(12.0, 6.0), sigma_deg=3.0, max_evaluations=80, refine_steps=5)
    rotations = estimate_view_rotations(mu, grid, {"LAT": radiograph}, {"LAT": stated}, config=config)
    corrected = compose_each_view({"LAT": stated}, rotations)["LAT"]
    points = grid.corners_world()[[0, 3, 5, 6]]
    uv_corrected, _ = corrected.project(torch.from_numpy(points))
    uv_actual, _ = actual.project(torch.from_numpy(points))
    uv_stated, _ = stated.project(torch.from_numpy(points))
    assert (uv_stated - uv_actual).norm(dim=-1).max() > 1.5  # 3 deg moves the box corners by ~1.5-1.9 px of 6 mm
    assert (uv_corrected - uv_actual).norm(dim=-1).max() < 0.2
    # the isocentre stays put: a rotation about it, no translation
    torch.testing.assert_close(
        corrected.project(torch.tensor([iso]))[0], actual.project(torch.tensor([iso]))[0], atol=1e-6, rtol=0
    )


# --- the command ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pose_case(tmp_path_factory, small_ct):
    """A geometry file (C-arm, isocentre = CT centre by default), AP + LAT .npy radiographs at a known pose."""
    folder = tmp_path_factory.mktemp("pose_case")
    mu, grid = small_ct
    views = biplanar_pair(image_shape=DETECTOR, pixel_spacing_mm=PIXEL_MM)
    write_geometry(folder / "geometry.json", views)
    views = read_geometry(folder / "geometry.json", default_isocenter_mm=grid.centre_world)
    pose = rigid_matrix(
        torch.tensor([math.radians(3.0), math.radians(-2.0), math.radians(2.0), 5.0, -6.0, 4.0], dtype=torch.float64),
        torch.as_tensor(grid.centre_world),
    )
    for name, view in views.items():
        np.save(folder / f"{name}.npy", drr(view, mu, grid, pose)[0, 0].numpy())
    return folder, pose, grid


def pose_command(folder: Path, out: Path, *extra: str) -> list[str]:
    return [
        "pose",
        "--ct",
        str(SMALL_CT),
        "--geometry",
        str(folder / "geometry.json"),
        "--ap",
        str(folder / "AP.npy"),
        "--lat",
        str(folder / "LAT.npy"),
        "--out",
        str(out),
        "--evaluations",
        "100",
        "--refine-steps",
        "5",
        *extra,
    ]


def test_pose_command_end_to_end(pose_case, small_ct):
    folder, pose, grid = pose_case
    out = folder / "out"
    result = runner.invoke(app, pose_command(folder, out))
    assert result.exit_code == 0, result.output
    assert "rotation (" in result.output
    document = json.loads((out / "pose.json").read_text())
    assert document["method"] == "opt-gc"
    estimated = torch.tensor(document["matrix"], dtype=torch.float64)
    rotation_deg, translation_mm = pose_errors(estimated, pose, torch.as_tensor(grid.centre_world))
    assert float(rotation_deg) < 1.0 and float(translation_mm) < 1.5
    assert np.allclose(document["params"]["centre_mm"], grid.centre_world)
    assert document["similarity"]["gc"]["AP"] > 0.9 and set(document["timings_s"]) >= {"load", "estimate", "total"}
    quality = document["quality"]
    assert quality["lowest_gc"] == min(document["similarity"]["gc"].values()) and quality["flag"] is False
    assert "warning" not in result.output
    for name in ("AP", "LAT"):
        assert (out / f"overlay_{name}.png").stat().st_size > 0
    # The corrected geometry projects the CT at identity as the radiographs show it.
    mu, _ = small_ct
    corrected = read_geometry(out / "geometry_corrected.json")
    for name in ("AP", "LAT"):
        radiograph = torch.from_numpy(np.load(folder / f"{name}.npy"))[None, None]
        assert float(ncc(drr(corrected[name], mu, grid), radiograph)[0]) > 0.995
    assert not list(out.glob(".*part*"))


def test_pose_command_accepts_its_own_pose_as_initial_pose(pose_case):
    folder, pose, _ = pose_case
    (folder / "init.json").write_text(json.dumps({"matrix": pose.tolist()}))
    out = folder / "from_truth"
    result = runner.invoke(
        app,
        pose_command(
            folder, out, "--init-pose", str(folder / "init.json"), "--evaluations", "0", "--refine-steps", "0"
        ),
    )
    assert result.exit_code == 0, result.output
    document = json.loads((out / "pose.json").read_text())
    np.testing.assert_allclose(document["matrix"], pose.numpy(), atol=1e-9)
    np.testing.assert_allclose(document["initial_matrix"], pose.numpy(), atol=1e-12)


def test_a_pose_left_far_off_is_flagged_and_warned(pose_case):
    folder, pose, _ = pose_case
    turned = rigid_matrix(torch.tensor([0.0, 0.0, math.radians(25.0), 0.0, 0.0, 0.0], dtype=torch.float64))
    (folder / "far.json").write_text(json.dumps({"matrix": (turned @ pose).tolist()}))
    out = folder / "stuck"
    command = pose_command(folder, out, "--init-pose", str(folder / "far.json"), "--evaluations", "0")
    result = runner.invoke(app, [*command, "--refine-steps", "0"])
    assert result.exit_code == 0, result.output
    quality = json.loads((out / "pose.json").read_text())["quality"]
    assert quality["flag"] is True and quality["lowest_gc"] < QUALITY_MIN_GC == quality["threshold"]
    warning = next(line for line in result.output.splitlines() if line.startswith("warning: pose quality"))
    assert f"overlay_{quality['lowest_view']}.png" in warning


def test_pose_command_refuses_an_existing_output_unless_overwrite(pose_case):
    folder, _, _ = pose_case
    out = folder / "twice"
    quick = ("--evaluations", "0", "--refine-steps", "0")
    assert runner.invoke(app, pose_command(folder, out, *quick)).exit_code == 0
    (out / "notes.txt").write_text("mine")
    before = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    again = runner.invoke(app, pose_command(folder, out, *quick))
    assert again.exit_code == 2 and "--overwrite" in again.output.strip().splitlines()[-1], again.output
    assert {path.name: path.stat().st_mtime_ns for path in out.iterdir()} == before  # untouched
    overwritten = runner.invoke(app, pose_command(folder, out, *quick, "--overwrite"))
    assert overwritten.exit_code == 0, overwritten.output
    assert (out / "notes.txt").read_text() == "mine" and (out / "pose.json").stat().st_mtime_ns > before["pose.json"]
    assert not [path for path in folder.rglob("*") if "part" in path.name]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "sopi"], "differs from the networks' training images (112, 80)"),  # the bundled networks'
        (["--method", "sopi", "--rtpi", "a.pt"], "--rtpi, --fine: give both SOPI checkpoints or neither"),
        (["--init-pose", "missing.json"], "missing.json: file not found"),
        (["--levels", "12,x"], "--levels"),
        (["--ap", "LAT_wrong.npy"], "LAT_wrong.npy: image shape"),
    ],
)
def test_pose_command_bad_input_is_one_line(pose_case, extra, message):
    folder, _, _ = pose_case
    np.save(folder / "LAT_wrong.npy", np.zeros((10, 12), dtype=np.float32))
    arguments = pose_command(folder, folder / "never", *extra)
    arguments = [str(folder / a) if a in ("missing.json", "LAT_wrong.npy") else a for a in arguments]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("biplanar: error: ")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.output, result.output
    assert not (folder / "never" / "pose.json").exists()


def test_bundled_sopi_networks_through_the_command(tmp_path):
    """``pose --method sopi+opt`` with the bundled ``sopi_lite`` networks (no ``--rtpi``/``--fine``): a
    held-out femur phantom at a known pose, AP + LAT at the networks' geometry."""
    import nibabel as nib

    from biplanar.data.phantom import make_subject

    subject = make_subject(20_001, "lite")
    nib.save(nib.Nifti1Image(subject.ct_hu, subject.grid.affine), str(tmp_path / "ct.nii.gz"))
    views = biplanar_pair(image_shape=(112, 80), pixel_spacing_mm=(1.86, 1.86), isocenter_mm=subject.grid.centre_world)
    write_geometry(tmp_path / "g.json", views)
    centre = torch.as_tensor(subject.grid.centre_world)
    truth = rigid_matrix(
        torch.tensor([math.radians(4.0), math.radians(-3.0), math.radians(5.0), 3.0, -4.0, 2.0], dtype=torch.float64),
        centre,
    )
    mu = hu_to_mu(torch.from_numpy(subject.ct_hu))[None, None]
    for name, view in views.items():
        np.save(tmp_path / f"{name}.npy", drr(view, mu, subject.grid, truth)[0, 0].numpy())
    result = runner.invoke(
        app,
        [
            "pose",
            "--ct",
            str(tmp_path / "ct.nii.gz"),
            "--geometry",
            str(tmp_path / "g.json"),
            "--ap",
            str(tmp_path / "AP.npy"),
            "--lat",
            str(tmp_path / "LAT.npy"),
            "--out",
            str(tmp_path / "out"),
            "--method",
            "sopi+opt",
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "out" / "pose.json").read_text())
    rotation_deg, translation_mm = pose_errors(torch.tensor(document["matrix"], dtype=torch.float64), truth, centre)
    assert float(rotation_deg) < 0.5 and float(translation_mm) < 0.5
    turns = document["optimisation"]["refinement"]["turns"]  # the default 8, 45 deg apart
    assert [turn["turn_deg"] for turn in turns[:8]] == [45.0 * index for index in range(8)]
    beam_offset_mm = document["optimisation"]["refinement"]["beam_offset_mm"]
    assert len(turns) == 8 + (beam_offset_mm != 0) and abs(beam_offset_mm) <= 48.0
    assert max(turn["similarity"] for turn in turns) == document["optimisation"]["refinement"]["objective"]


def test_pose_help_as_a_subprocess():
    completed = subprocess.run(
        [sys.executable, "-m", "biplanar", "pose", "--help"], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0 and "--init-pose" in completed.stdout


@pytest.mark.slow
def test_sopi_plus_opt_through_the_command(tmp_path):
    """Integration with biplanar.pose.sopi: two-step tiny networks, then Opt-GC refines their pose."""
    import nibabel as nib

    from biplanar.data.phantom import make_subject

    for network in ("rtpi", "fine"):
        trained = runner.invoke(
            app,
            [
                "train-pose",
                "--config",
                "sopi_tiny",
                "--out",
                str(tmp_path / network),
                "--network",
                network,
                "--max-steps",
                "2",
            ],
        )
        assert trained.exit_code == 0, trained.output
    subject = make_subject(3, "tiny")
    nib.save(nib.Nifti1Image(subject.ct_hu, subject.grid.affine), str(tmp_path / "ct.nii.gz"))
    views = biplanar_pair(image_shape=(56, 40), pixel_spacing_mm=(3.72, 3.72))
    write_geometry(tmp_path / "g.json", views)
    mu = hu_to_mu(torch.from_numpy(subject.ct_hu))[None, None]
    for name, view in views.items():
        np.save(tmp_path / f"{name}.npy", drr(view, mu, subject.grid)[0, 0].numpy())
    result = runner.invoke(
        app,
        [
            "pose",
            "--ct",
            str(tmp_path / "ct.nii.gz"),
            "--geometry",
            str(tmp_path / "g.json"),
            "--ap",
            str(tmp_path / "AP.npy"),
            "--lat",
            str(tmp_path / "LAT.npy"),
            "--out",
            str(tmp_path / "out"),
            "--method",
            "sopi+opt",
            "--rtpi",
            str(tmp_path / "rtpi" / "last.pt"),
            "--fine",
            str(tmp_path / "fine" / "last.pt"),
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "out" / "pose.json").read_text())
    assert set(document["optimisation"]) == {"sopi", "refinement"}
    rotation_deg, translation_mm = pose_errors(
        torch.tensor(document["matrix"], dtype=torch.float64),
        torch.eye(4, dtype=torch.float64),
        torch.as_tensor(subject.grid.centre_world),
    )
    assert float(rotation_deg) < 1.0 and float(translation_mm) < 1.0
