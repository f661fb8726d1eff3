"""The femur phantom: determinism, shape parameters measured back from the label maps, tissue
layout, grids and anti-aliasing. Measurements use only the generated volumes (least-squares
sphere fits, centroids) and closed forms, never the generator's own geometry code."""

from __future__ import annotations

import dataclasses
import re
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from biplanar.data import (
    GRID_PRESETS,
    FemurParameters,
    PelvisParameters,
    Pose,
    Subject,
    SubjectSpec,
    TissueParameters,
    grid_preset,
    make_atlas,
    make_subject,
    render_subject,
)
from biplanar.data.phantom import PoseRange
from biplanar.data.random_fields import FourierField
from biplanar.data.voxelise import narrow_band_sdf, occupancy, ramp_width
from biplanar.geometry import VolumeGrid

DOCS = Path(__file__).resolve().parents[2] / "docs" / "data.md"


@cache
def subject(seed: int, preset: str) -> Subject:
    return make_subject(seed, preset)


@cache
def unposed_subject(seed: int | None, preset: str) -> Subject:
    """Subject ``seed`` (``None``: the atlas) in the canonical pose, so angles refer to world x."""
    spec = SubjectSpec.atlas() if seed is None else SubjectSpec.sample(seed)
    return render_subject(dataclasses.replace(spec, pose=Pose()), grid_preset(preset))


# --- measurements on label maps ------------------------------------------------------------
def to_world(grid: VolumeGrid, vox: np.ndarray) -> np.ndarray:
    return vox @ grid.affine[:3, :3].T + grid.affine[:3, 3]


def surface_points(labels: np.ndarray, grid: VolumeGrid) -> np.ndarray:
    """World mm of the midpoints of voxel edges that cross the label boundary (the vertices
    marching cubes puts on a binary volume at level 0.5)."""
    points = []
    for axis in range(3):
        crossing = np.argwhere(np.diff(labels.astype(np.int8), axis=axis) != 0).astype(float)
        crossing[:, axis] += 0.5
        points.append(crossing)
    return to_world(grid, np.concatenate(points))


