"""``register``: the outputs of CONTRACT section 6 on a tiny simulated case with an untrained model."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from biplanar.config import load_config
from biplanar.data.atlas import atlas_surface, load_atlas, warped_atlas_hu, warped_atlas_labels
from biplanar.data.masks import MASK_MIN_PATH_MM
from biplanar.data.simulate import SimulationConfig, simulate_case
from biplanar.errors import InputError
from biplanar.geometry import biplanar_pair
from biplanar.io.geometry_file import read_geometry, write_geometry
from biplanar.io.images import write_image
from biplanar.io.volumes import write_volume
from biplanar.layers.prost import ProST
from biplanar.layers.warp import SpatialTransformer
from biplanar.models.network import AtlasRegistrationNet
from biplanar.models.projectors import ProjectorCache
from biplanar.models.segmentation import mask_dice
from biplanar.registration import OUTPUT_FILES, bone_in_air, outputs, pipeline, register
from biplanar.registration.outputs import (
    QUALITY_MIN_PROJECTION_NCC,
    QUALITY_MIN_SILHOUETTE_DICE,
    ProjectionChecks,
    output_files,
    projection_checks,
    quality_report,
)
from biplanar.training import checkpoints
from biplanar.training.checkpoints import capture_rng_state, export_model, load_checkpoint, save_checkpoint

NIFTI_INTENT_VECTOR = 1007  # NIfTI-1 intent code of "vector"
HIP_KEYS = {"head_centre_mm", "head_diameter_mm", "neck_shaft_angle_deg", "femoral_offset_mm", "anteversion_deg"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """An untrained tiny checkpoint (full, and exported weights-only) and a tiny simulated case
    written as register's input files."""
    folder = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    config = load_config("tiny")
    network = AtlasRegistrationNet(config, load_atlas("tiny"))
    save_checkpoint(
        folder / "model.pt",
        {
            "config": config.to_dict(),
            "model": network.state_dict(),
            "optimizer": {},
            "scheduler": {},
            "rng": capture_rng_state(),
            "epoch": 0,
            "step_in_epoch": 0,
            "global_step": 0,
            "world_size": 1,
            "best_metric": -math.inf,
            "elapsed_s": 0.0,
            "epoch_sums": {},
            "history": [],
        },
    )
    export_model(folder / "model.pt", folder / "weights.pt")
    case = simulate_case(3, SimulationConfig(preset="tiny", num_samples=64))
    for name in ("AP", "LAT"):
        write_image(folder / f"{name}.npy", case.radiographs[name])
        write_image(folder / f"{name}_mask.npy", case.masks[name])
    write_geometry(folder / "geometry.json", case.views)
    write_volume(folder / "labels.nii.gz", case.labels, case.grid)
    return folder


def _arguments(folder, out_dir, **changes):
    arguments = {
        "geometry": folder / "geometry.json",
        "ap": folder / "AP.npy",
        "lat": folder / "LAT.npy",
        "out": out_dir,
        "model": folder / "weights.pt",
        "ap_mask": folder / "AP_mask.npy",
        "lat_mask": folder / "LAT_mask.npy",
        "truth_labels": folder / "labels.nii.gz",
        "progress": False,
    }
    return {**arguments, **changes}


@pytest.fixture(scope="module", params=[0, 2], ids=["network", "refined"])
def result(inputs, tmp_path_factory, request):
    """register's outputs: the network's alone, and refined by 2 iterations."""
    return register(**_arguments(inputs, tmp_path_factory.mktemp("run") / "out", refine=request.param))


def test_weights_only_export_drops_the_training_state(inputs):
    state = load_checkpoint(inputs / "weights.pt")
    assert set(state) == {"format", "version", "config", "model", "exported_from"}
    full = load_checkpoint(inputs / "model.pt")
    assert all(torch.equal(state["model"][key], value) for key, value in full["model"].items())
    assert state["exported_from"]["epoch"] == 0
    assert not list(inputs.glob(".*"))  # written atomically: no temporary left


def test_without_a_bundled_model_register_names_the_missing_model(inputs, tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints, "bundled_models_dir", lambda: tmp_path / "models")
    with pytest.raises(InputError, match="no bundled model 'lite'"):
        register(**_arguments(inputs, tmp_path / "out", model=None))
    with pytest.raises(InputError, match="no bundled model 'paper'"):
        checkpoints.bundled_model_path("paper")
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_writes_every_contract_file_and_nothing_else(result):
    assert sorted(path.name for path in result.out_dir.iterdir()) == sorted(OUTPUT_FILES)
    assert not list(result.out_dir.parent.glob(".*"))  # no temporary folder left beside it


