"""``biplanar demo`` end to end (tiny untrained model; the bundled model where it is installed) and
the figure and timing helpers it uses."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import biplanar.demo as demo_module
from biplanar.cli import app
from biplanar.data.simulate import SUBJECT_FILES, SimulationConfig, simulate_case
from biplanar.demo import DEMO_SEED, run_demo
from biplanar.evaluation.evaluate import network_stage_times
from biplanar.evaluation.figures import FigureData, slice_indices, surface_errors
from biplanar.geometry.presets import biplanar_pair
from biplanar.geometry.projection import view_angles_deg
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.io.geometry_file import read_geometry
from biplanar.io.volumes import read_volume
from biplanar.registration import OUTPUT_FILES
from biplanar.training.checkpoints import bundled_models_dir

BUNDLED_MODEL = bundled_models_dir() / "lite" / "model.pt"


@pytest.fixture(scope="module")
def demo_run(tiny_model, tmp_path_factory):
    """The demo run through the command line, as a user runs it."""
    out_dir = tmp_path_factory.mktemp("run") / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out_dir), "--model", str(tiny_model)])
    return out_dir, result


def test_demo_prints_the_summary_and_writes_every_file(demo_run):
    out_dir, result = demo_run
    assert result.exit_code == 0, result.output
    for label in ("Dice", "Jaccard", "ASSD", "HD95", "affine module", "local module", "whole demo"):
        assert label in result.output
    assert sorted(path.name for path in (out_dir / "inputs").iterdir()) == sorted(SUBJECT_FILES)
    assert sorted(path.name for path in (out_dir / "registration").iterdir()) == sorted(OUTPUT_FILES)
    assert f"report: {out_dir / 'registration' / 'report.html'} (open it in a browser)" in result.output
    assert sorted(path.name for path in out_dir.iterdir()) == ["demo.json", "figure.png", "inputs", "registration"]
    with Image.open(out_dir / "figure.png") as figure:
        assert figure.format == "PNG" and figure.size[0] > 1000 and figure.size[1] > 700
        assert len(np.unique(np.asarray(figure.convert("RGB")).reshape(-1, 3), axis=0)) > 100  # drawn, not blank


def test_demo_numbers_agree_with_the_registration_report(demo_run):
    out_dir, _ = demo_run
    summary = json.loads((out_dir / "demo.json").read_text())
    report = json.loads((out_dir / "registration" / "report.json").read_text())
    assert summary["metrics"] == {key: report[key] for key in ("dice", "jaccard", "assd_mm", "hd95_mm")}
    times = summary["timings_s"]
    assert times["network"] == pytest.approx(times["affine_module"] + times["local_module"])
    assert times["affine_module"] > 0 and times["local_module"] > 0
    # The network's share is timed inside register's own "network" interval, which is inside its total.
    assert times["network"] <= report["timings_s"]["network"] + 1e-6
    assert report["timings_s"]["total"] <= times["demo"]


def test_demo_patient_is_the_held_out_case_in_orthogonal_views(demo_run):
    out_dir, _ = demo_run
    case = simulate_case(DEMO_SEED, SimulationConfig(preset="tiny", geometry="orthogonal"))
    labels, _ = read_volume(out_dir / "inputs" / "labels.nii.gz")
    np.testing.assert_array_equal(labels, case.labels)
    np.testing.assert_array_equal(np.load(out_dir / "inputs" / "AP.npy"), case.radiographs["AP"])
    views = read_geometry(out_dir / "inputs" / "geometry.json")
    assert view_angles_deg(views["AP"]) == pytest.approx((0.0, 0.0), abs=1e-9)
    assert view_angles_deg(views["LAT"]) == pytest.approx((90.0, 0.0), abs=1e-9)
    assert json.loads((out_dir / "inputs" / "subject.json").read_text())["seed"] == DEMO_SEED


def test_demo_refuses_a_non_empty_folder_in_one_line(tiny_model, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--model", str(tiny_model)])
    assert result.exit_code == 2
    assert str(tmp_path) in result.output and len(result.output.strip().splitlines()) == 1
    assert [path.name for path in tmp_path.iterdir()] == ["keep.txt"]


def test_a_failed_demo_leaves_nothing(tmp_path):
    bad_model = tmp_path / "bad.pt"
    bad_model.write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--model", str(bad_model)])
    assert result.exit_code == 2 and "bad.pt" in result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bad.pt"]


def test_an_interrupted_demo_leaves_no_folder(tiny_model, tmp_path, monkeypatch):
    """Ctrl-C after the inputs are written: the demo is built in a partial folder, which goes."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_module, "register", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_demo(tmp_path / "demo", tiny_model, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_the_report_names_the_inputs_in_the_final_folder(demo_run):
    out_dir, _ = demo_run
    inputs = json.loads((out_dir / "registration" / "report.json").read_text())["inputs"]
    assert inputs["AP"] == str(out_dir / "inputs" / "AP.npy") and inputs["geometry"].startswith(str(out_dir))


@pytest.mark.slow
def test_a_killed_demo_leaves_no_folder_and_the_next_run_clears_its_debris(tiny_model, tmp_path):
    out_dir = tmp_path / "demo"
    command = [sys.executable, "-m", "biplanar", "demo", "--out", str(out_dir), "--model", str(tiny_model)]
    demo = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".demo.*.partial/inputs/AP.npy")) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        demo.kill()  # SIGKILL: no clean-up runs
        demo.wait()
    assert list(tmp_path.glob(".demo.*.partial")) and not out_dir.exists()
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert [path.name for path in tmp_path.iterdir()] == ["demo"]


@pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="the bundled lite model is not installed")
def test_demo_with_the_bundled_model(tmp_path):
    result = run_demo(tmp_path / "demo", progress=False)
    assert result.report["inputs"]["model"] == str(BUNDLED_MODEL)
    assert sorted(path.name for path in (tmp_path / "demo" / "registration").iterdir()) == sorted(OUTPUT_FILES)
    assert (tmp_path / "demo" / "figure.png").is_file()
    # A trained lite model reaches validation Dice ~0.85 on held-out subjects (runs/*/metrics.csv).
    assert result.report["dice"] > 0.8


# ---------------------------------------------------------------- helpers


def test_demo_clinical_route_scores_beside_the_plain_one(tmp_path):
    # The bundled models on the demo patient, also as two DICOM files alone (448 x 320, transmission).
    out_dir = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out_dir), "--clinical"])
    assert result.exit_code == 0, result.output
    document = json.loads((out_dir / "demo.json").read_text())
    plain, clinical = document["metrics"]["dice"], document["clinical"]["metrics"]["dice"]
    assert clinical > 0.92 and abs(clinical - plain) < 0.02
    assert "Dice, clinical route (2 DICOM files only)" in result.output
    assert sorted(path.name for path in (out_dir / "inputs" / "clinical").iterdir()) == ["AP.dcm", "LAT.dcm"]
    report = json.loads((out_dir / "registration_clinical" / "report.json").read_text())
    assert report["inputs"]["geometry"] is None and report["inputs"]["assumptions"]["masks"] == "segmented"


def test_stage_times_split_each_forward_pass(tiny_model):
    from biplanar.training.checkpoints import load_model

    network, _config = load_model(tiny_model)
    case = simulate_case(5, SimulationConfig(preset="tiny", num_samples=64))
    radiographs = torch.stack([torch.from_numpy(case.masked_radiographs[name]) for name in ("AP", "LAT")])[None]
    views = [(case.views["AP"], case.views["LAT"])]
    with network_stage_times() as times, torch.no_grad():
        started = time.perf_counter()
        network(radiographs, views)
        wall = time.perf_counter() - started
        network(radiographs, views, affine_only=True)
    assert len(times) == 2
    assert 0 < times[0].total_s <= wall
    assert times[0].total_s == pytest.approx(wall, rel=0.05, abs=0.01)  # the hooks bracket the whole pass
    assert times[1].local_s < times[0].local_s  # no local module in the second pass
    with torch.no_grad():
        network(radiographs, views)
    assert len(times) == 2  # the hooks are gone after the block


def _ball(grid: VolumeGrid, radius_mm: float) -> np.ndarray:
    centres = grid.voxel_centres_world(torch.float64).numpy()
    return np.linalg.norm(centres - grid.centre_world, axis=-1) <= radius_mm


def _figure_data(predicted: np.ndarray, truth: np.ndarray, grid: VolumeGrid) -> FigureData:
    views = biplanar_pair(image_shape=(20, 16), pixel_spacing_mm=(8.0, 8.0), isocenter_mm=grid.centre_world)
    return FigureData(
        grid,
        views,
        {name: np.zeros((20, 16), np.float32) for name in views},
        np.zeros(grid.shape, np.float32),
        np.zeros((3, *grid.shape), np.float32),
        predicted,
        truth,
    )


def test_surface_errors_of_concentric_balls_are_the_radius_gap():
    grid = VolumeGrid.from_spacing((40, 36, 32), (1.0, 1.2, 1.5))
    mesh, distances = surface_errors(_figure_data(_ball(grid, 10.0), _ball(grid, 13.0), grid))
    assert len(distances) == len(mesh.vertices)
    # Each marching-cubes surface of a voxelised ball lies within half a voxel step of its sphere, so
    # the gap is 3 mm to within one (largest) step; measured: 1.80 to 3.46 mm, mean 2.77 mm (the
    # staircase cuts corners of the outer ball more than of the inner one).
    np.testing.assert_allclose(distances, 3.0, atol=max(grid.spacing_mm))
    assert distances.mean() == pytest.approx(3.0, abs=0.3)


def test_slice_indices_pass_through_the_true_femur():
    labels = np.zeros((10, 12, 14), dtype=bool)
    labels[2:5, 6:9, 3:10] = True
    labels[2:8, 6:9, 5] = True  # the largest axial cross-section
    assert slice_indices(labels) == (7, 5)
    assert slice_indices(np.zeros_like(labels)) == (6, 7)


def test_figure_data_checks_shapes():
    grid = VolumeGrid.from_spacing((16, 16, 16), (2.0, 2.0, 2.0))
    labels = np.zeros(grid.shape, dtype=bool)
    with pytest.raises(ValueError, match="true_labels"):
        _figure_data(labels, labels[:-1], grid)
    with pytest.raises(ValueError, match="axis-aligned"):
        rotated = VolumeGrid(grid.shape, np.array([[0.0, 2, 0, 0], [2, 0, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]]))
        _figure_data(labels, labels, rotated)
