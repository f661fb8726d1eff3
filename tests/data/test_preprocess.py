"""Real-CT preprocessing, checked on phantoms with a known truth.

A phantom femur is rendered, posed, on a grid 1.5 times the paper's field of view with another
voxel spacing; the CT's affine is then turned by a known rotation about two axes and mirrored,
so the volume shows a LEFT femur in an oblique input world. The truth is the generator's own
landmarks carried through that map, and for the output the same femur rendered directly on the
preset grid where the preprocessing promises to put it: head centre on the atlas's, shaft axis
along the canonical one, turned about it from its own anteversion to the atlas's (for the atlas
itself: the atlas, pose zero).
"""

from __future__ import annotations

import dataclasses
import json
from functools import cache

import nibabel as nib
import numpy as np
import pytest
import torch

from biplanar.data import FemurShape, Pose, Subject, SubjectSpec, grid_preset, render_subject
from biplanar.data.femur_shape import canonical_rotation
from biplanar.data.preprocess import (
    FemurAxes,
    PreprocessResult,
    femur_frame,
    preprocess_arrays,
    preprocess_femur,
    resample,
)
from biplanar.errors import InputError
from biplanar.geometry import VolumeGrid
from biplanar.geometry.transforms import euler_to_rotation, rotation_to_euler

MIRROR_X = np.diag([-1.0, 1.0, 1.0, 1.0])
SCENE_POSE = Pose(flexion_deg=8.0, abduction_deg=-6.0, external_rotation_deg=10.0, translation_mm=(4.0, -3.0, 2.0))
FEMUR_LEFT, HIP_LEFT = 75, 77  # TotalSegmentator v2 label values


def rotation(angles_deg: list[float]) -> np.ndarray:
    """``(3, 3)`` ``Rx @ Ry @ Rz`` of angles in degrees."""
    return euler_to_rotation(torch.tensor(np.radians(angles_deg))[None]).numpy()[0]


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float(2.0 * (a & b).sum() / (a.sum() + b.sum()))


def rendering_to_input(mirrored: bool) -> np.ndarray:
    """``(4, 4)`` the known map from the rendering's world to the CT's input world: a rotation of
    15 degrees about x and -12 about z and a shift, mirrored in x for a left femur."""
    matrix = np.eye(4)
    matrix[:3, :3] = rotation([15.0, 0.0, -12.0])
    matrix[:3, 3] = [30.0, -40.0, 100.0]
    return MIRROR_X @ matrix if mirrored else matrix


@cache
def scene(seed: int | None) -> Subject:
    """Subject ``seed`` (``None``: the atlas) posed on a 1.5x larger, differently sampled grid."""
    spec = SubjectSpec.atlas() if seed is None else SubjectSpec.sample(seed)
    spacing = (1.0, 1.25, 1.5)
    shape = tuple(round(1.5 * f / s) for f, s in zip((127.5, 85.0, 192.0), spacing))
    grid = VolumeGrid.from_spacing(shape, spacing, centre_world=(0.0, 0.0, -20.0))
    return render_subject(dataclasses.replace(spec, pose=SCENE_POSE), grid)


def input_grid(seed: int | None, mirrored: bool) -> VolumeGrid:
    """The scene's grid, its affine composed with :func:`rendering_to_input`."""
    grid = scene(seed).grid
    return VolumeGrid(grid.shape, rendering_to_input(mirrored) @ grid.affine)


@cache
def preprocessed(seed: int | None, side: str) -> PreprocessResult:
    s = scene(seed)
    return preprocess_arrays(s.ct_hu, input_grid(seed, side == "left"), s.labels, side, "lite")


@cache
def expected_output(seed: int | None, preset: str = "lite") -> Subject:
    """The femur rendered where the preprocessing puts it: turned about its shaft axis (the
    femur frame's s) from its anteversion to the atlas's, head centre on the atlas's."""
    atlas = SubjectSpec.atlas()
    spec = atlas if seed is None else SubjectSpec.sample(seed)
    # Anteversion is measured from medial (-l) towards anterior (+a), i.e. about -s: turning the
    # femur by +psi about +s takes anteversion theta to theta - psi.
    psi = spec.femur.anteversion_deg - atlas.femur.anteversion_deg
    canonical = canonical_rotation()
    turn = canonical @ rotation([0.0, 0.0, psi]) @ canonical.T  # world rotation about the shaft
    rx, ry, rz = np.degrees(rotation_to_euler(torch.tensor(turn)[None]).numpy()[0])
    turned = dataclasses.replace(spec, pose=Pose(rx, -ry, -rz))  # Pose: Rx(f) Ry(-a) Rz(-e)
    shift = atlas.centred_head_world - turned.centred_head_world
    placed = dataclasses.replace(turned, pose=dataclasses.replace(turned.pose, translation_mm=tuple(shift)))
    return render_subject(placed, grid_preset(preset))