def fit_sphere(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Algebraic least squares: |p|^2 = 2 c.p + (r^2 - |c|^2)."""
    design = np.c_[2.0 * points, np.ones(len(points))]
    solution, *_ = np.linalg.lstsq(design, (points**2).sum(axis=1), rcond=None)
    centre = solution[:3]
    return centre, float(np.sqrt(solution[3] + centre @ centre))


def measure_femur(s: Subject) -> dict[str, np.ndarray | float]:
    """Head sphere, neck and shaft axes measured from ``s.labels``.

    The true landmarks only choose regions of interest: the head surface away from the neck,
    and the shaft between 25 and 60 mm below the lesser trochanter.
    """
    grid, labels, truth = s.grid, s.labels, s.landmarks
    surface = surface_points(labels, grid)
    offsets = surface - truth.head_centre_mm
    distance = np.linalg.norm(offsets, axis=1)
    away_from_neck = offsets @ -truth.neck_axis < 0.5 * distance
    centre, radius = fit_sphere(surface[(distance < truth.head_radius_mm + 4.0) & away_from_neck])

    inside = to_world(grid, np.argwhere(labels).astype(float))
    from_centre = np.linalg.norm(inside - centre, axis=1)
    neck_shell = inside[(from_centre > radius + 1.0) & (from_centre < radius + 4.0)]
    neck = centre - neck_shell.mean(axis=0)  # from the neck towards the head centre
    neck /= np.linalg.norm(neck)

    lt_z = truth.lesser_trochanter_tip_mm[2]
    slices = [
        k for k in range(labels.shape[2]) if lt_z - 60.0 <= to_world(grid, np.array([0.0, 0.0, k]))[2] <= lt_z - 25.0
    ]
    centroids = np.array([to_world(grid, np.r_[np.argwhere(labels[:, :, k]).mean(axis=0), k]) for k in slices])
    _, _, vt = np.linalg.svd(centroids - centroids.mean(axis=0))
    shaft = vt[0] * np.sign(vt[0][2])  # proximal direction
    return {"centre": centre, "radius": radius, "neck": neck, "shaft": shaft}


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))


# --- determinism and variability -----------------------------------------------------------
def test_same_seed_gives_identical_bytes():
    first, second = make_subject(7, "tiny"), make_subject(7, "tiny")
    assert first.ct_hu.dtype == np.float32 and first.labels.dtype == np.uint8
    assert first.ct_hu.tobytes() == second.ct_hu.tobytes()
    assert first.labels.tobytes() == second.labels.tobytes()
    assert first.spec == second.spec


def test_different_seeds_give_different_shapes():
    a, b = subject(1, "tiny"), subject(2, "tiny")
    differing = [k for k, v in a.parameters.to_dict().items() if v != b.parameters.to_dict()[k]]
    assert len(differing) == len(FemurParameters.ranges())
    dice = 2 * (a.labels & b.labels).sum() / (a.labels.sum() + b.labels.sum())
    assert dice < 0.9


def test_parameters_stay_in_their_ranges():
    rng = np.random.default_rng(0)
    for cls in (FemurParameters, PelvisParameters, TissueParameters):
        assert cls.mean().to_dict() == {k: r.mean for k, r in cls.ranges().items()}
        for _ in range(200):
            cls.sample(rng).check()
    assert len(FemurParameters.ranges()) >= 10
    assert FemurParameters.mean().is_plausible()
    with pytest.raises(ValueError, match="head_radius_mm"):
        dataclasses.replace(FemurParameters.mean(), head_radius_mm=40.0).check()


def test_pose_sampling_stays_within_paper_ranges():
    rng = np.random.default_rng(3)
    poses = [Pose.sample(rng) for _ in range(200)]
    angles = np.array([[p.flexion_deg, p.abduction_deg, p.external_rotation_deg] for p in poses])
    assert np.abs(angles).max() <= 10.0 and np.abs(angles).max() > 9.0
    rotation = poses[0].rotation()
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
    # Flexion moves the distal femur (-z) anteriorly; abduction moves it laterally (+x, right hip).
    down = np.array([0.0, 0.0, -1.0])
    assert (Pose(flexion_deg=10.0).rotation() @ down)[1] > 0.1
    assert (Pose(abduction_deg=10.0).rotation() @ down)[0] > 0.1
    # External rotation turns the anterior surface (+y) laterally (+x).
    assert (Pose(external_rotation_deg=10.0).rotation() @ np.array([0.0, 1.0, 0.0]))[0] > 0.1


def test_a_wider_pose_range_moves_the_same_subjects_further():
    default = SubjectSpec.sample(5, "phantom")
    wide = SubjectSpec.sample(5, "phantom", PoseRange(max_angle_deg=20.0, max_translation_mm=10.0))
    angles = [
        (spec.pose.flexion_deg, spec.pose.abduction_deg, spec.pose.external_rotation_deg) for spec in (default, wide)
    ]
    np.testing.assert_allclose(angles[1], 2.0 * np.array(angles[0]), rtol=1e-12)
    np.testing.assert_allclose(wide.pose.translation_mm, np.array(default.pose.translation_mm) * 10.0 / 3.0, rtol=1e-12)
    # Every other draw is the subject's own, whatever the range.
    assert dataclasses.replace(wide, pose=default.pose) == default


# --- the shape measured back from the label map --------------------------------------------
@pytest.mark.parametrize("seed", [None, 0, 1, 2])
def test_label_map_has_the_requested_head_neck_shaft_angle_and_anteversion(seed):
    s = unposed_subject(seed, "lite")
    measured, p = measure_femur(s), s.parameters
    assert abs(measured["radius"] - p.head_radius_mm) < 1.0
    neck, shaft = measured["neck"], measured["shaft"]
    assert abs(180.0 - angle_deg(neck, shaft) - p.neck_shaft_angle_deg) < 2.0
    # Anteversion: the neck's direction in the plane perpendicular to the shaft, from medial
    # (-x, the canonical pose's stand-in for the condylar axis) towards anterior.
    medial = np.array([-1.0, 0.0, 0.0]) - (-shaft[0]) * shaft
    anterior = np.cross(medial, shaft)
    anteversion = np.degrees(np.arctan2(neck @ anterior, neck @ medial))
    assert abs(anteversion - p.anteversion_deg) < 3.0


def test_landmarks_follow_the_pose():
    s = subject(5, "lite")
    measured, truth = measure_femur(s), s.landmarks
    assert np.linalg.norm(measured["centre"] - truth.head_centre_mm) < 1.0
    assert angle_deg(measured["neck"], truth.neck_axis) < 3.0
    assert angle_deg(measured["shaft"], truth.shaft_axis) < 2.0
    surface = surface_points(s.labels, s.grid)
    for tip in (truth.greater_trochanter_tip_mm, truth.lesser_trochanter_tip_mm):
        assert np.linalg.norm(surface - tip, axis=1).min() < 1.5  # on the bone surface
    # The shaft axis point is on the shaft axis, level with the head centre (femur frame).
    assert abs((truth.shaft_axis_point_mm - truth.head_centre_mm) @ truth.shaft_axis) < 1e-9


# --- tissues and labels --------------------------------------------------------------------
def test_ct_and_labels_are_aligned():
    s = subject(3, "lite")
    labels = s.labels.astype(bool)
    boundary = labels & ~ndimage.binary_erosion(labels)
    ring = ndimage.binary_dilation(labels, iterations=3) & ~ndimage.binary_dilation(labels)
    tissue = s.spec.tissue
    assert np.median(s.ct_hu[boundary]) > 600.0  # the label's surface is cortical bone
    assert np.median(s.ct_hu[ring]) < 150.0  # soft tissue just outside it
    head = (
        np.linalg.norm(to_world(s.grid, np.argwhere(labels).astype(float)) - s.landmarks.head_centre_mm, axis=1)
        < 0.5 * s.landmarks.head_radius_mm
    )
    head_hu = s.ct_hu[labels][head]
    assert tissue.trabecular_hu - 50.0 < np.median(head_hu) < tissue.trabecular_hu + 150.0
    assert s.ct_hu.min() >= min(tissue.fat_hu, tissue.marrow_hu) - 1.0
    assert s.ct_hu.max() <= tissue.cortical_hu + 1.0


def test_labels_contain_the_femur_only():
    s = subject(4, "lite")
    assert set(np.unique(s.labels)) == {0, 1}
    assert ndimage.label(s.labels)[1] == 1  # one femur
    bone, count = ndimage.label(s.ct_hu > 500.0)
    sizes = ndimage.sum(np.ones_like(bone), bone, index=range(1, count + 1))
    labelled = ndimage.sum(s.labels, bone, index=range(1, count + 1)) / sizes
    big = sizes > 100
    assert np.any(big & (labelled > 0.8))  # the femur's cortex
    assert np.any(big & (labelled == 0.0))  # the pelvis: bone, label 0
    assert np.all((labelled[big] > 0.8) | (labelled[big] == 0.0))  # never a mix


# --- grids ---------------------------------------------------------------------------------
def test_grid_presets_share_the_papers_field_of_view():
    paper = GRID_PRESETS["paper"]
    assert paper.shape == (192, 128, 192)
    np.testing.assert_allclose(paper.spacing_mm, [0.664, 0.664, 1.0])
    assert GRID_PRESETS["lite"].shape == (96, 64, 96)
    np.testing.assert_allclose(GRID_PRESETS["lite"].spacing_mm, [1.328, 1.328, 2.0])
    for grid in GRID_PRESETS.values():
        np.testing.assert_allclose(grid.centre_world, 0.0, atol=1e-9)  # world origin: centre
        np.testing.assert_allclose(np.asarray(grid.shape) * grid.spacing_mm, [127.488, 84.992, 192.0])
        assert np.all(np.diag(grid.affine)[:3] > 0)  # RAS+: i right, j anterior, k superior
    with pytest.raises(ValueError, match="paper"):
        grid_preset("huge")


def assert_proximal_femur_inside(s: Subject) -> None:
    """No femur voxel on the top face, none on the side faces from the head down to 30 mm below
    the lesser trochanter; the shaft leaves through the bottom face."""
    labels, grid = s.labels, s.grid
    assert not labels[:, :, -1].any()
    z = to_world(grid, np.c_[np.zeros((labels.shape[2], 2)), np.arange(labels.shape[2])])[:, 2]
    proximal = labels[:, :, z > s.landmarks.lesser_trochanter_tip_mm[2] - 30.0]
    for face in (proximal[0], proximal[-1], proximal[:, 0], proximal[:, -1]):
        assert not face.any()
    assert labels[:, :, 0].any()


@pytest.mark.parametrize("preset", ["tiny", "lite"])
def test_every_preset_contains_the_proximal_femur(preset):
    assert_proximal_femur_inside(make_atlas(preset))
    for seed in range(4):
        assert_proximal_femur_inside(subject(seed, preset))


@pytest.mark.slow
def test_paper_preset_contains_the_proximal_femur():
    for s in (make_atlas("paper"), make_subject(0, "paper")):
        assert s.ct_hu.shape == (192, 128, 192)
        assert_proximal_femur_inside(s)


def test_coarse_presets_are_anti_aliased():
    """tiny voxels are 2x2x2 lite voxels: the tiny CT is the lite CT's block mean (the box
    filter), up to the ramp approximation, and keeps its total attenuation."""
    lite, tiny = subject(1, "lite").ct_hu, subject(1, "tiny").ct_hu
    block_mean = lite.reshape(48, 2, 32, 2, 48, 2).mean(axis=(1, 3, 5))
    assert np.abs(tiny - block_mean).mean() < 20.0
    np.testing.assert_allclose((tiny + 1000.0).sum(), (block_mean + 1000.0).sum(), rtol=1e-3)
    bone_tiny = np.clip(tiny - 100.0, 0, None).sum()
    np.testing.assert_allclose(bone_tiny, np.clip(block_mean - 100.0, 0, None).sum(), rtol=0.02)


def test_atlas_is_the_mean_subject():
    atlas = make_atlas("tiny")
    assert atlas.parameters == FemurParameters.mean()
    assert atlas.pose == Pose() and not atlas.spec.deformed
    assert atlas.ct_hu.tobytes() == make_atlas("tiny").ct_hu.tobytes()
    np.testing.assert_allclose(atlas.landmarks.head_radius_mm, FemurParameters.mean().head_radius_mm)


# --- building blocks against closed forms --------------------------------------------------
def test_partial_volume_matches_the_supersampled_fraction_of_each_voxel():
    """A sphere on anisotropic voxels: each voxel's occupancy against the fraction of 6x6x6
    sub-voxel samples inside (brute-force box filter); binary voxelisation errs by ~0.25."""
    grid = VolumeGrid.from_spacing((16, 16, 12), (2.0, 2.0, 3.0), (0.3, -0.2, 0.1))
    points = grid.voxel_centres_world(torch.float64)
    radius = 11.0
    sdf = narrow_band_sdf(lambda x: x.norm(dim=-1) - radius, grid, 5.0, points.float())
    exact = points.norm(dim=-1) - radius
    near = exact < 5.0
    np.testing.assert_allclose(sdf[near], exact[near].float(), atol=1e-5)  # exact in the band
    fraction = occupancy(sdf, ramp_width(sdf, grid)).double()
    sub = (torch.arange(6, dtype=torch.float64) + 0.5) / 6.0 - 0.5
    offsets = torch.stack(torch.meshgrid(sub, sub, sub, indexing="ij"), -1).reshape(-1, 3)
    offsets = offsets * torch.tensor(grid.spacing_mm)
    truth = ((points[..., None, :] + offsets).norm(dim=-1) < radius).double().mean(dim=-1)
    boundary = (truth > 0) & (truth < 1)
    assert float((fraction - truth)[boundary].abs().mean()) < 0.04
    assert float((fraction - truth).abs().max()) < 0.2
    volume = float(fraction.sum()) * np.prod(grid.spacing_mm)
    np.testing.assert_allclose(volume, 4.0 / 3.0 * np.pi * radius**3, rtol=0.03)


def test_fourier_field_voxel_mean_is_the_box_average():
    field = FourierField(np.random.default_rng(1), 32, (2.0, 8.0))
    edges = np.array([[1.5, 0.0, 0.0], [0.0, 1.5, 0.0], [0.3, 0.0, 2.0]])  # a sheared voxel
    centres = torch.tensor(np.random.default_rng(2).uniform(-50, 50, (20, 3)))
    offsets = torch.tensor(np.random.default_rng(3).uniform(-0.5, 0.5, (20000, 3)) @ edges)
    box_average = torch.stack([field(c + offsets)[:, 0].mean() for c in centres])
    np.testing.assert_allclose(field(centres, edges)[:, 0], box_average, atol=0.02)
    values = field(torch.tensor(np.random.default_rng(4).uniform(-500, 500, (20000, 3))))
    assert 0.7 < float(values.std()) < 1.3  # unit variance by construction


@pytest.mark.parametrize("smoothness", [1.5, 2.5])
def test_a_matern_field_has_matern_s_correlation(smoothness):
    length = 10.0
    field = FourierField.matern(np.random.default_rng(0), 20000, length, smoothness)
    distances = np.array([2.5, 7.5, 12.5, 20.0])
    directions = np.random.default_rng(1).normal(size=(500, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    # The correlation at lag d of a random Fourier field is E[cos(w . d)] over its wavevectors.
    measured = [np.cos(field.wavevectors @ (directions * d).T).mean() for d in distances]
    scaled = np.sqrt(2.0 * smoothness) * distances / length
    polynomial = {1.5: 1.0 + scaled, 2.5: 1.0 + scaled + scaled**2 / 3.0}[smoothness]
    np.testing.assert_allclose(measured, polynomial * np.exp(-scaled), atol=0.02)
    values = field(torch.tensor(np.random.default_rng(4).uniform(-500, 500, (20000, 3))))
    assert 0.95 < float(values.std()) < 1.05  # unit variance, as the plain field


def test_docs_list_every_parameter():
    text = DOCS.read_text()
    for cls in (FemurParameters, PelvisParameters, TissueParameters):
        for name, spec in cls.ranges().items():
            row = re.search(rf"^\|\s*`{name}`\s*\|(.*)$", text, flags=re.MULTILINE)
            assert row, f"docs/data.md has no row for {name}"
            assert f"{spec.low:g}" in row.group(1) and f"{spec.high:g}" in row.group(1), name
