"""ProST and inv-ProST against closed forms, real anatomy and gradcheck."""

import numpy as np
import pytest
import torch

from biplanar.data.analytic import ellipsoid_chord_lengths, voxelize_ellipsoid
from biplanar.data.real_ct import REAL_CT
from biplanar.geometry import VolumeGrid, biplanar_pair, rigid_matrix, similarity_matrix
from biplanar.geometry.projection import CarmPose, ProjectionView
from biplanar.io.volumes import read_volume
from biplanar.layers import prost as prost_module
from biplanar.layers.inv_prost import InverseProST
from biplanar.layers.prost import ProST
from biplanar.physics import hu_to_mu

MU = 0.02  # 1/mm
CENTRE = (6.0, -4.0, 10.0)
SEMI_AXES = (35.0, 25.0, 60.0)
GRIDS = {
    "paper": ((192, 128, 192), (0.664, 0.664, 1.0)),
    "coarse": ((96, 64, 96), (1.328, 1.328, 2.0)),
}


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


@pytest.fixture(scope="module", params=list(GRIDS))
def ellipsoid(request):
    shape, spacing = GRIDS[request.param]
    grid = VolumeGrid.from_spacing(shape, spacing)
    volume = (MU * voxelize_ellipsoid(grid, CENTRE, SEMI_AXES)).float()[None, None]
    return grid, volume


@pytest.mark.parametrize("lao_rao", [0.0, 90.0, 30.0])
def test_ellipsoid_drr_is_mu_times_chord(ellipsoid, lao_rao):
    """DRR = mu x analytic chord length at the paper geometry (AP, LAT, 30 deg oblique).

    On both grids, the maximum relative error is <= 1 % over pixels whose chord is >= 5 mm and
    whose ray stays three voxels inside the silhouette. On the paper grid the mean over all pixels
    with a chord >= 5 mm is <= 1 % too (measured 0.35-0.46 %). At the silhouette itself a
    voxelised surface, blurred over a voxel, cannot hold a 5 mm chord to 1 %: on the coarse grid
    (2 mm voxels) that blur alone lifts the mean over all such pixels to about 1.1 % (LAT).
    """
    grid, volume = ellipsoid
    view = biplanar_pair(lao_rao, 90.0)["AP"]
    image = ProST(view, grid, 256)(volume)[0, 0].double()
    chord = ellipsoid_chord_lengths(view, CENTRE, SEMI_AXES)
    margin = 3.0 * float(grid.spacing_mm.max())
    inner_chord = ellipsoid_chord_lengths(view, CENTRE, tuple(a - margin for a in SEMI_AXES))
    relative_error = (image - MU * chord).abs() / (MU * chord)
    long_chords = chord >= 5.0
    assert long_chords.sum() > 3000
    if grid.shape == GRIDS["paper"][0]:
        assert relative_error[long_chords].mean() <= 0.01
    assert relative_error[long_chords & (inner_chord > 0)].max() <= 0.01
    outer_chord = ellipsoid_chord_lengths(view, CENTRE, tuple(a + margin for a in SEMI_AXES))
    assert image[outer_chord == 0].abs().max() == 0.0


def test_posed_volume_projects_like_the_moved_ellipsoid():
    """A volume moved by a pose (rotation about the centre and translation) matches the moved analytic ellipsoid."""
    grid = VolumeGrid.from_spacing(*GRIDS["coarse"])
    volume = (MU * voxelize_ellipsoid(grid, (0.0, 0.0, 0.0), SEMI_AXES)).float()[None, None]
    # A rotation by 180 deg about z keeps the axis-aligned ellipsoid; the translation moves it.
    params = torch.tensor([[0.0, 0.0, np.pi, 8.0, -5.0, 12.0]])
    pose = rigid_matrix(params, torch.zeros(3)).float()
    view = biplanar_pair()["AP"]
    image = ProST(view, grid, 256, margin_mm=20.0)(volume, pose)[0, 0].double()
    chord = ellipsoid_chord_lengths(view, (8.0, -5.0, 12.0), SEMI_AXES)
    long_chords = chord >= 5.0
    assert ((image - MU * chord).abs() / (MU * chord))[long_chords].mean() <= 0.01


def test_beam_sum_is_the_line_integral():
    """Ray sampling's line integral is its beam space summed; beam space is ray samples whatever the algorithm."""
    grid = VolumeGrid.from_spacing((20, 16, 24), (2.0, 2.0, 2.0))
    volume = torch.rand(2, 3, *grid.shape, generator=torch.Generator().manual_seed(0))
    view = biplanar_pair(image_shape=(24, 20), pixel_spacing_mm=(2.0, 2.0))["LAT"]
    prost = ProST(view, grid, 32, algorithm="rays")
    beam = prost(volume, beam=True)
    assert beam.shape == (2, 3, 32, 24, 20)
    torch.testing.assert_close((beam.sum(2) * prost.step_mm), prost(volume))
    torch.testing.assert_close(ProST(view, grid, 32, algorithm="slices")(volume, beam=True), beam)