# --- frame recovery and output --------------------------------------------------------------
CASES = [(None, "left"), (3, "left"), (3, "right")]


@pytest.mark.parametrize(("seed", "side"), CASES)
def test_recovers_the_frame_of_a_rotated_femur(seed, side):
    truth, to_input = scene(seed).landmarks, rendering_to_input(side == "left")
    axes = preprocessed(seed, side).frame.axes
    point = lambda x: to_input[:3, :3] @ x + to_input[:3, 3]  # noqa: E731
    assert angle_deg(axes.shaft_axis, to_input[:3, :3] @ truth.shaft_axis) < 2.0
    assert angle_deg(axes.neck_axis, to_input[:3, :3] @ truth.neck_axis) < 2.0
    assert np.linalg.norm(axes.head_centre_mm - point(truth.head_centre_mm)) < 1.0
    assert abs(axes.head_radius_mm - truth.head_radius_mm) < 0.5
    spec = scene(seed).spec.femur
    assert abs(axes.neck_shaft_angle_deg - spec.neck_shaft_angle_deg) < 2.0
    assert abs(axes.femoral_offset_mm - spec.femoral_offset_mm) < 2.0


@pytest.mark.parametrize(("seed", "side"), CASES)
def test_output_matches_the_phantom_rendered_in_place(seed, side):
    result, expected = preprocessed(seed, side), expected_output(seed)
    assert result.grid.shape == grid_preset("lite").shape
    np.testing.assert_array_equal(result.grid.affine, grid_preset("lite").affine)
    assert result.ct_hu.dtype == np.float32 and result.labels.dtype == np.uint8
    assert set(np.unique(result.labels)) == {0, 1}
    assert dice(result.labels, expected.labels) >= 0.97
    # The output-to-input matrix against the truth: the expected femur frame -> output world,
    # then the scene's femur frame -> rendering world -> input world.
    truth = (
        rendering_to_input(side == "left")
        @ scene(seed).spec.femur_to_world()
        @ np.linalg.inv(expected.spec.femur_to_world())
    )
    matrix = result.frame.output_to_input
    head = np.r_[expected.landmarks.head_centre_mm, 1.0]
    assert np.linalg.norm(matrix @ head - truth @ head) < 1.0
    assert np.sign(np.linalg.det(matrix[:3, :3])) == (-1.0 if side == "left" else 1.0)
    difference = matrix[:3, :3].T @ truth[:3, :3]
    assert np.degrees(np.arccos(np.clip((np.trace(difference) - 1.0) / 2.0, -1, 1))) < 1.5


def test_femur_ct_comes_back_as_the_atlas_femur():
    """The scene's pose moved the femur in its cup, so only the femur's HU are the atlas's
    (its texture lives in the femur frame); they differ by partial volume and resampling."""
    result, atlas = preprocessed(None, "left"), expected_output(None)
    femur = atlas.labels > 0
    assert np.corrcoef(result.ct_hu[femur], atlas.ct_hu[femur])[0, 1] > 0.95
    assert np.abs(result.ct_hu[femur] - atlas.ct_hu[femur]).mean() < 80.0  # HU, spread ~490


@pytest.mark.slow
def test_paper_preset():
    s = scene(None)
    result = preprocess_arrays(s.ct_hu, input_grid(None, True), s.labels, "left", "paper")
    assert dice(result.labels, expected_output(None, "paper").labels) >= 0.97


