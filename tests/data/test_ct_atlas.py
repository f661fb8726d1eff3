"""Atlases from CT (one subject's) and from a simulated dataset (the mean), checked on phantoms.

A phantom subject is rendered, posed, on a grid larger than the atlas's with another voxel
spacing, its affine turned by a known rotation (and mirrored for a left femur), and saved as a CT
and a TotalSegmentator-like label map; the atlas built from it must load, lie in the atlas frame
and carry sane landmarks.
"""

from __future__ import annotations

import dataclasses
import json
from functools import cache
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from biplanar.cli import app
from biplanar.data import Pose, Subject, SubjectSpec, render_subject
from biplanar.data.atlas import load_atlas
from biplanar.data.ct_atlas import atlas_from_ct, atlas_from_dataset, check_landmarks, femur_landmarks
from biplanar.data.simulate import SimulationConfig, simulate_dataset
from biplanar.errors import InputError
from biplanar.geometry import VolumeGrid
from biplanar.geometry.transforms import euler_to_rotation

pytestmark = pytest.mark.usefixtures("one_thread")

FEMUR_LEFT, FEMUR_RIGHT, HIP = 75, 76, 77  # TotalSegmentator v2 label values
SCENE_POSE = Pose(flexion_deg=-6.0, abduction_deg=5.0, external_rotation_deg=-8.0, translation_mm=(-3.0, 2.0, 4.0))
POINTS = ("head_centre_mm", "shaft_axis_point_mm", "greater_trochanter_tip_mm", "lesser_trochanter_tip_mm")


def angle_deg(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1.0, 1.0))))