def test_displacement_file_reproduces_the_warped_labels(result):
    atlas = load_atlas("tiny")
    image = nib.load(result.out_dir / "displacement.nii.gz")
    assert image.shape == (*atlas.grid.shape, 1, 3)
    assert image.get_data_dtype() == np.float32
    assert int(image.header["intent_code"]) == NIFTI_INTENT_VECTOR
    np.testing.assert_allclose(image.affine, atlas.grid.affine, atol=1e-5)
    # (I, J, K, 1, 3) -> (1, 3, I, J, K): world (x, y, z) components become channels.
    displacement = torch.from_numpy(np.asarray(image.dataobj)[:, :, :, 0, :]).permute(3, 0, 1, 2)[None]
    labels = torch.from_numpy(atlas.labels).float()[None, None]
    # Outside the atlas box, the nearest border label (warped_atlas_labels).
    transformer = SpatialTransformer(atlas.grid, mode="nearest", padding_mode="border")
    expected = transformer(labels, displacement)[0, 0].numpy()
    warped = nib.load(result.out_dir / "warped_labels.nii.gz")
    assert warped.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(warped.dataobj), expected.astype(np.uint8))
    warped_atlas = nib.load(result.out_dir / "warped_atlas.nii.gz")
    assert warped_atlas.get_data_dtype() == np.float32 and warped_atlas.shape == atlas.grid.shape


def test_warped_atlas_hu_and_labels_pull_by_one_voxel_with_border_padding():
    """A constant displacement of one voxel step along i: warped[i] = atlas[i + 1], and the last slice
    of the CT takes the border HU (warped_atlas.nii.gz's padding), not 0 HU."""
    atlas = load_atlas("tiny")
    step_world = torch.tensor(atlas.grid.affine[:3, 0], dtype=torch.float32)  # world mm of voxel (1, 0, 0)
    displacement = step_world[None, :, None, None, None].expand(1, 3, *atlas.grid.shape).contiguous()
    warped_hu = warped_atlas_hu(atlas, displacement)
    assert warped_hu.shape == (1, 1, *atlas.grid.shape) and warped_hu.dtype == torch.float32
    np.testing.assert_allclose(warped_hu[0, 0, :-1].numpy(), atlas.ct_hu[1:], atol=1e-2)
    np.testing.assert_allclose(warped_hu[0, 0, -1].numpy(), atlas.ct_hu[-1], atol=1e-2)
    labels = warped_atlas_labels(atlas, displacement)
    assert labels.dtype == np.uint8 and labels.shape == atlas.grid.shape
    np.testing.assert_array_equal(labels[:-1], atlas.labels[1:])


def test_warped_atlas_labels_continue_the_shaft_through_the_distal_face():
    """A pull of one voxel step distally along k: warped[:, :, k] = atlas[:, :, k - 1], and the first
    slice, drawn from beyond the grid's distal face, keeps the shaft the atlas femur crosses it with."""
    atlas = load_atlas("tiny")
    distal_face = atlas.labels[:, :, 0]
    assert distal_face.any() and not atlas.labels[:, :, -1].any()  # the shaft leaves through k = 0 only
    step_world = torch.tensor(atlas.grid.affine[:3, 2], dtype=torch.float32)  # world mm of voxel (0, 0, 1)
    displacement = (-step_world)[None, :, None, None, None].expand(1, 3, *atlas.grid.shape).contiguous()
    labels = warped_atlas_labels(atlas, displacement)
    np.testing.assert_array_equal(labels[:, :, 1:], atlas.labels[:, :, :-1])
    np.testing.assert_array_equal(labels[:, :, 0], distal_face)


def test_transform_matrix_is_rebuilt_from_its_parameters(result):
    document = json.loads((result.out_dir / "transform.json").read_text())
    rx, ry, rz = np.deg2rad(document["rotation_deg"])
    rot_x = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    rot_y = np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
    rot_z = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    linear = document["scale"] * rot_x @ rot_y @ rot_z
    centre, translation = np.array(document["centre_world_mm"]), np.array(document["translation_mm"])
    expected = np.eye(4)
    expected[:3, :3] = linear
    expected[:3, 3] = centre + translation - linear @ centre  # x' = c + s R (x - c) + t
    np.testing.assert_allclose(document["matrix"], expected, atol=1e-5)
    assert document["scale"] > 0 and "pull" in document["convention"]