def test_frame_of_the_atlas_axes_is_the_identity():
    """Axes given as the atlas's own (canonical frame, world = output world) map nothing; moved
    by a rigid map or a mirror, they give back that map."""
    atlas = SubjectSpec.atlas()
    canonical = canonical_rotation()
    axes = FemurAxes(
        head_centre_mm=atlas.centred_head_world,
        head_radius_mm=23.5,
        shaft_axis_point_mm=atlas.centred_head_world,
        shaft_axis=canonical[:, 2],
        neck_axis=canonical @ FemurShape(atlas.femur).neck_axis,
    )
    np.testing.assert_allclose(femur_frame(axes, "right").output_to_input, np.eye(4), atol=1e-9)
    for mirrored, side in ((False, "right"), (True, "left")):
        moved = rendering_to_input(mirrored)
        moved_axes = FemurAxes(
            head_centre_mm=moved[:3, :3] @ axes.head_centre_mm + moved[:3, 3],
            head_radius_mm=23.5,
            shaft_axis_point_mm=moved[:3, :3] @ axes.head_centre_mm + moved[:3, 3],
            shaft_axis=moved[:3, :3] @ axes.shaft_axis,
            neck_axis=moved[:3, :3] @ axes.neck_axis,
        )
        np.testing.assert_allclose(femur_frame(moved_axes, side).output_to_input, moved, atol=1e-9)


def test_resample_is_exact_for_linear_fields():
    """Trilinear interpolation reproduces an affine function exactly; outside is ``outside``."""
    source = VolumeGrid(
        (20, 24, 16),
        np.block(
            [
                [rotation([10.0, -20.0, 30.0]) @ np.diag([1.5, 1.0, 2.0]), np.array([[-10.0], [-12.0], [-15.0]])],
                [np.zeros((1, 3)), np.ones((1, 1))],
            ]
        ),
    )
    target = VolumeGrid.from_spacing((30, 20, 25), (1.2, 1.7, 1.1))
    gradient, offset = np.array([2.0, -3.0, 0.5]), 7.0
    source_points = source.voxel_centres_world(torch.float64).numpy()
    volume = source_points @ gradient + offset
    pull = np.eye(4)
    pull[:3, :3], pull[:3, 3] = rotation([5.0, 0.0, -8.0]), [3.0, 2.0, 1.0]
    out = resample(volume, source, target, pull, outside=-1000.0)
    pulled = target.voxel_centres_world(torch.float64).numpy() @ pull[:3, :3].T + pull[:3, 3]
    pulled_vox = source.world_to_vox(torch.as_tensor(pulled)).numpy()
    inside = np.all((pulled_vox >= 0) & (pulled_vox <= np.array(source.shape) - 1), axis=-1)
    far = np.any((pulled_vox < -1) | (pulled_vox > np.array(source.shape)), axis=-1)
    assert inside.sum() > 1000 and far.sum() > 1000
    np.testing.assert_allclose(out[inside], (pulled @ gradient + offset)[inside], atol=2e-3)
    assert np.all(out[far] == -1000.0)


# --- files ----------------------------------------------------------------------------------
def write_scene(directory, seed: int | None = None):
    """The left-femur scene as a CT (int16 HU) and a TotalSegmentator-like label map."""
    s, grid = scene(seed), input_grid(seed, True)
    labels = np.where(s.labels > 0, FEMUR_LEFT, np.where(s.ct_hu > 300.0, HIP_LEFT, 0))
    ct_path, labels_path = directory / "ct_in.nii.gz", directory / "labels_in.nii.gz"
    nib.save(nib.Nifti1Image(np.round(s.ct_hu).astype(np.int16), grid.affine), ct_path)
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), grid.affine), labels_path)
    return ct_path, labels_path


def test_preprocess_femur_writes_ct_labels_and_frame(tmp_path):
    ct_path, labels_path = write_scene(tmp_path)
    out = tmp_path / "out"
    result = preprocess_femur(ct_path, labels_path, FEMUR_LEFT, "left", out, preset="lite")
    assert sorted(p.name for p in out.iterdir()) == ["ct.nii.gz", "frame.json", "labels.nii.gz"]
    lite = grid_preset("lite")
    ct, labels = nib.load(out / "ct.nii.gz"), nib.load(out / "labels.nii.gz")
    assert ct.get_data_dtype() == np.float32 and labels.get_data_dtype() == np.uint8
    np.testing.assert_allclose(ct.affine, lite.affine)
    np.testing.assert_array_equal(np.asarray(labels.dataobj), result.labels)
    np.testing.assert_array_equal(np.asarray(ct.dataobj), result.ct_hu)
    np.testing.assert_array_equal(result.labels, preprocessed(None, "left").labels)
    frame = json.loads((out / "frame.json").read_text())
    assert frame["label"] == FEMUR_LEFT and frame["side"] == "left" and frame["preset"] == "lite"
    np.testing.assert_allclose(frame["output_to_input"], result.frame.output_to_input)
    np.testing.assert_allclose(frame["head_centre_mm"], result.frame.axes.head_centre_mm)
    for key in ("head_radius_mm", "shaft_axis", "neck_axis", "neck_shaft_junction_mm"):
        assert key in frame