def distance_mm(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float(2.0 * (a & b).sum() / (a.sum() + b.sum()))


@cache
def scene(seed: int) -> Subject:
    """Subject ``seed``, posed, on a 1.5x larger grid than the atlas's with another spacing."""
    spacing = (1.0, 1.25, 1.5)
    shape = tuple(round(1.5 * f / s) for f, s in zip((127.5, 85.0, 192.0), spacing))
    grid = VolumeGrid.from_spacing(shape, spacing, centre_world=(0.0, 0.0, -20.0))
    return render_subject(dataclasses.replace(SubjectSpec.sample(seed), pose=SCENE_POSE), grid)


def write_ct(directory: Path, seed: int, side: str, scale: float = 1.0) -> tuple[Path, Path]:
    """Subject ``seed`` as a CT (int16 HU) and label map in an oblique input world: rotated 12
    degrees about x and -10 about z, mirrored in x for a left femur, scaled by ``scale``."""
    s = scene(seed)
    to_input = np.eye(4)
    rotation = euler_to_rotation(torch.tensor(np.radians([12.0, 0.0, -10.0]))[None]).numpy()[0]
    to_input[:3, :3], to_input[:3, 3] = scale * rotation, [20.0, -30.0, 80.0]
    if side == "left":
        to_input = np.diag([-1.0, 1.0, 1.0, 1.0]) @ to_input
    affine = to_input @ s.grid.affine
    femur = FEMUR_LEFT if side == "left" else FEMUR_RIGHT
    labels = np.where(s.labels > 0, femur, np.where(s.ct_hu > 300.0, HIP, 0)).astype(np.uint8)
    directory.mkdir(parents=True, exist_ok=True)
    ct_path, labels_path = directory / "ct.nii.gz", directory / "labels.nii.gz"
    nib.save(nib.Nifti1Image(np.round(s.ct_hu).astype(np.int16), affine), ct_path)
    nib.save(nib.Nifti1Image(labels, affine), labels_path)
    return ct_path, labels_path


# --- landmarks -----------------------------------------------------------------------------------
def test_landmarks_of_the_shipped_atlas_agree_with_its_landmarks_file():
    atlas = load_atlas("lite")
    measured, truth = femur_landmarks(atlas.labels, atlas.grid), atlas.landmarks
    assert distance_mm(measured["head_centre_mm"], truth["head_centre_mm"]) < 1.0
    assert abs(measured["head_radius_mm"] - truth["head_radius_mm"]) < 0.5
    for key in ("shaft_axis", "neck_axis"):
        assert angle_deg(measured[key], truth[key]) < 2.0
    # The axis point is where the axis meets the head centre's perpendicular: the axis's error.
    assert distance_mm(measured["shaft_axis_point_mm"], truth["shaft_axis_point_mm"]) < 1.0
    # Tips on a 1.33 x 1.33 x 2 mm grid: measured 1.1 mm (greater) and 1.1 mm (lesser).
    assert distance_mm(measured["greater_trochanter_tip_mm"], truth["greater_trochanter_tip_mm"]) < 2.5
    assert distance_mm(measured["lesser_trochanter_tip_mm"], truth["lesser_trochanter_tip_mm"]) < 2.5
    np.testing.assert_allclose(measured["condylar_axis"], SubjectSpec.atlas().femur_rotation()[:, 0])


def test_landmark_check_names_the_value_and_the_source():
    landmarks = femur_landmarks(load_atlas("lite").labels, load_atlas("lite").grid)
    check_landmarks(landmarks, "ct.nii.gz")
    with pytest.raises(InputError, match=r"^ct.nii.gz: head radius 12.0 mm is not an adult femur's \(18 to 30 mm\)"):
        check_landmarks({**landmarks, "head_radius_mm": 12.0}, "ct.nii.gz")
    with pytest.raises(InputError, match=r"^ct.nii.gz: neck-shaft angle 90.0 deg"):
        check_landmarks({**landmarks, "neck_axis": [1.0, 0.0, 0.0], "shaft_axis": [0.0, 0.0, 1.0]}, "ct.nii.gz")


# --- one subject's CT ----------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["right", "left"])
def test_atlas_from_a_ct_loads_and_lies_in_the_atlas_frame(tmp_path, side):
    ct_path, labels_path = write_ct(tmp_path / "in", 3, side)
    label = FEMUR_LEFT if side == "left" else FEMUR_RIGHT
    out = atlas_from_ct(ct_path, labels_path, label, side, tmp_path / "atlas", preset="lite")
    assert sorted(path.name for path in out.parent.iterdir()) == ["atlas", "in"]  # no partial folder left
    atlas, shipped = load_atlas("lite", out), load_atlas("lite")
    assert atlas.grid.shape == shipped.grid.shape and np.allclose(atlas.grid.affine, shipped.grid.affine)
    assert nib.load(out / "atlas.nii.gz").get_data_dtype() == np.int16
    assert nib.load(out / "atlas_labels.nii.gz").get_data_dtype() == np.uint8
    # Subject 3 is not the mean femur, but it lies on the atlas femur: head, axes, overlap.
    truth, landmarks = scene(3).landmarks, atlas.landmarks
    assert distance_mm(landmarks["head_centre_mm"], shipped.landmarks["head_centre_mm"]) < 1e-6
    assert abs(landmarks["head_radius_mm"] - truth.head_radius_mm) < 0.5
    assert angle_deg(landmarks["shaft_axis"], shipped.landmarks["shaft_axis"]) < 1e-6
    assert dice(atlas.labels, shipped.labels) > 0.8
    femur_hu = atlas.ct_hu[atlas.labels > 0]
    assert 300.0 < np.median(femur_hu) < 1500.0 and np.median(atlas.ct_hu[atlas.labels == 0]) < 300.0
    # The tips measured on the atlas against the subject's own, carried by its neck-shaft geometry:
    # their distances from the head centre are rigid invariants.
    for key, tip in (("greater", truth.greater_trochanter_tip_mm), ("lesser", truth.lesser_trochanter_tip_mm)):
        measured = distance_mm(landmarks[f"{key}_trochanter_tip_mm"], landmarks["head_centre_mm"])
        assert abs(measured - distance_mm(tip, truth.head_centre_mm)) < 3.0, key
    check_landmarks(landmarks, "atlas")
    source = json.loads((out / "landmarks.json").read_text())["source"]
    assert source["ct"] == str(ct_path) and source["label"] == label and source["frame"]["side"] == side
    assert json.loads((out / "landmarks.json").read_text())["preset"] == "lite"


def test_a_ball_and_a_small_femur_are_refused(tmp_path):
    grid = VolumeGrid.from_spacing((60, 60, 60), (1.0, 1.0, 1.0))
    ball = np.linalg.norm(grid.voxel_centres_world(torch.float64).numpy(), axis=-1) < 10.0
    ct_path, labels_path = tmp_path / "ball_ct.nii.gz", tmp_path / "ball_labels.nii.gz"
    nib.save(nib.Nifti1Image(np.where(ball, 1000, -1000).astype(np.int16), grid.affine), ct_path)
    nib.save(nib.Nifti1Image(ball.astype(np.uint8), grid.affine), labels_path)
    with pytest.raises(InputError, match="ball_labels.nii.gz .*radius of 10.* not a femoral head"):
        atlas_from_ct(ct_path, labels_path, 1, "right", tmp_path / "ball_atlas")
    # A femur at 0.6 scale (a 14 mm head) is refused; the preprocessing finds its shaft too short
    # first. (Its head sphere fit, started at the mean 23.5 mm radius, does not find heads under
    # ~20 mm: check_landmarks' own refusal is tested on landmarks above.)
    ct_path, labels_path = write_ct(tmp_path / "small", 3, "right", scale=0.6)
    with pytest.raises(InputError, match=r"small/labels.nii.gz \(label 76\): the femur is cut off 1\d\d mm"):
        atlas_from_ct(ct_path, labels_path, FEMUR_RIGHT, "right", tmp_path / "small_atlas")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ball_ct.nii.gz", "ball_labels.nii.gz", "small"]


def test_an_existing_atlas_folder_and_a_missing_label_are_refused(tmp_path):
    ct_path, labels_path = write_ct(tmp_path / "in", 3, "right")
    (tmp_path / "atlas").mkdir()
    (tmp_path / "atlas" / "atlas.nii.gz").write_text("keep")
    with pytest.raises(InputError, match="atlas: already exists and is not an empty folder"):
        atlas_from_ct(ct_path, labels_path, FEMUR_RIGHT, "right", tmp_path / "atlas")
    assert (tmp_path / "atlas" / "atlas.nii.gz").read_text() == "keep"
    with pytest.raises(InputError, match=f"labels.nii.gz: label {FEMUR_LEFT} not present"):
        atlas_from_ct(ct_path, labels_path, FEMUR_LEFT, "left", tmp_path / "other")
    assert not (tmp_path / "other").exists()


# --- the mean of a dataset -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Five lite phantom subjects: 3 train, 1 val, 1 test (three of a split to average)."""
    out = tmp_path_factory.mktemp("dataset")
    simulate_dataset(out, 5, 11, SimulationConfig(preset="lite", scene="grid", shapes="phantom"), progress=False)
    return out


def test_mean_atlas_of_a_dataset(dataset, tmp_path):
    split = json.loads((dataset / "split.json").read_text())
    out = atlas_from_dataset(dataset, tmp_path / "mean", progress=False)
    atlas, shipped = load_atlas("lite", out), load_atlas("lite")
    assert atlas.grid.shape == shipped.grid.shape and np.allclose(atlas.grid.affine, shipped.grid.affine)
    landmarks = atlas.landmarks
    assert landmarks["preset"] == "lite" and landmarks["source"]["subjects"] == split["train"]
    # The subjects' poses are undone: the mean femur lies on the atlas femur.
    assert distance_mm(landmarks["head_centre_mm"], shipped.landmarks["head_centre_mm"]) < 1.5
    assert angle_deg(landmarks["shaft_axis"], shipped.landmarks["shaft_axis"]) < 3.0
    assert dice(atlas.labels, shipped.labels) > 0.85
    check_landmarks(landmarks, "mean")
    assert np.median(atlas.ct_hu[atlas.labels > 0]) > 300.0


def test_a_left_femur_kept_left_is_mirrored_back(dataset, tmp_path):
    """A dataset whose subjects are mirrored about the grid's midsagittal plane ``x = 0`` (left
    femurs kept left, ``source.kept_side``) gives the same mean atlas."""
    mirrored = tmp_path / "mirrored"
    for name in ("split.json", "dataset.json"):
        mirrored.mkdir(exist_ok=True)
        (mirrored / name).write_text((dataset / name).read_text())
    for folder in (dataset / "subjects").iterdir():
        copy = mirrored / "subjects" / folder.name
        copy.mkdir(parents=True)
        for name in ("ct.nii.gz", "labels.nii.gz"):
            image = nib.load(folder / name)
            nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[::-1], image.affine), copy / name)  # i -> I-1-i: x -> -x
        record = json.loads((folder / "subject.json").read_text())
        head = record["landmarks"]["head_centre_mm"]
        record["landmarks"]["head_centre_mm"] = [-head[0], head[1], head[2]]
        (copy / "subject.json").write_text(json.dumps({**record, "source": {"kept_side": "left"}}))
    plain = load_atlas("lite", atlas_from_dataset(dataset, tmp_path / "plain", progress=False))
    back = load_atlas("lite", atlas_from_dataset(mirrored, tmp_path / "back", progress=False))
    assert dice(back.labels, plain.labels) > 0.99
    assert np.abs(back.ct_hu.astype(float) - plain.ct_hu).mean() < 5.0  # HU


