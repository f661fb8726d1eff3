"""Scaling and squaring of velocity fields, and composition with an affine pull."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.linalg import expm
from scipy.ndimage import binary_erosion, gaussian_filter
from scipy.spatial.transform import Rotation

from biplanar.geometry.transforms import similarity_matrix
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.layers.velocity import VelocityIntegrator, compose_affine_displacement
from biplanar.layers.warp import SpatialTransformer, affine_displacement


def rotated_grid(shape=(24, 26, 22)) -> VolumeGrid:
    """Oblique, anisotropic, one axis flipped."""
    linear = Rotation.from_euler("zyx", [30.0, 15.0, -20.0], degrees=True).as_matrix() @ np.diag([0.9, -0.664, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = [4.0, -6.0, 20.0]
    return VolumeGrid(shape, affine)


def to_vox(grid: VolumeGrid, vectors_world: torch.Tensor) -> torch.Tensor:
    """``(B, 3, I, J, K)`` world mm vectors -> voxel-unit vectors along (i, j, k)."""
    inverse = torch.as_tensor(np.linalg.inv(grid.affine[:3, :3]), dtype=vectors_world.dtype)
    return torch.einsum("ij,bjxyz->bixyz", inverse, vectors_world)


def interior(grid: VolumeGrid, margin_vox: int) -> np.ndarray:
    """``(I, J, K)`` bool, voxels at least ``margin_vox`` from every face."""
    mask = np.zeros(grid.shape, dtype=bool)
    mask[tuple(slice(margin_vox, n - margin_vox) for n in grid.shape)] = True
    return mask


def smooth_velocity(grid: VolumeGrid, max_vox: float, seed: int, dtype=torch.float32) -> torch.Tensor:
    """``(1, 3, I, J, K)`` world mm: Gaussian-smoothed noise, largest voxel-unit component ``max_vox``."""
    noise = np.random.default_rng(seed).standard_normal((3, *grid.shape))
    field_vox = np.stack([gaussian_filter(channel, sigma=3.0, mode="nearest") for channel in noise])
    field_vox *= max_vox / np.abs(field_vox).max()
    field_world = np.einsum("ij,jxyz->ixyz", grid.affine[:3, :3], field_vox)
    return torch.as_tensor(field_world, dtype=dtype)[None]


def compose(outer: torch.Tensor, inner: torch.Tensor, grid: VolumeGrid) -> torch.Tensor:
    """Displacement of ``(id + outer) o (id + inner)``: ``inner(p) + outer(p + inner(p))``."""
    return inner + SpatialTransformer(grid, padding_mode="border")(outer, inner)


def test_constant_velocity_integrates_to_its_translation():
    grid = rotated_grid()
    translation = torch.tensor([3.7, -2.2, 5.1])
    velocity = translation.view(1, 3, 1, 1, 1).expand(1, 3, *grid.shape).contiguous()
    displacement = VelocityIntegrator(grid)(velocity)
    assert displacement.shape == velocity.shape
    torch.testing.assert_close(displacement, velocity, rtol=0.0, atol=1e-5)


def test_linear_velocity_matches_the_matrix_exponential():
    """v(p) = L (p - c) is exactly interpolated, so u = ((I + L / 2**n)**(2**n) - I)(p - c) in the interior."""
    grid = rotated_grid()
    steps = 7
    centre = grid.centre_world
    generator = np.array([[0.0, -0.12, 0.05], [0.12, 0.0, -0.08], [-0.05, 0.08, 0.02]])
    points = grid.voxel_centres_world(torch.float64).numpy() - centre
    velocity = torch.as_tensor(points @ generator.T).permute(3, 0, 1, 2)[None]  # (I, J, K, 3) -> (1, 3, I, J, K)
    displacement = VelocityIntegrator(grid, steps=steps)(velocity)[0].permute(1, 2, 3, 0).numpy()
    discrete = np.linalg.matrix_power(np.eye(3) + generator / 2**steps, 2**steps) - np.eye(3)
    mask = interior(grid, margin_vox=6)
    np.testing.assert_allclose(displacement[mask], (points @ discrete.T)[mask], rtol=0.0, atol=1e-9)
    continuous = points @ (expm(generator) - np.eye(3)).T
    assert np.abs(displacement[mask] - continuous[mask]).max() < 2e-3  # O(|L|^2 / 2**steps) |p|


def test_exp_v_composed_with_exp_minus_v_is_identity():
    grid = rotated_grid()
    velocity = smooth_velocity(grid, max_vox=3.0, seed=0)
    integrator = VelocityIntegrator(grid)
    forward, backward = integrator(velocity), integrator(-velocity)
    assert to_vox(grid, forward).abs().max() > 2.0  # a real deformation, a few voxels
    mask = interior(grid, margin_vox=4)
    for residual in (compose(forward, backward, grid), compose(backward, forward, grid)):
        error_vox = to_vox(grid, residual)[0].norm(dim=0).numpy()[mask]
        assert error_vox.mean() < 0.1 and error_vox.max() < 0.1, (error_vox.mean(), error_vox.max())


def test_matches_monai_dvf2ddf_on_a_unit_grid():
    from monai.networks.blocks import DVF2DDF

    grid = VolumeGrid.from_spacing((16, 18, 14), (1.0, 1.0, 1.0))
    velocity = smooth_velocity(grid, max_vox=3.0, seed=1, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns that it uses PyTorch's grid_sample
        expected = DVF2DDF(num_steps=7, mode="bilinear", padding_mode="border")(velocity)
    torch.testing.assert_close(VelocityIntegrator(grid)(velocity), expected, rtol=0.0, atol=1e-10)


def test_compose_affine_displacement_equals_warping_by_t_then_phi():
    grid = rotated_grid()
    params = torch.tensor([[math.radians(8.0), math.radians(-5.0), math.radians(12.0), 1.0, -0.5, 0.8, math.log(1.05)]])
    matrix = similarity_matrix(params, torch.as_tensor(grid.centre_world))
    displacement = VelocityIntegrator(grid)(smooth_velocity(grid, max_vox=2.0, seed=2))
    # Three linear images (channels = world x, y, z): trilinear interpolation reproduces them exactly.
    coordinates = grid.voxel_centres_world(torch.float32).permute(3, 0, 1, 2)[None]  # (1, 3, I, J, K)
    transformer = SpatialTransformer(grid)
    total = transformer(coordinates, compose_affine_displacement(matrix, displacement, grid))
    in_turn = transformer(transformer(coordinates, affine_displacement(matrix, grid)), displacement)
    # Valid: T q inside the box for every voxel q that trilinear sampling at p + u(p) may touch.
    matrix_np = matrix[0].double().numpy()
    moved_vox = (
        grid.voxel_centres_world(torch.float64).numpy() @ matrix_np[:3, :3].T + matrix_np[:3, 3] - grid.affine[:3, 3]
    ) @ np.linalg.inv(grid.affine[:3, :3]).T
    t_inside = np.all((moved_vox >= 0.0) & (moved_vox <= np.asarray(grid.shape) - 1.0), axis=-1)
    reach_vox = math.ceil(to_vox(grid, displacement).abs().max()) + 1
    mask = binary_erosion(t_inside, iterations=reach_vox, border_value=0)
    assert mask.mean() > 0.2, mask.mean()
    error_mm = (total - in_turn)[0].norm(dim=0).numpy()[mask]
    assert error_mm.max() < 1e-4, error_mm.max()


def test_compose_affine_displacement_closed_forms():
    grid = rotated_grid((4, 5, 6))
    gen = torch.Generator().manual_seed(3)
    displacement = torch.randn(2, 3, 4, 5, 6, generator=gen, dtype=torch.float64)
    identity = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    torch.testing.assert_close(compose_affine_displacement(identity, displacement, grid), displacement)
    params = torch.randn(2, 7, generator=gen, dtype=torch.float64)
    matrix = similarity_matrix(params, torch.as_tensor(grid.centre_world))
    torch.testing.assert_close(
        compose_affine_displacement(matrix, torch.zeros_like(displacement), grid), affine_displacement(matrix, grid)
    )


def test_gradcheck():
    grid = rotated_grid((3, 4, 5))
    velocity = torch.rand(1, 3, 3, 4, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64) - 0.5
    assert torch.autograd.gradcheck(VelocityIntegrator(grid, steps=4), (velocity.requires_grad_(),))


def test_bad_arguments_raise():
    grid = rotated_grid((4, 5, 6))
    with pytest.raises(ValueError, match="steps"):
        VelocityIntegrator(grid, steps=0)
    with pytest.raises(ValueError, match=r"velocity: expected shape \(B, 3, 4, 5, 6\)"):
        VelocityIntegrator(grid)(torch.zeros(1, 3, 4, 5, 7))
    with pytest.raises(ValueError, match=r"expected shape \(B, 4, 4\)"):
        compose_affine_displacement(torch.eye(4), torch.zeros(1, 3, 4, 5, 6), grid)
    with pytest.raises(ValueError, match="batch"):
        compose_affine_displacement(torch.eye(4).repeat(2, 1, 1), torch.zeros(3, 3, 4, 5, 6), grid)
    with pytest.raises(ValueError, match="expected shape"):
        compose_affine_displacement(torch.eye(4)[None], torch.zeros(1, 2, 4, 5, 6), grid)