def test_surface_is_watertight_in_world_mm(result):
    import trimesh

    atlas = load_atlas("tiny")
    mesh = trimesh.load(result.out_dir / "surface.stl")
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
    labels = np.asarray(nib.load(result.out_dir / "warped_labels.nii.gz").dataobj) == 1
    femur_world = np.argwhere(labels) @ atlas.grid.affine[:3, :3].T + atlas.grid.affine[:3, 3]
    spacing = atlas.grid.spacing_mm
    # The 0.5 iso-surface lies within one voxel of the outermost femur voxel centres ...
    np.testing.assert_array_less(np.abs(mesh.bounds[0] - femur_world.min(axis=0)), spacing + 1e-3)
    np.testing.assert_array_less(np.abs(mesh.bounds[1] - femur_world.max(axis=0)), spacing + 1e-3)
    # ... inside the atlas box grown by one voxel (the zero padding) ...
    corners = atlas.grid.corners_world(pad_vox=1.0)
    assert np.all(mesh.bounds[0] >= corners.min(axis=0) - 1e-3)
    assert np.all(mesh.bounds[1] <= corners.max(axis=0) + 1e-3)
    # ... and encloses about the label's volume (voxel count x voxel volume).
    label_volume = labels.sum() * np.prod(spacing)
    assert mesh.volume == pytest.approx(label_volume, rel=0.1)


def test_report_page_carries_the_surface_and_shows_it_in_a_browser(result, chromium):
    """report.html: the carried surface (surface.stl's vertex and face counts), both overlays and the
    hip measurements inline; in headless Chromium, no error and the femur drawn in the 3D panel."""
    import trimesh

    page = (result.out_dir / "report.html").read_text(encoding="utf-8")
    mesh = json.loads(re.search(r'id="mesh-data">(.*?)</script>', page)[1])
    surface = trimesh.load(result.out_dir / "surface.stl")
    assert len(base64.b64decode(mesh["positions"])) == 3 * 4 * len(surface.vertices)  # (V, 3) float32
    assert len(base64.b64decode(mesh["indices"])) == 3 * mesh["index_bytes"] * len(surface.faces)
    assert page.count("src='data:image/png;base64,") == 2 and "<td>neck-shaft angle</td>" in page
    assert f"network: {Path(result.report['inputs']['model']).name} (given) &middot;" in page
    browser = chromium(result.out_dir / "report.html")
    assert browser.attributes("report-page")["data-errors"] == "0" and browser.console == []
    viewer = browser.attributes("viewer")
    assert viewer["data-state"] == "drawn"
    red, green, blue = np.moveaxis(browser.region(viewer["data-rect"]).astype(int), -1, 0)
    bone = (red > blue + 15) & (green > blue) & (red > 80)  # the mesh's warm off-white, lit or in shade
    assert bone.mean() > 0.05


def test_overlays_are_8_bit_rgb_with_a_contour(result, inputs):
    rows, cols = np.load(inputs / "AP.npy").shape
    for name in ("AP", "LAT"):
        with Image.open(result.out_dir / f"overlay_{name}.png") as image:
            assert image.mode == "RGB" and image.size == (4 * cols, 4 * rows)
            pixels = np.asarray(image).astype(int)
        red = (pixels[..., 0] > 200) & (pixels[..., 1] < 100) & (pixels[..., 2] < 100)
        assert red.sum() > 4 * (rows + cols)  # a drawn outline, not a stray pixel


def test_report_has_timings_similarity_and_metrics(result):
    report = json.loads((result.out_dir / "report.json").read_text())
    assert report == result.report
    refined = "refine" in report
    assert set(report["timings_s"]) == {"load", "network", "writing", "total"} | ({"refine"} if refined else set())
    assert all(value >= 0 for value in report["timings_s"].values())
    assert report["timings_s"]["total"] >= report["timings_s"]["network"]
    assert set(report["projection_ncc"]) == {"AP", "LAT"}
    assert all(-1 <= value <= 1 for value in report["projection_ncc"].values())
    assert {"dice", "jaccard", "assd_mm", "hd95_mm"} <= set(report)
    assert 0 < report["dice"] <= 1
    assert HIP_KEYS | {"landmarks"} <= set(report["hip"])
    assert report["hip"]["landmarks"]["carry_residual_mm"] < 0.01
    assert report["deformation"]["folded_cells_percent"] == 0.0  # scaling and squaring: no fold here
    assert report["deformation"]["smallest_jacobian_determinant"] > 0.0
    assert 20.0 < report["hip"]["head_diameter_mm"] < 80.0 and 90.0 < report["hip"]["neck_shaft_angle_deg"] < 170.0
    quality = report["quality"]
    assert ("network_projection_ncc" in quality) == refined  # the flag also sees the network's, calibrated
    assert quality["projection_ncc"] == report["projection_ncc"]
    assert set(quality["silhouette_dice"]) == {"AP", "LAT"}
    assert all(0 <= value <= 1 for value in quality["silhouette_dice"].values())
    if refined:
        record = report["refine"]
        assert record["iterations"] == 2 and record["time_s"] > 0
        assert set(quality["network_projection_ncc"]) == {"AP", "LAT"}
        assert set(record["projection_ncc_before"]) == set(record["projection_ncc_after"]) == {"AP", "LAT"}
        assert record["objective_after"] <= record["objective_before"]  # the best iterate is kept
        assert {"dice", "jaccard", "assd_mm", "hd95_mm"} <= set(record["metrics_before"])
        assert set(record["hip_before"]) == HIP_KEYS