def test_dataset_errors_name_the_file(dataset, tmp_path):
    with pytest.raises(InputError, match=r"split: expected one of train, val, test, all, got 'holdout'"):
        atlas_from_dataset(dataset, tmp_path / "a", split="holdout", progress=False)
    with pytest.raises(InputError, match="preset: 'paper' given, but the dataset .* on the 'lite' grid"):
        atlas_from_dataset(dataset, tmp_path / "a", preset="paper", progress=False)
    with pytest.raises(InputError, match="nowhere/split.json: file not found"):
        atlas_from_dataset(tmp_path / "nowhere", tmp_path / "a", progress=False)
    # A copy of the dataset whose train subject lies on another grid, and one with a file missing.
    split = json.loads((dataset / "split.json").read_text())
    broken = tmp_path / "broken"
    for name in ("split.json", "dataset.json"):
        (broken / name).parent.mkdir(parents=True, exist_ok=True)
        (broken / name).write_text((dataset / name).read_text())
    subject = broken / "subjects" / split["train"][0]
    subject.mkdir(parents=True)
    (subject / "subject.json").write_text((dataset / "subjects" / split["train"][0] / "subject.json").read_text())
    with pytest.raises(InputError, match=f"{split['train'][0]}/ct.nii.gz: file not found"):
        atlas_from_dataset(broken, tmp_path / "a", progress=False)
    other = VolumeGrid.from_spacing((20, 20, 20), (2.0, 2.0, 2.0))
    for name in ("ct.nii.gz", "labels.nii.gz"):
        nib.save(nib.Nifti1Image(np.zeros(other.shape, np.float32), other.affine), subject / name)
    with pytest.raises(InputError, match=r"ct.nii.gz: grid \(shape \(20, 20, 20\)\) differs from the lite preset's"):
        atlas_from_dataset(broken, tmp_path / "a", progress=False)
    assert not (tmp_path / "a").exists()


