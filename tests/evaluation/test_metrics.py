"""Registration metrics against closed forms (balls on anisotropic grids), scipy and scikit-image."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion, distance_transform_edt
from skimage.metrics import structural_similarity

from biplanar.evaluation.metrics import (
    assd_mm,
    dice,
    hd95_mm,
    image_ssim,
    jaccard,
    jaccard_from_dice,
    segmentation_metrics,
)
from biplanar.geometry import VolumeGrid

SPACINGS_MM = [(0.664, 0.664, 1.0), (1.0, 2.0, 0.5)]
RADIUS_MM = 15.0
# An off-grid centre and an oblique offset direction: no lattice symmetry helps the counts.
CENTRE_WORLD = np.array([0.31, -0.17, 0.23])
OFFSET_DIRECTION = np.array([1.0, 2.0, 2.0]) / 3.0


def grid_around(extent_mm: float, spacing_mm) -> VolumeGrid:
    """An axis-aligned grid centred on the origin covering ``[-extent, extent]`` mm plus 3 voxels."""
    shape = tuple(math.ceil(2.0 * extent_mm / s) + 6 for s in spacing_mm)
    return VolumeGrid.from_spacing(shape, spacing_mm)


def ball(grid: VolumeGrid, centre_world, radius_mm: float) -> np.ndarray:
    """``(I, J, K)`` bool: voxels whose centre lies in the ball (no partial volume)."""
    centres = grid.voxel_centres_world(torch.float64).numpy()
    return np.linalg.norm(centres - np.asarray(centre_world), axis=-1) <= radius_mm


def lens_dice(radius_mm: float, distance_mm: float) -> float:
    """Dice of two balls of one radius whose centres are ``distance_mm`` apart (lens volume / ball volume)."""
    lens = math.pi * (4 * radius_mm + distance_mm) * (2 * radius_mm - distance_mm) ** 2 / 12.0
    return lens / (4.0 / 3.0 * math.pi * radius_mm**3)


def voxel_diagonal(spacing_mm) -> float:
    return float(np.linalg.norm(spacing_mm))


# ---------------------------------------------------------------- overlap


@pytest.mark.parametrize("spacing_mm", SPACINGS_MM)
@pytest.mark.parametrize("distance_mm", [6.0, 18.0])
def test_dice_and_jaccard_of_offset_balls_match_the_lens_volume(spacing_mm, distance_mm):
    grid = grid_around(RADIUS_MM + distance_mm / 2 + 1.0, spacing_mm)
    a = ball(grid, CENTRE_WORLD - OFFSET_DIRECTION * distance_mm / 2, RADIUS_MM)
    b = ball(grid, CENTRE_WORLD + OFFSET_DIRECTION * distance_mm / 2, RADIUS_MM)
    expected_dice = lens_dice(RADIUS_MM, distance_mm)
    expected_jaccard = expected_dice / (2.0 - expected_dice)
    # A ball of 15 mm holds >= 14,000 voxel centres on these grids; its voxel-counted volume
    # differs from 4/3 pi r^3 by a lattice-point error well under 1 %, and so do the lens counts.
    assert dice(a, b) == pytest.approx(expected_dice, rel=0.015)
    assert jaccard(a, b) == pytest.approx(expected_jaccard, rel=0.02)
    # Counted directly, independent of MONAI.
    assert dice(a, b) == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()), abs=1e-6)
    assert jaccard(a, b) == pytest.approx((a & b).sum() / (a | b).sum(), abs=1e-6)


def test_jaccard_dice_identity():
    for d in np.linspace(0.0, 1.0, 11):
        j = jaccard_from_dice(d)
        assert j == pytest.approx(d / (2 - d))
        assert 2 * j / (1 + j) == pytest.approx(d)  # the inverse identity D = 2J / (1 + J)


def test_numpy_and_torch_inputs_agree():
    grid = grid_around(12.0, SPACINGS_MM[1])
    a, b = ball(grid, CENTRE_WORLD, 8.0), ball(grid, CENTRE_WORLD + 2.0, 9.0)
    from_numpy = segmentation_metrics(a, b, grid.spacing_mm)
    from_torch = segmentation_metrics(torch.from_numpy(a).to(torch.uint8), torch.from_numpy(b), grid.spacing_mm)
    assert from_numpy == pytest.approx(from_torch)


# ---------------------------------------------------------------- surface distances


@pytest.mark.parametrize("spacing_mm", SPACINGS_MM)
def test_concentric_balls_are_the_radius_difference_apart_in_mm(spacing_mm):
    inner_mm, outer_mm = 10.0, 15.0
    grid = grid_around(outer_mm, spacing_mm)
    inner, outer = ball(grid, CENTRE_WORLD, inner_mm), ball(grid, CENTRE_WORLD, outer_mm)
    gap_mm = outer_mm - inner_mm
    # Boundary voxels lie up to one voxel step inside each sphere and, seen from the other surface,
    # the nearest one may sit off the radial line, so each distance is the gap to within about one
    # voxel diagonal (1.37 / 2.29 mm). Measured errors: ASSD -0.19 / -0.31 mm, HD95 +0.19 / +1.0 mm.
    tolerance_mm = voxel_diagonal(grid.spacing_mm)
    assert assd_mm(inner, outer, grid.spacing_mm) == pytest.approx(gap_mm, abs=tolerance_mm)
    assert hd95_mm(inner, outer, grid.spacing_mm) == pytest.approx(gap_mm, abs=tolerance_mm)
    # The test has power: treating voxel indices as mm (HD95 7.55 / 8.06 mm), or the spacing as
    # (k, j, i) (6.86 / 8.08 mm), misses the gap by more than the tolerance.
    assert abs(hd95_mm(inner, outer, (1.0, 1.0, 1.0)) - gap_mm) > tolerance_mm
    assert abs(hd95_mm(inner, outer, grid.spacing_mm[::-1]) - gap_mm) > tolerance_mm


def edt_surface_metrics(a: np.ndarray, b: np.ndarray, spacing_mm) -> tuple[float, float]:
    """ASSD and HD95 in mm from scipy: surface = mask minus its 6-connected erosion, EDT with sampling."""
    surfaces = [mask & ~binary_erosion(mask) for mask in (a, b)]
    directed = [distance_transform_edt(~other, sampling=spacing_mm)[own] for own, other in (surfaces, surfaces[::-1])]
    assd = float(np.concatenate(directed).mean())
    hd95 = max(float(np.percentile(d, 95)) for d in directed)
    return assd, hd95


@pytest.mark.parametrize("spacing_mm", SPACINGS_MM)
def test_surface_distances_match_an_independent_scipy_edt(spacing_mm):
    grid = grid_around(14.0, spacing_mm)
    a = ball(grid, CENTRE_WORLD, 11.0)
    b = ball(grid, CENTRE_WORLD + np.array([2.5, -1.5, 3.0]), 9.0) | ball(grid, CENTRE_WORLD - 6.0, 4.0)
    expected_assd, expected_hd95 = edt_surface_metrics(a, b, grid.spacing_mm)
    assert assd_mm(a, b, grid.spacing_mm) == pytest.approx(expected_assd, rel=1e-5)
    assert hd95_mm(a, b, grid.spacing_mm) == pytest.approx(expected_hd95, rel=1e-5)


def test_identical_masks():
    grid = grid_around(10.0, SPACINGS_MM[0])
    a = ball(grid, CENTRE_WORLD, 7.0)
    assert segmentation_metrics(a, a, grid.spacing_mm) == {"dice": 1.0, "jaccard": 1.0, "assd_mm": 0.0, "hd95_mm": 0.0}


def test_empty_masks_give_the_documented_values():
    grid = grid_around(10.0, SPACINGS_MM[0])
    a = ball(grid, CENTRE_WORLD, 7.0)
    empty = np.zeros_like(a)
    for predicted, truth in [(empty, a), (a, empty)]:
        assert segmentation_metrics(predicted, truth, grid.spacing_mm) == {
            "dice": 0.0,
            "jaccard": 0.0,
            "assd_mm": math.inf,
            "hd95_mm": math.inf,
        }
    both = segmentation_metrics(empty, empty, grid.spacing_mm)
    assert (both["dice"], both["jaccard"]) == (1.0, 1.0)
    assert math.isnan(both["assd_mm"]) and math.isnan(both["hd95_mm"])


def test_bad_inputs_raise():
    a = np.zeros((12, 12, 12), dtype=bool)
    with pytest.raises(ValueError, match=r"same shape"):
        dice(a, np.zeros((12, 12, 11), dtype=bool))
    with pytest.raises(ValueError, match=r"\(I, J, K\)"):
        dice(a[0], a[0])
    with pytest.raises(ValueError, match=r"binary"):
        dice(a.astype(np.uint8) + 2, a)
    with pytest.raises(ValueError, match=r"spacing_mm"):
        assd_mm(a, a, (1.0, 1.0))
    with pytest.raises(ValueError, match=r"spacing_mm"):
        hd95_mm(a, a, (1.0, 0.0, 1.0))


# ---------------------------------------------------------------- SSIM


def smooth_volume(shape=(24, 22, 20)) -> np.ndarray:
    """A smooth deterministic volume in [0, 1]."""
    i, j, k = np.meshgrid(*(np.linspace(0.0, 1.0, n) for n in shape), indexing="ij")
    return 0.5 + 0.5 * np.sin(4 * i) * np.cos(3 * j + 2 * k)


def test_ssim_is_one_for_identical_volumes_and_decreases_with_noise():
    clean = smooth_volume()
    noise = np.random.default_rng(0).standard_normal(clean.shape)
    assert image_ssim(clean, torch.from_numpy(clean), data_range=1.0) == pytest.approx(1.0, abs=1e-6)
    scores = [image_ssim(clean + sigma * noise, clean, data_range=1.0) for sigma in (0.02, 0.05, 0.1, 0.2)]
    assert all(earlier > later for earlier, later in itertools.pairwise(scores))
    assert scores[-1] < 0.9


def test_ssim_matches_scikit_image():
    clean = smooth_volume()
    noisy = clean + 0.1 * np.random.default_rng(1).standard_normal(clean.shape)
    # Same window (Gaussian sigma 1.5, 11 taps: truncate 3.5), population covariances, valid region.
    expected = structural_similarity(
        noisy, clean, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert image_ssim(noisy, clean, data_range=1.0) == pytest.approx(expected, abs=1e-4)


def test_ssim_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"same shape|one shape"):
        image_ssim(np.zeros((12, 12, 12)), np.zeros((12, 12, 13)), data_range=1.0)
    with pytest.raises(ValueError, match=r">= 11"):
        image_ssim(np.zeros((12, 12, 8)), np.zeros((12, 12, 8)), data_range=1.0)
    with pytest.raises(ValueError, match=r"data_range"):
        image_ssim(np.zeros((12, 12, 12)), np.zeros((12, 12, 12)), data_range=0.0)


# ---------------------------------------------------------------- offset balls: surface distances


@pytest.mark.parametrize("spacing_mm", SPACINGS_MM)
@pytest.mark.parametrize("distance_mm", [6.0, 12.0])
def test_surface_distances_of_offset_balls_match_the_closed_form(spacing_mm, distance_mm):
    """Two spheres of radius R whose centres are d <= R apart: directed surface distances are uniform on [0, d].

    A point of sphere A at angle t from the centre line is s = sqrt(R^2 + d^2 - 2 R d cos t) from
    B's centre, so |s - R| from B's surface. Area-uniform points have cos t uniform on [-1, 1], so
    s has density s / (2 R d) on [R - d, R + d], x = s - R has density (R + x) / (2 R d) on
    [-d, d], and |x| has density ((R + y) + (R - y)) / (2 R d) = 1 / d on [0, d]. Both directions
    alike: ASSD = d / 2 and HD95 = 0.95 d.
    """
    grid = grid_around(RADIUS_MM + distance_mm / 2 + 1.0, spacing_mm)
    a = ball(grid, CENTRE_WORLD - OFFSET_DIRECTION * distance_mm / 2, RADIUS_MM)
    b = ball(grid, CENTRE_WORLD + OFFSET_DIRECTION * distance_mm / 2, RADIUS_MM)
    # Boundary voxels lie up to one voxel step inside each sphere, nearly alike for both balls, so the
    # distances between them keep the closed form to within half the largest voxel step (measured
    # errors, d = 6 / 12 mm: ASSD -0.07 / -0.10 and -0.20 / -0.19 mm, HD95 -0.16 / -0.22 and
    # -0.32 / -0.40 mm at the two spacings; the tolerances are 0.5 and 1.0 mm, the gaps to
    # distinguish (d / 2 vs 0.95 d) 2.7 and 5.4 mm).
    tolerance_mm = 0.5 * max(spacing_mm)
    assert assd_mm(a, b, grid.spacing_mm) == pytest.approx(distance_mm / 2, abs=tolerance_mm)
    assert hd95_mm(a, b, grid.spacing_mm) == pytest.approx(0.95 * distance_mm, abs=tolerance_mm)
    assert assd_mm(a, b, grid.spacing_mm) == pytest.approx(assd_mm(b, a, grid.spacing_mm), rel=1e-6)


# ---------------------------------------------------------------- point-to-surface distances


def test_point_surface_distances_match_a_brute_force_search_and_the_sphere():
    import trimesh
    from trimesh.triangles import closest_point

    from biplanar.evaluation.metrics import point_surface_distances_mm

    radius = 10.0
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=radius)
    mesh.apply_translation(CENTRE_WORLD)
    rng = np.random.default_rng(2)
    directions = rng.standard_normal((200, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    radii = rng.uniform(2.0, 18.0, size=(200, 1))
    points = CENTRE_WORLD + radii * directions
    distances = point_surface_distances_mm(points, mesh)
    # Brute force: every point against every face.
    repeated = np.repeat(points, len(mesh.faces), axis=0)
    triangles = np.tile(mesh.triangles, (len(points), 1, 1))
    brute = np.linalg.norm(closest_point(triangles, repeated) - repeated, axis=1).reshape(len(points), -1).min(axis=1)
    np.testing.assert_allclose(distances, brute, rtol=1e-9, atol=1e-9)
    # The polyhedron lies between its inscribed sphere (face planes) and the sphere (its vertices).
    inradius = float(np.min(np.abs(np.einsum("ij,ij->i", mesh.face_normals, mesh.triangles[:, 0] - CENTRE_WORLD))))
    np.testing.assert_allclose(distances, np.abs(radii[:, 0] - radius), atol=radius - inradius + 1e-9)
    assert point_surface_distances_mm(mesh.vertices, mesh) == pytest.approx(np.zeros(len(mesh.vertices)), abs=1e-9)


def test_point_surface_distances_bad_inputs_raise():
    import trimesh

    from biplanar.evaluation.metrics import point_surface_distances_mm

    mesh = trimesh.creation.icosphere(subdivisions=1)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        point_surface_distances_mm(np.zeros((4, 2)), mesh)
    with pytest.raises(ValueError, match="at least one face"):
        point_surface_distances_mm(np.zeros((4, 3)), trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), int)))
