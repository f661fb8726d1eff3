"""Datasets from CTs (``simulate --from-ct``): a folder of CT + label NIfTIs becomes a dataset.

The folder holds two phantom subjects re-saved as plain CT / label-map NIfTIs in oblique input
worlds (one mirrored to a left femur, TotalSegmentator's labels 76 and 75) and the shipped real CT,
whose label map is a bone threshold of the tops of its femoral heads (all that scan holds). The
truth for the radiographs: the atlas's CT re-saved in an oblique world comes back on the grid
where the atlas lies, so its radiographs are the simulator's radiographs of the atlas.
"""

from __future__ import annotations

import csv
import json
import math
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from biplanar.cli import app
from biplanar.config import load_config
from biplanar.data import SubjectSpec, grid_preset, make_atlas, render_subject
from biplanar.data.datasets import SimulatedDataset
from biplanar.data.from_ct import (
    CtScan,
    ct_case,
    default_femur_labels,
    find_scans,
    load_scan,
    parse_femur_labels,
    simulate_from_ct,
)
from biplanar.data.real_ct import REAL_CT
from biplanar.data.simulate import SimulationConfig, is_complete, render_radiographs, subject_files
from biplanar.data.synthetic_ct import write_synthetic_scans
from biplanar.errors import InputError
from biplanar.geometry import VolumeGrid
from biplanar.geometry.transforms import euler_to_rotation
from biplanar.io.geometry_file import read_geometry
from biplanar.io.volumes import read_volume, write_volume
from biplanar.training.trainer import TrainingRun, train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

RIGHT, LEFT = 76, 75  # TotalSegmentator v2
MIRROR_X = np.diag([-1.0, 1.0, 1.0, 1.0])
LITE_GRID = SimulationConfig(preset="lite", scene="grid")


def oblique(mirrored: bool) -> np.ndarray:
    """``(4, 4)`` a known rendering-world -> input-world map: rotations about x and z, a shift,
    and the mirror of a left femur."""
    matrix = np.eye(4)
    matrix[:3, :3] = euler_to_rotation(torch.tensor(np.radians([15.0, 0.0, -12.0]))[None]).numpy()[0]
    matrix[:3, 3] = [30.0, -40.0, 100.0]
    return MIRROR_X @ matrix if mirrored else matrix


def save_pair(folder: Path, name: str, ct_hu: np.ndarray, labels: np.ndarray, grid: VolumeGrid) -> None:
    write_volume(folder / f"{name}.nii.gz", ct_hu, grid)
    write_volume(folder / f"{name}_labels.nii.gz", labels.astype(np.uint8), grid)


def save_subject(folder: Path, name: str, spec: SubjectSpec, mirrored: bool) -> None:
    """A subject rendered on a scan-like grid (the lite grid's spacing, 1.4 times its field of
    view, reaching further down the shaft), saved in an oblique input world (mirrored: left)."""
    lite = grid_preset("lite")
    shape = tuple(round(1.4 * n) for n in lite.shape)
    subject = render_subject(spec, VolumeGrid.from_spacing(shape, lite.spacing_mm, centre_world=(0.0, 0.0, -30.0)))
    grid = VolumeGrid(subject.grid.shape, oblique(mirrored) @ subject.grid.affine)
    save_pair(folder, name, subject.ct_hu, subject.labels * (LEFT if mirrored else RIGHT), grid)


def real_ct_labels(ct_hu: np.ndarray) -> np.ndarray:
    """The tops of the real CT's femoral heads: bone (> 200 HU) in its lowest 10 slices, right
    (world -x) and left, as TotalSegmentator's labels."""
    labels = np.zeros(ct_hu.shape, np.uint8)
    bone = ct_hu > 200.0
    labels[:40, :, :10][bone[:40, :, :10]] = RIGHT
    labels[82:, :, :10][bone[82:, :, :10]] = LEFT
    return labels


@pytest.fixture(scope="module")
def ct_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cts")
    save_subject(folder, "s0", SubjectSpec.sample(11, "ssm"), mirrored=False)
    save_subject(folder, "s1", SubjectSpec.sample(12, "phantom"), mirrored=True)
    ct_hu, grid = read_volume(REAL_CT)
    save_pair(folder, "real", ct_hu, real_ct_labels(ct_hu), grid)
    return folder