# --- the command ---------------------------------------------------------------------------------
def test_atlas_command_from_ct(tmp_path):
    ct_path, labels_path = write_ct(tmp_path / "in", 3, "left")
    out = tmp_path / "atlas"
    arguments = ["atlas", "--from-ct", str(ct_path), "--labels", str(labels_path), "--label", str(FEMUR_LEFT)]
    result = CliRunner().invoke(app, [*arguments, "--side", "left", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote the atlas of femur {FEMUR_LEFT} of {ct_path} to {out}"
    assert sorted(path.name for path in out.iterdir()) == [
        "atlas.nii.gz",
        "atlas_labels.nii.gz",
        "atlas_surface.npz",
        "landmarks.json",
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--from-ct", "ct.nii.gz", "--side", "left"], "--from-ct needs --labels and --label"),
        (["--from-ct", "ct.nii.gz", "--labels", "l.nii.gz", "--label", "75"], "--from-ct needs --side"),
        (["--from-ct", "ct.nii.gz", "--from-dataset", "data"], "--from-ct and --from-dataset exclude each other"),
        (["--labels", "l.nii.gz"], "--labels, --label and --side go with --from-ct"),
        (["--from-ct", "c.nii.gz", "--labels", "l.nii.gz", "--label", "75", "--side", "left"], "c.nii.gz: file not"),
    ],
)
def test_atlas_command_reports_bad_input_in_one_line(tmp_path, extra, message):
    result = CliRunner().invoke(app, ["atlas", "--out", str(tmp_path / "out"), *extra])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# --- registration with an atlas from one CT ------------------------------------------------------
@pytest.mark.slow
def test_registering_with_an_atlas_from_a_ct(tmp_path):
    """The bundled lite model (trained with the mean-shape atlas) registers a held-out phantom
    case with an atlas built from another phantom subject's CT."""
    from biplanar import api
    from biplanar.data.simulate import simulate_case, write_case
    from biplanar.demo import DEMO_SEED
    from biplanar.training.checkpoints import bundled_models_dir

    if not (bundled_models_dir() / "lite" / "model.pt").is_file():
        pytest.skip("the bundled lite model is not installed")
    ct_path, labels_path = write_ct(tmp_path / "ct", 3, "left")
    atlas_dir = atlas_from_ct(ct_path, labels_path, FEMUR_LEFT, "left", tmp_path / "atlas")
    case_dir = tmp_path / "case"
    write_case(case_dir, simulate_case(DEMO_SEED, SimulationConfig(preset="lite", geometry="orthogonal")))
    report = api.register(
        case_dir / "geometry.json",
        case_dir / "AP.npy",
        case_dir / "LAT.npy",
        tmp_path / "out",
        atlas=atlas_dir,
        ap_mask=case_dir / "AP_mask.npy",
        lat_mask=case_dir / "LAT_mask.npy",
        truth_labels=case_dir / "labels.nii.gz",
        progress=False,
    ).report
    print(f"Dice with an atlas from one CT: {report['dice']:.4f}")
    assert report["dice"] >= 0.90