def test_file_errors_name_the_file(tmp_path):
    grid = VolumeGrid.from_spacing((12, 12, 12), (1.0, 1.0, 1.0))
    ct_path, labels_path = tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(grid.shape, np.int16), grid.affine), ct_path)
    nib.save(nib.Nifti1Image(np.full(grid.shape, HIP_LEFT, np.uint8), grid.affine), labels_path)
    with pytest.raises(InputError, match="missing.nii.gz: file not found"):
        preprocess_femur(tmp_path / "missing.nii.gz", labels_path, FEMUR_LEFT, "left", tmp_path / "o")
    with pytest.raises(InputError, match=f"labels.nii.gz: label {FEMUR_LEFT} not present .*{HIP_LEFT}"):
        preprocess_femur(ct_path, labels_path, FEMUR_LEFT, "left", tmp_path / "o")
    for shape, affine in (((12, 12, 13), grid.affine), (grid.shape, np.diag([1.0, 1.0, 1.2, 1.0]))):
        other = tmp_path / "other.nii.gz"
        nib.save(nib.Nifti1Image(np.full(shape, FEMUR_LEFT, np.uint8), affine), other)
        with pytest.raises(InputError, match="other.nii.gz: grid .* differs from the CT's"):
            preprocess_femur(ct_path, other, FEMUR_LEFT, "left", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_bad_arrays_side_and_preset_are_named():
    grid = VolumeGrid.from_spacing((12, 12, 12), (1.0, 1.0, 1.0))
    ct, mask = np.zeros(grid.shape, np.float32), np.zeros(grid.shape, bool)
    with pytest.raises(InputError, match=r"femur_mask: expected shape \(12, 12, 12\)"):
        preprocess_arrays(ct, grid, mask[:, :, :5], "left")
    with pytest.raises(InputError, match="side: expected one of"):
        preprocess_arrays(ct, grid, mask, "both")
    with pytest.raises(InputError, match="preset: unknown grid preset 'huge'"):
        preprocess_arrays(ct, grid, mask, "left", "huge")
    mask[4:8, 4:8, 4:8] = True
    with pytest.raises(InputError, match="femur_mask: only 64 voxels, too small"):
        preprocess_arrays(ct, grid, mask, "left")


def test_a_ball_is_not_a_femoral_head():
    grid = VolumeGrid.from_spacing((40, 40, 40), (1.0, 1.0, 1.0))
    points = grid.voxel_centres_world(torch.float64).numpy()
    ball = np.linalg.norm(points, axis=-1) < 10.0
    with pytest.raises(InputError, match="radius of 10.* not a femoral head"):
        preprocess_arrays(np.zeros(grid.shape), grid, ball, "right")


def test_wrong_side_and_cut_off_femurs_are_refused():
    s, grid = scene(None), input_grid(None, True)
    with pytest.raises(InputError, match="side: 'right' given, .* a left femur"):
        preprocess_arrays(s.ct_hu, grid, s.labels, "right")
    # Labels ending 110 mm below the head centre (rendering world z): too short for the shaft.
    height = s.grid.voxel_centres_world(torch.float64).numpy()[..., 2]
    short = s.labels * (height > s.landmarks.head_centre_mm[2] - 110.0)
    with pytest.raises(InputError, match="femur_mask: the femur is cut off"):
        preprocess_arrays(s.ct_hu, grid, short, "left")
    # A CT whose top slice passes through the head.
    top = int(np.searchsorted(height[0, 0], s.landmarks.head_centre_mm[2] + 10.0))
    cropped = VolumeGrid((*grid.shape[:2], top), grid.affine)
    with pytest.raises(InputError, match="femoral head is cut off by the CT's field of view"):
        preprocess_arrays(s.ct_hu[:, :, :top], cropped, s.labels[:, :, :top], "left")


def test_preprocess_command_reports_bad_input(tmp_path):
    """The CLI wrapper: a one-line error and exit code 2 for a missing CT."""
    from typer.testing import CliRunner

    from biplanar.cli import app

    result = CliRunner().invoke(
        app,
        [
            "preprocess",
            "--ct",
            str(tmp_path / "ct.nii.gz"),
            "--labels",
            str(tmp_path / "l.nii.gz"),
            "--label",
            "76",
            "--side",
            "left",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 2
    assert "ct.nii.gz: file not found" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