@pytest.mark.parametrize("algorithm", ["rays", "slices"])
def test_row_chunks_match_one_pass_with_gradients(algorithm):
    """Bounding memory by chunks (with recomputation in backward) changes neither values nor gradients."""
    grid = VolumeGrid.from_spacing((20, 16, 24), (2.0, 2.0, 2.0))
    view = biplanar_pair(image_shape=(24, 20), pixel_spacing_mm=(2.0, 2.0))["AP"]
    volume = torch.rand(1, 1, *grid.shape, generator=torch.Generator().manual_seed(1), requires_grad=True)
    weights = torch.rand(24, 20, generator=torch.Generator().manual_seed(2))
    results = []
    for chunk in (2**30, 32 * 20 * 3):
        image = ProST(view, grid, 32, max_samples_per_chunk=chunk, algorithm=algorithm)(volume)
        (gradient,) = torch.autograd.grad((image[0, 0] * weights).sum(), volume)
        results.append((image, gradient))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_beam_then_inverse_returns_the_volume_inside_the_cone():
    """ProST beam space then inv-ProST: correlation >= 0.99 inside the cone, zero outside it."""
    grid = VolumeGrid.from_spacing((48, 32, 48), (2.656, 2.656, 4.0))
    generator = torch.Generator().manual_seed(3)
    noise = torch.rand(1, 1, 12, 8, 12, generator=generator)
    volume = torch.nn.functional.interpolate(noise, size=grid.shape, mode="trilinear", align_corners=True)
    # A detector that sees only part of the volume: 48 x 20 pixels of 3 mm.
    view = biplanar_pair(image_shape=(48, 20), pixel_spacing_mm=(3.0, 3.0))["AP"]
    beam = ProST(view, grid, 128)(volume, beam=True)
    restored = InverseProST(view, grid)(beam)
    uv, _ = view.project(grid.voxel_centres_world(torch.float64))
    rows, cols = view.image_shape
    inside = (uv[..., 0] > 0.5) & (uv[..., 0] < cols - 1.5) & (uv[..., 1] > 0.5) & (uv[..., 1] < rows - 1.5)
    outside = (uv[..., 0] < -1.0) | (uv[..., 0] > cols) | (uv[..., 1] < -1.0) | (uv[..., 1] > rows)
    assert inside.sum() > 1000 and outside.sum() > 1000
    assert correlation(restored[0, 0][inside], volume[0, 0][inside]) >= 0.99
    assert restored[0, 0][outside].abs().max() == 0.0


def tiny_setup():
    grid = VolumeGrid.from_spacing((4, 5, 6), (3.0, 2.5, 2.0))
    carm = CarmPose(20.0, 5.0, 925.0, 1000.0, (4.0, 4.0), (0.0, 0.0, 0.0))
    view = ProjectionView.from_carm(carm, (4, 3))
    volume = torch.rand(
        1, 2, *grid.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4), requires_grad=True
    )
    return grid, view, volume


@pytest.mark.parametrize("algorithm", ["rays", "slices"])
def test_gradcheck_prost_volume(algorithm):
    grid, view, volume = tiny_setup()
    prost = ProST(view, grid, 8, algorithm=algorithm).double()
    assert torch.autograd.gradcheck(lambda v: prost(v), (volume,))
    assert torch.autograd.gradcheck(lambda v: prost(v, beam=True), (volume,))


@pytest.mark.parametrize("algorithm", ["rays", "slices"])
def test_gradcheck_prost_pose(algorithm):
    grid, view, volume = tiny_setup()
    prost = ProST(view, grid, 8, margin_mm=5.0, algorithm=algorithm).double()
    params = torch.tensor([[0.05, -0.03, 0.1, 0.7, -0.4, 0.3, 0.02]], dtype=torch.float64, requires_grad=True)
    centre = torch.as_tensor(grid.centre_world)
    assert torch.autograd.gradcheck(lambda p: prost(volume.detach(), similarity_matrix(p, centre)), (params,))


@pytest.mark.parametrize("algorithm", ["rays", "slices"])
def test_pose_jacobian_matches_autograd(algorithm):
    """The exact DRR Jacobian (one sampling backward + forward-mode rays) equals autograd's, image included."""
    grid, view, volume = tiny_setup()
    # Rays: 2 row chunks.
    prost = ProST(view, grid, 8, margin_mm=5.0, max_samples_per_chunk=2 * 8 * 3 * 2, algorithm=algorithm).double()
    centre = torch.as_tensor(grid.centre_world)
    params = torch.tensor([[0.05, -0.03, 0.1, 0.7, -0.4, 0.3], [-0.1, 0.2, 0.0, -1.0, 0.5, 2.0]], dtype=torch.float64)
    volumes = volume.detach()[:, :1].expand(2, 1, *grid.shape)

    def project(p):
        return prost(volumes, rigid_matrix(p, centre))

    image, jacobian = prost.project_with_pose_jacobian(volumes, params, lambda p: rigid_matrix(p, centre))
    expected = torch.autograd.functional.jacobian(project, params)  # (2, 1, rows, cols, 2, 6)
    torch.testing.assert_close(image, project(params))
    torch.testing.assert_close(jacobian, torch.stack([expected[b, ..., b, :] for b in range(2)]))
    with pytest.raises(ValueError, match="params"):
        prost.project_with_pose_jacobian(volume.detach(), params[:1], lambda p: rigid_matrix(p, centre))