def test_without_masks_segments_and_accepts_an_empty_out_dir(inputs, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = register(**_arguments(inputs, out_dir, ap_mask=None, lat_mask=None, truth_labels=None, refine=1))
    assert sorted(path.name for path in out_dir.iterdir()) == sorted(OUTPUT_FILES)
    assert result.report["inputs"]["assumptions"]["masks"] == "segmented"
    assert result.report["refine"]["iterations"] == 1
    assert "dice" not in result.report and "metrics_before" not in result.report["refine"]


def _flag_nothing(monkeypatch):
    """Patch the quality block's thresholds so that no result is flagged."""
    monkeypatch.setattr(outputs, "QUALITY_MIN_SILHOUETTE_DICE", 0.0)
    monkeypatch.setattr(outputs, "QUALITY_MIN_PROJECTION_NCC", -1.0)


def test_without_refine_given_it_refines_oblique_views_only(inputs, tmp_path, monkeypatch):
    """``refine=None`` (the default): no refinement for the orthogonal pair; for a LAT stated 30 deg
    from lateral (> OBLIQUE_VIEW_DEG, 22.5), AUTO_REFINE_ITERATIONS (patched to 1 here for time). The
    quality thresholds are patched so that nothing is flagged (the test's network is barely trained)."""
    monkeypatch.setattr(pipeline, "AUTO_REFINE_ITERATIONS", 1)
    monkeypatch.setattr(pipeline, "REFINE_BELOW_SILHOUETTE_DICE", 0.0)
    _flag_nothing(monkeypatch)
    plain = register(**_arguments(inputs, tmp_path / "plain", refine=None)).report
    choice = plain["inputs"]["refine"]
    assert choice["iterations"] == 0 and choice["rule"].startswith("auto") and "refine" not in plain
    assert not choice["network_flagged"]
    assert max(choice["beam_obliquity_deg"].values()) < 1e-6
    views = read_geometry(inputs / "geometry.json")
    ap = views["AP"]
    shape, spacing = ap.image_shape, ap.carm.pixel_spacing_mm
    oblique = biplanar_pair(0.0, 60.0, shape, spacing, ap.carm.isocenter_mm)
    write_geometry(tmp_path / "oblique.json", oblique)
    turned = register(**_arguments(inputs, tmp_path / "turned", geometry=tmp_path / "oblique.json")).report
    assert turned["inputs"]["refine"]["iterations"] == 1 and turned["refine"]["iterations"] == 1
    np.testing.assert_allclose(list(turned["inputs"]["refine"]["beam_obliquity_deg"].values()), [0.0, 30.0], atol=1e-6)
    given = register(**_arguments(inputs, tmp_path / "given", geometry=tmp_path / "oblique.json", refine=0)).report
    assert given["inputs"]["refine"] == {"iterations": 0, "rule": "given"} and "refine" not in given


def test_without_refine_given_it_refines_a_flagged_result(inputs, tmp_path, monkeypatch):
    """``refine=None``: FLAGGED_REFINE_ITERATIONS (patched to 2) when the network's result is flagged;
    here every result is (the silhouette threshold patched to above any Dice), and the flag, read
    on the lower of the network's and the refined result's, stays set."""
    monkeypatch.setattr(pipeline, "FLAGGED_REFINE_ITERATIONS", 2)
    monkeypatch.setattr(outputs, "QUALITY_MIN_SILHOUETTE_DICE", 1.01)
    report = register(**_arguments(inputs, tmp_path / "flagged", refine=None)).report
    choice = report["inputs"]["refine"]
    assert choice["network_flagged"] and choice["iterations"] == 2 and report["refine"]["iterations"] == 2
    assert report["quality"]["flag"] and "network_silhouette_dice" in report["quality"]


def test_without_refine_given_it_refines_a_loose_silhouette(inputs, tmp_path, monkeypatch):
    """``refine=None``: FLAGGED_REFINE_ITERATIONS (patched to 2) when the network's result is not
    flagged (the quality thresholds patched off) but its silhouette Dice is below
    REFINE_BELOW_SILHOUETTE_DICE (patched to above any Dice); the record says why."""
    monkeypatch.setattr(pipeline, "FLAGGED_REFINE_ITERATIONS", 2)
    monkeypatch.setattr(pipeline, "REFINE_BELOW_SILHOUETTE_DICE", 1.01)
    _flag_nothing(monkeypatch)
    report = register(**_arguments(inputs, tmp_path / "loose", refine=None)).report
    choice = report["inputs"]["refine"]
    assert not choice["network_flagged"] and choice["iterations"] == 2 and report["refine"]["iterations"] == 2
    assert choice["network_lowest_silhouette_dice"] == pytest.approx(
        min(report["quality"]["network_silhouette_dice"].values())
    )
    assert not report["quality"]["flag"]


@pytest.mark.parametrize(
    ("flag", "silhouette", "expected"),
    [
        (False, 0.99, 0),
        (False, 0.98, pipeline.FLAGGED_REFINE_ITERATIONS),
        (True, 0.99, pipeline.FLAGGED_REFINE_ITERATIONS),
    ],
)
def test_auto_refine_iterations_reads_the_flag_and_the_silhouette(inputs, flag, silhouette, expected):
    """The rule on an orthogonal pair: refine when flagged or when the lowest silhouette Dice is
    below REFINE_BELOW_SILHOUETTE_DICE (0.985), else not."""
    views = read_geometry(inputs / "geometry.json")
    choice = pipeline.auto_refine_iterations(views, {"flag": flag, "lowest_silhouette_dice": silhouette})
    assert choice["iterations"] == expected
    assert choice["network_flagged"] is flag and choice["network_lowest_silhouette_dice"] == silhouette


def _write_nan_image(folder):
    image = np.load(folder / "AP.npy")
    image[3, 4] = np.nan
    np.save(folder / "bad.npy", image)


def _write_cropped_image(folder):
    np.save(folder / "bad.npy", np.load(folder / "AP.npy")[:-1])


def _write_garbage_image(folder):
    (folder / "bad.npy").write_bytes(b"not a numpy file")


def _write_ap_only_geometry(folder):
    document = json.loads((folder / "geometry.json").read_text())
    del document["views"]["LAT"]
    (folder / "bad.json").write_text(json.dumps(document))


@pytest.mark.parametrize(
    "write_bad, argument, bad_name",
    [
        (_write_nan_image, "ap", "bad.npy"),
        (_write_cropped_image, "ap", "bad.npy"),
        (_write_garbage_image, "lat", "bad.npy"),
        (_write_cropped_image, "ap_mask", "bad.npy"),
        (_write_ap_only_geometry, "geometry", "bad.json"),
    ],
)
def test_bad_input_names_the_file_and_leaves_nothing(inputs, tmp_path, write_bad, argument, bad_name):
    bad_folder = tmp_path / "bad"
    bad_folder.mkdir()
    for name in ("AP.npy", "geometry.json"):
        (bad_folder / name).write_bytes((inputs / name).read_bytes())
    write_bad(bad_folder)
    out_dir = tmp_path / "out"
    with pytest.raises(InputError, match=bad_name) as error:
        register(**_arguments(inputs, out_dir, **{argument: bad_folder / bad_name}))
    assert "\n" not in str(error.value)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bad"]


def _cli_arguments(folder, out_dir, **changes):
    """``biplanar register`` options for the case in ``folder``, with ``changes`` (option -> value)."""
    options = {
        "--geometry": folder / "geometry.json",
        "--ap": folder / "AP.npy",
        "--lat": folder / "LAT.npy",
        "--out": out_dir,
        "--model": folder / "weights.pt",
        "--ap-mask": folder / "AP_mask.npy",
        "--lat-mask": folder / "LAT_mask.npy",
        "--truth-labels": folder / "labels.nii.gz",
        **changes,
    }
    return ["register"] + [str(part) for option, value in options.items() for part in (option, value)]


def test_cli_register_defaults_to_the_bundled_model_and_prints_the_scores(inputs, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from biplanar.cli import app

    monkeypatch.setattr(checkpoints, "bundled_models_dir", lambda: tmp_path / "models")
    bundled = export_model(inputs / "model.pt", tmp_path / "models" / "lite" / "model.pt")
    arguments = list(_cli_arguments(inputs, tmp_path / "out", **{"--refine": 1, "--mesh-format": "vtk"}))
    del arguments[arguments.index("--model") : arguments.index("--model") + 2]  # no --model: the bundled one
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "dice" in result.output and "assd_mm" in result.output
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == sorted(output_files("vtk"))
    atlas_vertices = len(atlas_surface(load_atlas("tiny")).vertices)  # the carried mesh keeps the atlas's vertices
    assert f"\nPOINTS {atlas_vertices} float\n".encode() in (tmp_path / "out" / "surface.vtk").read_bytes()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["refine"]["iterations"] == 1 and report["inputs"]["model"] == str(bundled)
    assert report["inputs"]["model_choice"]["model"] == "lite"


@pytest.mark.parametrize(
    "write_bad, option, bad_name, message",
    [
        (_write_nan_image, "--ap", "bad.npy", "NaN"),
        (_write_cropped_image, "--lat", "bad.npy", "image shape"),
        (_write_garbage_image, "--ap", "bad.npy", "bad.npy"),
        (_write_ap_only_geometry, "--geometry", "bad.json", "LAT"),
        (lambda folder: None, "--model", "missing.pt", "file not found"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line_and_no_debris(inputs, tmp_path, write_bad, option, bad_name, message):
    from typer.testing import CliRunner

    from biplanar.cli import app

    bad_folder = tmp_path / "bad"
    bad_folder.mkdir()
    for name in ("AP.npy", "geometry.json"):
        (bad_folder / name).write_bytes((inputs / name).read_bytes())
    write_bad(bad_folder)
    result = CliRunner().invoke(app, _cli_arguments(inputs, tmp_path / "out", **{option: bad_folder / bad_name}))
    assert result.exit_code == 2
    # Progress lines ("register: loading ...") may precede the one error line; no traceback.
    lines = [line for line in result.output.strip().splitlines() if not line.startswith("register: ")]
    assert len(lines) == 1 and lines[0].startswith("biplanar: error:") and bad_name in lines[0] and message in lines[0]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bad"]  # no output folder, no .partial


def test_refuses_a_non_empty_out_dir_and_one_mask_only(inputs, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not an empty folder"):
        register(**_arguments(inputs, tmp_path / "out"))
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    with pytest.raises(InputError, match="AP_mask.npy"):
        register(**_arguments(inputs, tmp_path / "new", lat_mask=None))
    with pytest.raises(InputError, match="refine"):
        register(**_arguments(inputs, tmp_path / "new", refine=-1))
    with pytest.raises(InputError, match="mesh format: expected one of stl, ply, obj, vtk, got 'off'"):
        register(**_arguments(inputs, tmp_path / "new", mesh_format="off"))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_label_surface_of_a_ball_on_a_flipped_anisotropic_grid():
    import trimesh

    from biplanar.geometry.volume_grid import VolumeGrid
    from biplanar.io.mesh import label_surface

    affine = np.diag([-1.5, 2.0, 2.5, 1.0])  # flipped x: det < 0
    affine[:3, 3] = (40.0, -30.0, -35.0)
    grid = VolumeGrid((40, 32, 28), affine)
    centre, radius = np.array([10.0, 0.0, 0.0]), 18.0
    labels = np.linalg.norm(grid.voxel_centres_world(torch.float64).numpy() - centre, axis=-1) <= radius
    labels = labels.astype(np.uint8)
    labels[0, 0, 0] = 1  # a stray voxel: a second, smaller piece that must be dropped
    surface = label_surface(labels, grid)
    mesh = trimesh.Trimesh(surface.vertices, surface.faces)
    assert mesh.is_watertight and mesh.volume > 0  # closed, normals outward despite the flip
    assert surface.volume == pytest.approx(mesh.volume)
    np.testing.assert_allclose(mesh.center_mass, centre, atol=0.3)
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * radius**3, rel=0.05)


def test_registration_leaves_trimesh_unimported(inputs, tmp_path, fresh_python):
    """With the atlas's stored surface, ``register`` writes its meshes without trimesh (0.27 s to
    import with the SciPy modules it loads)."""
    arguments = {
        key: str(value) if isinstance(value, Path) else value
        for key, value in _arguments(inputs, tmp_path / "out", truth_labels=None).items()
    }
    code = (
        "import sys\nfrom biplanar.registration.pipeline import register\n"
        f"register(**{arguments!r})\n"
        "print(sorted(name for name in ('trimesh', 'scipy.spatial', 'networkx') if name in sys.modules))\n"
    )
    assert fresh_python(code).strip().splitlines()[-1] == "[]"
    assert (tmp_path / "out" / "surface.stl").is_file()


def test_registration_does_not_import_the_training_stack_or_the_simulator(fresh_python):
    """``register``'s start-up: the pipeline loads neither training code nor the dataset simulator."""
    code = (
        "import sys, biplanar.registration.pipeline\n"
        "heavy = ('biplanar.data.simulate', 'biplanar.data.datasets', 'biplanar.training.trainer',"
        " 'biplanar.training.segmentation_trainer', 'monai')\n"
        "print(sorted(name for name in heavy if name in sys.modules))\n"
    )
    assert fresh_python(code).strip() == "[]"


def checks(ncc: dict[str, float], silhouette: dict[str, float] | None = None) -> ProjectionChecks:
    return ProjectionChecks(ncc, silhouette or {"AP": 0.99, "LAT": 0.99})


@pytest.mark.parametrize(
    ("refined", "network", "flagged", "lowest"),
    [
        (None, None, False, "LAT"),
        ({"AP": 0.93, "LAT": 0.91}, {"AP": 0.92, "LAT": 0.70}, True, "LAT"),
        ({"AP": 0.70, "LAT": 0.91}, {"AP": 0.85, "LAT": 0.90}, True, "AP"),
        ({"AP": 0.94, "LAT": 0.93}, {"AP": 0.85, "LAT": 0.90}, False, "AP"),
    ],
    ids=["network alone", "refined over a failed network", "refined below a good network", "both good"],
)
def test_the_quality_flag_sees_the_networks_projections_under_refine(refined, network, flagged, lowest):
    """With --refine the flag reads the lower of the network's projection NCC (what its threshold was
    calibrated on) and the refined one's, per view; without, the result's (the network's)."""
    result = refined or {"AP": 0.93, "LAT": 0.91}
    quality = quality_report(checks(result), network and checks(network))
    assert quality["projection_ncc"] == result
    assert quality["flag"] is flagged and quality["lowest_view"] == lowest
    assert quality["threshold"] == QUALITY_MIN_PROJECTION_NCC
    assert len(quality["flag_reasons"]) == flagged


@pytest.mark.parametrize(
    ("result", "network", "reasons"),
    [
        ({"AP": 0.99, "LAT": 0.98}, None, []),
        ({"AP": 0.99, "LAT": 0.95}, None, ["silhouette Dice 0.950 in LAT is below 0.965"]),
        ({"AP": 0.99, "LAT": 0.99}, {"AP": 0.96, "LAT": 0.99}, ["silhouette Dice 0.960 in AP is below 0.965"]),
    ],
    ids=["both fit", "a silhouette off", "the network's silhouette off under refine"],
)
def test_the_quality_flag_sees_a_silhouette_that_does_not_fit_the_mask(result, network, reasons):
    """A registered femur whose outline leaves the mask is flagged even when the projection NCC
    passes (docs/clinical.md, "The silhouette check")."""
    good_ncc = {"AP": 0.92, "LAT": 0.91}
    quality = quality_report(checks(good_ncc, result), network and checks(good_ncc, network))
    assert quality["silhouette_dice"] == result
    assert quality["flag_reasons"] == reasons and quality["flag"] is bool(reasons)
    assert quality["silhouette_threshold"] == QUALITY_MIN_SILHOUETTE_DICE == 0.965


def test_silhouette_dice_is_the_dice_of_the_mask_rule_with_the_network_s_mask():
    """The silhouette of a box femur against its own mask-rule mask is 1; against the mask moved 3
    columns it is the two masks' Dice."""
    grid = load_atlas("tiny").grid
    labels = np.zeros(grid.shape, dtype=np.uint8)
    labels[14:30, 10:22, 8:40] = 1  # FEMUR_LABEL
    femur = torch.from_numpy(labels == 1).float()[None, None]  # (1, 1, I, J, K)
    views = biplanar_pair(image_shape=(56, 40), pixel_spacing_mm=(3.72, 3.72))
    num_samples = 64
    silhouette = {
        name: ProST(view, grid, num_samples)(femur)[0, 0].numpy() > MASK_MIN_PATH_MM for name, view in views.items()
    }
    network = SimpleNamespace(grid=grid, projectors=ProjectorCache(grid, (56, 40), num_samples))
    output = SimpleNamespace(warped_image=femur * 1000.0)

    def inputs_with(masks: dict[str, np.ndarray]) -> SimpleNamespace:
        return SimpleNamespace(
            views={
                name: SimpleNamespace(view=views[name], image=np.ones(masks[name].shape, np.float32), mask=masks[name])
                for name in views
            }
        )

    assert projection_checks(output, network, labels, inputs_with(silhouette)).silhouette_dice == {
        "AP": 1.0,
        "LAT": 1.0,
    }
    moved = {name: np.roll(silhouette[name], 3, axis=1) for name in views}
    dice = projection_checks(output, network, labels, inputs_with(moved)).silhouette_dice
    for name in views:
        expected = mask_dice(silhouette[name][None], moved[name][None])[0]  # MONAI's compute_dice
        assert dice[name] == pytest.approx(float(expected), abs=1e-6) and dice[name] < 0.9


def test_a_mask_the_femur_cannot_fit_is_flagged_with_a_warning(inputs, tmp_path, capsys):
    """A square mask beside the femur: the registered femur's outline cannot follow it, and register
    says so on stderr, naming the check and the view."""
    mask = np.zeros(np.load(inputs / "AP_mask.npy").shape, np.float32)
    mask[2:10, 2:10] = 1.0
    write_image(tmp_path / "square.npy", mask)
    report = register(**_arguments(inputs, tmp_path / "out", ap_mask=tmp_path / "square.npy", refine=0)).report
    quality = report["quality"]
    assert quality["flag"] and quality["silhouette_dice"]["AP"] < 0.2
    assert any(reason.startswith("silhouette Dice") and " in AP " in reason for reason in quality["flag_reasons"])
    warning = capsys.readouterr().err
    assert (
        warning.startswith("warning: registration quality: ")
        and "silhouette Dice 0.000 in AP is below 0.965" in warning
    )


def _disc_mask(shape: tuple[int, int] = (64, 48), radius: float = 10.0) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (rows - shape[0] / 2) ** 2 + (cols - shape[1] / 2) ** 2 < radius**2


@pytest.mark.parametrize("surroundings", [0.0, 0.3, 0.8])
def test_surround_level_is_the_ring_around_the_mask_over_the_femur(surroundings):
    mask = _disc_mask()
    image = np.where(mask, 2.0, 2.0 * surroundings).astype(np.float32)
    image[mask & ~ndimage.binary_erosion(mask)] = 0.1  # the femur's thin edge: not its median
    inner = ndimage.binary_dilation(mask, iterations=bone_in_air.RING_INNER_PX)
    image[inner & ~mask] = 7.0  # its blurred edge, before the ring: left out
    image[~ndimage.binary_dilation(mask, iterations=bone_in_air.RING_OUTER_PX)] = 9.0  # beyond the ring: left out
    assert bone_in_air.surround_level(image, mask) == pytest.approx(surroundings)


def test_surround_level_is_undefined_without_a_femur_or_a_ring():
    mask = _disc_mask()
    assert bone_in_air.surround_level(np.ones(mask.shape), np.zeros_like(mask)) is None
    assert bone_in_air.surround_level(np.ones(mask.shape), np.ones_like(mask)) is None
    assert bone_in_air.surround_level(np.zeros(mask.shape), mask) is None


@pytest.mark.parametrize(
    "lat_surroundings, lat_mask, expected",
    [(0.0, True, "lite_alone"), (0.5, True, "lite"), (0.0, False, "lite")],
)
def test_the_bone_in_air_network_needs_air_around_the_femur_in_both_views(lat_surroundings, lat_mask, expected):
    mask = _disc_mask()
    images = {"AP": np.where(mask, 1.0, 0.0), "LAT": np.where(mask, 1.0, lat_surroundings)}
    choice = bone_in_air.choose_bundled_model(images, {"AP": mask, "LAT": mask if lat_mask else np.zeros_like(mask)})
    assert choice["model"] == expected and choice["bone_in_air"] == (expected == "lite_alone")
    assert choice["surround_level"] == {"AP": 0.0, "LAT": lat_surroundings if lat_mask else None}


def test_the_bundled_networks_share_the_detector_and_atlas():
    # register reads the inputs with the body network's detector before it picks the network
    body = checkpoints.load_model(checkpoints.bundled_model_path(bone_in_air.BODY_MODEL), "cpu")
    alone = checkpoints.load_model(checkpoints.bundled_model_path(bone_in_air.BONE_IN_AIR_MODEL), "cpu")
    assert body[1].geometry == alone[1].geometry
    assert torch.equal(body[0].atlas_mu, alone[0].atlas_mu) and torch.equal(body[0].atlas_labels, alone[0].atlas_labels)