@pytest.fixture(scope="module")
def dataset(ct_folder, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("from_ct") / "data"
    return out, simulate_from_ct(ct_folder, out, 4, LITE_GRID, progress=False)


@cache
def atlas_ct_folder(root: Path, mirrored: bool) -> CtScan:
    atlas = make_atlas("lite")
    grid = VolumeGrid(atlas.grid.shape, oblique(mirrored) @ atlas.grid.affine)
    folder = root / ("left" if mirrored else "right")
    folder.mkdir(parents=True, exist_ok=True)
    save_pair(folder, "atlas", atlas.ct_hu, atlas.labels * (LEFT if mirrored else RIGHT), grid)
    return CtScan("atlas", folder / "atlas.nii.gz", folder / "atlas_labels.nii.gz")


def relative_l1(image: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(image - reference).sum() / np.abs(reference).sum())


# --- the radiographs ------------------------------------------------------------------------------
@pytest.mark.parametrize("scene", ["grid", "body"])
@pytest.mark.parametrize("mirrored", [False, True])
def test_radiographs_of_a_re_saved_atlas_are_the_simulator_s(tmp_path_factory, mirrored, scene):
    scan = atlas_ct_folder(tmp_path_factory.getbasetemp() / "atlas_cts", mirrored)
    config = SimulationConfig(preset="lite", scene=scene, geometry="mixed")
    case = ct_case(load_scan(scan), "left" if mirrored else "right", LEFT if mirrored else RIGHT, 5, config, False)
    atlas = make_atlas("lite")
    expected = render_radiographs(atlas.ct_hu, atlas.grid, case.views, config)
    for view in ("AP", "LAT"):
        assert relative_l1(case.radiographs[view], expected[view]) < 0.01, view  # measured 0.4-0.6 %
    assert case.side == "right"
    assert np.sign(np.linalg.det(case.preprocessed.frame.output_to_input[:3, :3])) == (-1 if mirrored else 1)


def test_keep_sides_keeps_a_left_femur_left_on_the_mirrored_atlas(tmp_path_factory):
    scan = load_scan(atlas_ct_folder(tmp_path_factory.getbasetemp() / "atlas_cts", True))
    mirrored = ct_case(scan, "left", LEFT, 5, LITE_GRID, keep_sides=False)
    kept = ct_case(scan, "left", LEFT, 5, LITE_GRID, keep_sides=True)
    assert kept.side == "left" and np.linalg.det(kept.preprocessed.frame.output_to_input[:3, :3]) > 0
    np.testing.assert_allclose(grid_preset("lite").centre_world[0], 0.0, atol=1e-9)  # flip = mirror about x = 0
    flipped = mirrored.labels[::-1].astype(bool)
    overlap = 2.0 * (flipped & kept.labels.astype(bool)).sum() / (flipped.sum() + kept.labels.sum())
    assert overlap > 0.99


# --- the dataset ----------------------------------------------------------------------------------
def test_a_folder_becomes_a_dataset_with_one_subject_per_usable_femur(dataset):
    out, summary = dataset
    assert summary.written == ("s0_right", "s1_left") and summary.kept == ()
    skipped = summary.skipped
    assert set(skipped) == {"s0_left", "s1_right", "real_left", "real_right"}
    assert "label 75 not present" in skipped["s0_left"]
    assert all("\n" not in reason for reason in skipped.values())
    assert "femoral head" in skipped["real_left"] and "femoral head" in skipped["real_right"]
    assert json.loads((out / "from_ct.json").read_text())["skipped"] == skipped
    for name in summary.written:
        assert is_complete(out / "subjects" / name, subject_files("line_integral"))
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["from_ct"]["femur_labels"] == {"right": RIGHT, "left": LEFT}
    samples = SimulatedDataset(out, "all")
    assert [sample["subject_id"] for sample in samples] == ["s0_right", "s1_left"]
    assert samples[0]["radiographs"].shape == (2, *LITE_GRID.image_shape)


def test_written_radiographs_are_the_simulator_s_of_the_written_volume(dataset):
    out, _ = dataset
    folder = out / "subjects" / "s1_left"
    ct_hu, grid = read_volume(folder / "ct.nii.gz")
    expected = render_radiographs(ct_hu, grid, read_geometry(folder / "geometry.json"), LITE_GRID)
    for view in ("AP", "LAT"):
        assert relative_l1(np.load(folder / f"{view}.npy"), expected[view]) < 1e-4


def test_subject_record_holds_the_source_and_the_measured_femur(dataset):
    """The phantom's neck-shaft angle and offset are defined on the proximal shaft axis, as the
    preprocessing measures them (the shape model's are clinical ones, on the whole femur)."""
    out, _ = dataset
    record = json.loads((out / "subjects" / "s1_left" / "subject.json").read_text())
    truth = SubjectSpec.sample(12, "phantom").femur
    assert record["source"]["scan"] == "s1" and record["source"]["label"] == LEFT
    femur = record["parameters"]["femur"]
    assert abs(femur["head_radius_mm"] - truth.head_radius_mm) < 0.5
    assert abs(femur["neck_shaft_angle_deg"] - truth.neck_shaft_angle_deg) < 2.0
    assert abs(femur["femoral_offset_mm"] - truth.femoral_offset_mm) < 2.0
    atlas_head = make_atlas("lite").landmarks.head_centre_mm
    np.testing.assert_allclose(record["landmarks"]["head_centre_mm"], atlas_head, atol=1e-6)


def test_split_goes_by_scan(dataset):
    out, _ = dataset
    split = json.loads((out / "split.json").read_text())
    assert sorted(name for part in split.values() for name in part) == ["s0_right", "s1_left"]


def test_re_running_resumes_and_another_seed_is_refused(ct_folder, dataset):
    out, _ = dataset
    again = simulate_from_ct(ct_folder, out, 4, LITE_GRID, progress=False)
    assert again.written == () and again.kept == ("s0_right", "s1_left")
    with pytest.raises(InputError, match="made with seed 4"):
        simulate_from_ct(ct_folder, out, 5, LITE_GRID, progress=False)


def test_fine_tuning_starts_from_a_checkpoint_on_a_from_ct_dataset(ct_folder, tiny_model, tmp_path):
    data = tmp_path / "data"
    simulate_from_ct(ct_folder, data, 4, SimulationConfig(preset="tiny", scene="grid"), progress=False)
    config = load_config("tiny")
    result = train(config, TrainingRun(tmp_path / "run", data_dir=data, progress=False, max_steps=2), init=tiny_model)
    assert result.last_checkpoint.is_file()
    with (tmp_path / "run" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(math.isfinite(float(row["train_total"])) for row in rows)


# --- the folder and the labels ----------------------------------------------------------------
def test_default_femur_labels_are_totalsegmentator_v2_s():
    assert default_femur_labels() == {"right": 76, "left": 75}
    assert parse_femur_labels("right=5") == {"right": 5}
    assert parse_femur_labels(" left=2, right=3 ") == {"left": 2, "right": 3}


@pytest.mark.parametrize("text", ["", "right", "right=x", "up=3", "right=1,right=2", "left=0", "left=70000"])
def test_bad_femur_labels_are_named(text):
    with pytest.raises(InputError, match="femur-labels"):
        parse_femur_labels(text)


def test_a_manifest_names_the_pairs_and_its_ids_are_names(ct_folder, tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"id,ct,labels\np7,{ct_folder / 's0.nii.gz'},{ct_folder / 's0_labels.nii.gz'}\n")
    assert find_scans(tmp_path) == [CtScan("p7", ct_folder / "s0.nii.gz", ct_folder / "s0_labels.nii.gz")]
    for bad_id in ("../up", "a/b", ".hidden"):
        manifest.write_text(f"id,ct,labels\n{bad_id},{ct_folder / 's0.nii.gz'},{ct_folder / 's0_labels.nii.gz'}\n")
        with pytest.raises(InputError, match="is not a plain name"):
            find_scans(tmp_path)
    manifest.write_text("id,ct,labels\np7,missing.nii.gz,missing_labels.nii.gz\n")
    with pytest.raises(InputError, match="line 2: .*missing.nii.gz: file not found"):
        find_scans(tmp_path)
    manifest.write_text("name,image\n")
    with pytest.raises(InputError, match="columns id, ct, labels"):
        find_scans(tmp_path)


def test_a_folder_without_pairs_is_refused(tmp_path):
    (tmp_path / "lonely.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="no CT \\+ label pairs"):
        find_scans(tmp_path)
    with pytest.raises(InputError, match="not a folder"):
        find_scans(tmp_path / "nowhere")


# --- the command ------------------------------------------------------------------------------
def test_command_makes_a_dataset_and_reports_each_skipped_femur(ct_folder, tmp_path):
    result = CliRunner().invoke(
        app,
        ["simulate", "--from-ct", str(ct_folder), "--out", str(tmp_path / "d"), "--seed", "1"]
        + ["--preset", "tiny", "--scene", "grid", "--femur-labels", "right=76,left=75"],
    )
    assert result.exit_code == 0, result.output
    assert "wrote 2 subjects" in result.output and "4 femurs skipped" in result.output
    assert "skipped real_right: right femur (label 76): the femoral head is cut off" in result.output


def test_command_refuses_a_folder_without_a_usable_femur_and_leaves_nothing(ct_folder, tmp_path):
    only_real = tmp_path / "cts"
    only_real.mkdir()
    for name in ("real.nii.gz", "real_labels.nii.gz"):
        (only_real / name).symlink_to(ct_folder / name)
    result = CliRunner().invoke(
        app, ["simulate", "--from-ct", str(only_real), "--out", str(tmp_path / "d"), "--seed", "1"]
    )
    assert result.exit_code == 2
    assert "no usable femur in 1 scan(s)" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--n", "3"], "--n: not used with --from-ct"),
        (["--femur-labels", "r=1"], "femur-labels: expected"),
        (["--bone-contrast", "2"], "--bone-contrast: not used with --from-ct"),
        (["--shape-spread", "1.5"], "--shape-spread, --off-model-mm: not used with --from-ct"),
        (["--off-model-mm", "1"], "--shape-spread, --off-model-mm: not used with --from-ct"),
        (["--uniform-femur"], "--uniform-femur: not used with --from-ct"),
        (["--scene", "femur"], "scene: expected body or grid with a CT folder"),
    ],
)
def test_command_refuses_bad_from_ct_options(ct_folder, tmp_path, extra, message):
    result = CliRunner().invoke(
        app, ["simulate", "--from-ct", str(ct_folder), "--out", str(tmp_path / "d"), "--seed", "1", *extra]
    )
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_a_synthetic_scan_gives_both_femurs_alike(tmp_path):
    """A synthetic scan (both hips, the left the right mirrored) becomes two subjects whose measured
    femurs agree: the left one is mirrored onto the atlas as the right one is placed."""
    write_synthetic_scans(tmp_path / "scans", 1, 3, progress=False)
    made = simulate_from_ct(tmp_path / "scans", tmp_path / "data", 1, LITE_GRID, progress=False)
    assert made.written == ("scan_000_left", "scan_000_right") and not made.skipped
    femurs = [
        json.loads((tmp_path / "data" / "subjects" / name / "subject.json").read_text())["parameters"]["femur"]
        for name in made.written
    ]
    for key, tolerance in (("head_radius_mm", 0.3), ("neck_shaft_angle_deg", 1.0), ("femoral_offset_mm", 1.0)):
        assert abs(femurs[0][key] - femurs[1][key]) < tolerance, key
    labels = [read_volume(tmp_path / "data" / "subjects" / name / "labels.nii.gz")[0] > 0 for name in made.written]
    assert 2.0 * (labels[0] & labels[1]).sum() / (labels[0].sum() + labels[1].sum()) > 0.97


def test_workers_make_the_same_dataset(ct_folder, tmp_path):
    tiny = SimulationConfig(preset="tiny", scene="grid")
    one = simulate_from_ct(ct_folder, tmp_path / "one", 4, tiny, workers=1, progress=False)
    two = simulate_from_ct(ct_folder, tmp_path / "two", 4, tiny, workers=2, progress=False)
    assert one.written == two.written and one.skipped == two.skipped
    for name in one.written:
        for view in ("AP", "LAT"):
            first, second = (
                np.load(root / "subjects" / name / f"{view}.npy") for root in (tmp_path / "one", tmp_path / "two")
            )
            assert np.array_equal(first, second), (name, view)


def test_a_femur_cut_across_by_the_field_of_view_is_skipped(ct_folder, tmp_path):
    """The re-saved subject cropped through its femur (a reconstruction field of view too tight)."""
    ct_hu, grid = read_volume(ct_folder / "s0.nii.gz")
    labels, _ = read_volume(ct_folder / "s0_labels.nii.gz")
    columns = np.nonzero((labels == RIGHT).any(axis=(1, 2)))[0]
    first = int(columns.mean())  # through the femur's middle
    shift = np.eye(4)
    shift[0, 3] = first  # the cropped grid's voxel 0 is the scan's voxel (first, 0, 0)
    cropped = VolumeGrid((grid.shape[0] - first, *grid.shape[1:]), grid.affine @ shift)
    save_pair(tmp_path, "cut", ct_hu[first:], labels[first:], cropped)
    scan = load_scan(CtScan("cut", tmp_path / "cut.nii.gz", tmp_path / "cut_labels.nii.gz"))
    with pytest.raises(InputError, match="touches the CT's side faces: cut by the scan's field of view"):
        ct_case(scan, "right", RIGHT, 5, LITE_GRID, keep_sides=False)