@pytest.mark.parametrize("algorithm", ["rays", "slices"])
@pytest.mark.parametrize("turn_deg", [4.0, 90.0])
@pytest.mark.parametrize("poses_per_walk", [3, 2])
def test_one_volume_at_many_poses_is_each_pose_alone(algorithm, turn_deg, poses_per_walk, monkeypatch):
    """A volume of batch 1 with N poses gives the N projections one at a time, values and gradients.

    The slice walk walks the rays of as many poses as a chunk holds at once (all 3 here, or 2 then 1),
    one walk per walk axis: a 90 deg turn about z puts one pose's rays onto another axis than the others'.
    """
    monkeypatch.setattr(prost_module, "CHUNK_SAMPLES", poses_per_walk * 2 * 9 * 7 * 12)
    grid = VolumeGrid.from_spacing((10, 12, 8), (2.0, 2.0, 2.5))
    view = biplanar_pair(image_shape=(9, 7), pixel_spacing_mm=(3.0, 3.0))["AP"]
    volume = torch.rand(
        1, 2, *grid.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5), requires_grad=True
    )
    prost = ProST(view, grid, 16, margin_mm=5.0, algorithm=algorithm).double()
    centre = torch.as_tensor(grid.centre_world)
    params = torch.tensor(
        [[0.05, -0.03, 0.1, 0.7, -0.4, 0.3], [-0.1, 0.02, np.radians(turn_deg), -1.0, 0.5, 2.0], [0.0] * 6],
        dtype=torch.float64,
        requires_grad=True,
    )
    weights = torch.rand(3, 2, 9, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    together = prost(volume, rigid_matrix(params, centre))
    alone = torch.cat([prost(volume, rigid_matrix(params[n : n + 1], centre)) for n in range(3)])
    assert together.shape == (3, 2, 9, 7)
    torch.testing.assert_close(together, alone)
    gradients = [torch.autograd.grad((image * weights).sum(), (volume, params)) for image in (together, alone)]
    for first, second in zip(*gradients, strict=True):
        torch.testing.assert_close(first, second)


def test_gradcheck_inverse_prost():
    grid, view, _ = tiny_setup()
    inverse = InverseProST(view, grid).double()
    beam = torch.rand(
        1, 2, 5, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5), requires_grad=True
    )
    assert torch.autograd.gradcheck(inverse, (beam,))


def test_bad_shapes_raise():
    grid, view, volume = tiny_setup()
    prost = ProST(view, grid, 8).double()
    with pytest.raises(ValueError, match=r"expected shape \(B, C, 4, 5, 6\)"):
        prost(volume[:, :, :3])
    with pytest.raises(ValueError, match="pose"):
        prost(volume, torch.eye(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="beam"):
        InverseProST(view, grid)(torch.zeros(1, 2, 3))


@pytest.fixture(scope="module")
def real_ct():
    data, grid = read_volume(REAL_CT)
    return hu_to_mu(torch.from_numpy(data))[None, None], grid


def rotated_about_z(grid: VolumeGrid, angle_deg: float) -> VolumeGrid:
    """The same voxels turned by ``angle_deg`` about +z through the grid's centre (exact: only the affine changes)."""
    centre = torch.as_tensor(grid.centre_world)
    params = torch.tensor([[0.0, 0.0, np.deg2rad(angle_deg), 0.0, 0.0, 0.0]], dtype=torch.float64)
    return VolumeGrid(grid.shape, rigid_matrix(params, centre)[0].numpy() @ grid.affine)


def test_real_ct_rotated_ap_equals_lat(real_ct):
    """Real anatomy: the AP DRR of the CT turned by -90 deg about z equals the LAT DRR of the original.

    LAT is the C-arm turned +90 deg about z; turning the patient -90 deg instead gives the same image.
    """
    volume, grid = real_ct
    views = biplanar_pair(image_shape=(384, 416), pixel_spacing_mm=(1.0, 1.0), isocenter_mm=grid.centre_world)
    lateral = ProST(views["LAT"], grid, 256)(volume)
    turned_grid = rotated_about_z(grid, -90.0)
    frontal_of_turned = ProST(views["AP"], turned_grid, 256)(volume)
    assert correlation(frontal_of_turned, lateral) >= 0.99
    # The same through ProST's pose argument instead of the affine.
    pose = torch.as_tensor(turned_grid.affine @ np.linalg.inv(grid.affine)).float()[None]
    posed = ProST(views["AP"], grid, 256, margin_mm=60.0)(volume, pose)
    assert correlation(posed, lateral) >= 0.99
