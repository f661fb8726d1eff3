"""Warping by world-mm displacement fields: closed forms on linear images, MONAI, labels, gradients."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from biplanar.geometry.transforms import similarity_matrix
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.layers.velocity import compose_affine_displacement
from biplanar.layers.warp import SpatialTransformer, affine_displacement, warp_labels


def anisotropic_grid(shape=(20, 22, 18)) -> VolumeGrid:
    return VolumeGrid.from_spacing(shape, (0.664, 0.664, 1.0), centre_world=(5.0, -3.0, 10.0))


def rotated_flipped_grid(shape=(20, 22, 18)) -> VolumeGrid:
    """Oblique axes, one flipped (negative determinant), anisotropic spacing."""
    linear = Rotation.from_euler("xyz", [20.0, -35.0, 50.0], degrees=True).as_matrix() @ np.diag([-0.8, 0.9, 1.2])
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = [-7.0, 12.0, 3.0]
    return VolumeGrid(shape, affine)


GRIDS = {"anisotropic": anisotropic_grid, "rotated_flipped": rotated_flipped_grid}

# f(p) = LINEAR_MAP @ p + OFFSET: three channels, exactly reproduced by trilinear interpolation.
LINEAR_MAP = np.array([[0.7, -0.4, 0.2], [0.1, 0.9, -0.6], [-0.5, 0.3, 0.8]])
OFFSET = np.array([3.0, -2.0, 1.0])


def linear_function(points_world: np.ndarray) -> np.ndarray:
    """``(..., 3)`` world mm -> ``(..., 3)`` values of the three channels."""
    return points_world @ LINEAR_MAP.T + OFFSET


def linear_image(grid: VolumeGrid, dtype=torch.float32) -> torch.Tensor:
    """``(1, 3, I, J, K)`` the linear function at the voxel centres."""
    values = linear_function(grid.voxel_centres_world(torch.float64).numpy())
    return torch.as_tensor(values, dtype=dtype).permute(3, 0, 1, 2)[None]  # (I, J, K, 3) -> (1, 3, I, J, K)


def voxel_centres(grid: VolumeGrid) -> np.ndarray:
    return grid.voxel_centres_world(torch.float64).numpy()


def inside(grid: VolumeGrid, points_world: np.ndarray, margin_vox: float = 1e-3) -> np.ndarray:
    """``(...,)`` bool: points whose voxel coordinates lie in the box of voxel centres."""
    inverse = np.linalg.inv(grid.affine)
    points_vox = points_world @ inverse[:3, :3].T + inverse[:3, 3]
    upper = np.asarray(grid.shape) - 1.0
    return np.all((points_vox >= margin_vox) & (points_vox <= upper - margin_vox), axis=-1)


def channels_last(tensor: torch.Tensor) -> np.ndarray:
    """(B, C, I, J, K) -> (B, I, J, K, C) numpy float64."""
    return tensor.movedim(1, -1).double().numpy()


def assert_close_where(actual: np.ndarray, expected: np.ndarray, mask: np.ndarray, atol: float) -> None:
    assert mask.mean() > 0.3, f"too few points to compare: {mask.mean():.2f}"
    error = np.abs(actual - expected)[mask].max()
    assert error < atol, f"max error {error:.3g} >= {atol}"


@pytest.mark.parametrize("grid_name", GRIDS)
def test_constant_translation_of_a_linear_image(grid_name):
    grid = GRIDS[grid_name]()
    translations = np.array([[2.3, -1.7, 0.9], [-1.1, 0.4, 2.6]])
    displacement = torch.as_tensor(translations, dtype=torch.float32)[:, :, None, None, None]
    displacement = displacement.expand(2, 3, *grid.shape)
    warped = SpatialTransformer(grid)(linear_image(grid), displacement)  # batch-shared volume
    moved = voxel_centres(grid)[None] + translations[:, None, None, None, :]
    assert_close_where(channels_last(warped), linear_function(moved), inside(grid, moved), atol=1e-4)


@pytest.mark.parametrize("grid_name", GRIDS)
def test_affine_displacement_warp_equals_f_of_t_p(grid_name):
    grid = GRIDS[grid_name]()
    params = torch.tensor(
        [[math.radians(10.0), math.radians(-15.0), math.radians(25.0), 1.0, 2.0, -1.0, math.log(1.1)]]
    )
    matrix = similarity_matrix(params, torch.as_tensor(grid.centre_world))
    warped = SpatialTransformer(grid)(linear_image(grid), affine_displacement(matrix, grid))
    matrix_np = matrix[0].double().numpy()
    moved = voxel_centres(grid) @ matrix_np[:3, :3].T + matrix_np[:3, 3]
    assert_close_where(channels_last(warped)[0], linear_function(moved), inside(grid, moved), atol=1e-4)


def test_affine_displacement_closed_forms():
    grid = rotated_flipped_grid((4, 5, 6))
    matrix = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    matrix[0, :3, 3] = torch.tensor([1.5, -2.0, 0.25], dtype=torch.float64)
    matrix[1, :3, :3] *= 2.0  # pure scaling about the origin: u(p) = p
    displacement = affine_displacement(matrix, grid)
    assert displacement.shape == (2, 3, 4, 5, 6) and displacement.dtype == torch.float64
    expected_translation = torch.tensor([1.5, -2.0, 0.25], dtype=torch.float64).view(3, 1, 1, 1).expand(3, 4, 5, 6)
    torch.testing.assert_close(displacement[0], expected_translation)
    torch.testing.assert_close(displacement[1], torch.as_tensor(voxel_centres(grid)).permute(3, 0, 1, 2))


def test_zeros_and_border_padding_outside():
    grid = anisotropic_grid((6, 7, 8))
    volume = torch.rand(1, 1, 6, 7, 8, generator=torch.Generator().manual_seed(0))
    far = torch.full((1, 3, 6, 7, 8), 100.0)  # every sample point far beyond the +x, +y, +z corner
    assert torch.all(SpatialTransformer(grid, padding_mode="zeros")(volume, far) == 0.0)
    border = SpatialTransformer(grid, padding_mode="border")(volume, far)
    torch.testing.assert_close(border, volume[..., -1:, -1:, -1:].expand_as(border))


def random_displacement(grid: VolumeGrid, scale_vox: float, seed: int, dtype=torch.float64) -> torch.Tensor:
    """``(1, 3, I, J, K)`` world mm, each voxel an independent vector of about ``scale_vox`` voxels."""
    gen = torch.Generator().manual_seed(seed)
    displacement_vox = scale_vox * (2.0 * torch.rand(1, 3, *grid.shape, generator=gen, dtype=torch.float64) - 1.0)
    linear = torch.as_tensor(grid.affine[:3, :3])
    return torch.einsum("ij,bjxyz->bixyz", linear, displacement_vox).to(dtype)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("grid_name", ["unit", "rotated_flipped"])
def test_matches_monai_warp_in_voxel_units(mode, grid_name):
    from monai.networks.blocks import Warp

    grid = (
        VolumeGrid.from_spacing((9, 10, 11), (1.0, 1.0, 1.0))
        if grid_name == "unit"
        else rotated_flipped_grid((9, 10, 11))
    )
    volume = torch.rand(2, 2, 9, 10, 11, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    displacement_world = torch.cat([random_displacement(grid, 2.5, seed) for seed in (2, 3)])
    # MONAI's field: voxel units along (i, j, k) = inverse linear part of the affine times the world vector.
    to_vox = torch.as_tensor(np.linalg.inv(grid.affine[:3, :3]))
    displacement_vox = torch.einsum("ij,bjxyz->bixyz", to_vox, displacement_world)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns that it uses PyTorch's grid_sample
        expected = Warp(mode=mode, padding_mode="border")(volume, displacement_vox)
    actual = SpatialTransformer(grid, mode=mode, padding_mode="border")(volume, displacement_world)
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=1e-10)


def block_labels(shape, values, seed: int) -> torch.Tensor:
    """``(1, 1, *shape)`` uint8 labels in blocks of 3 voxels, drawn from ``values``."""
    gen = torch.Generator().manual_seed(seed)
    coarse_shape = [math.ceil(n / 3) for n in shape]
    choice = torch.randint(len(values), coarse_shape, generator=gen)
    coarse = torch.as_tensor(values, dtype=torch.uint8)[choice]
    fine = coarse.repeat_interleave(3, 0).repeat_interleave(3, 1).repeat_interleave(3, 2)
    return fine[: shape[0], : shape[1], : shape[2]][None, None]


def test_nearest_label_warping_keeps_the_label_set():
    grid = rotated_flipped_grid()
    values = [0, 3, 7, 200]
    labels = block_labels(grid.shape, values, seed=4)
    params = torch.tensor([[0.1, -0.2, 0.15, 0.7, -0.3, 0.2, 0.05]])
    displacement = affine_displacement(similarity_matrix(params, torch.as_tensor(grid.centre_world)), grid)
    warped = warp_labels(labels, displacement, grid, method="nearest")
    assert warped.dtype == torch.uint8 and warped.shape == labels.shape
    assert set(warped.unique().tolist()) == set(values)


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("method", ["nearest", "onehot"])
@pytest.mark.parametrize("grid_name", GRIDS)
def test_whole_voxel_translation_of_labels_is_a_shift(method, grid_name, padding_mode):
    grid = GRIDS[grid_name]()
    labels = block_labels(grid.shape, [0, 1, 2, 5], seed=5)
    shift_vox = np.array([2, -1, 3])
    translation_world = grid.affine[:3, :3] @ shift_vox
    displacement = torch.as_tensor(translation_world, dtype=torch.float32).view(1, 3, 1, 1, 1).expand(1, 3, *grid.shape)
    warped = warp_labels(labels, displacement, grid, method=method, padding_mode=padding_mode)
    # warped[i, j, k] = labels[i + 2, j - 1, k + 3] where that index is inside; outside, 0 (zeros)
    # or the label of the nearest index inside (border).
    numpy_mode = {"zeros": "constant", "border": "edge"}[padding_mode]
    padded = np.pad(labels[0, 0].numpy(), [(abs(s), abs(s)) for s in shift_vox], mode=numpy_mode)
    starts = [abs(s) + s for s in shift_vox]
    expected = padded[tuple(slice(b, b + n) for b, n in zip(starts, grid.shape))]
    np.testing.assert_array_equal(warped[0, 0].numpy(), expected)


def test_onehot_labels_outside_are_background():
    grid = anisotropic_grid((6, 7, 8))
    labels = torch.full((1, 1, 6, 7, 8), 4, dtype=torch.int64)
    half_voxel_out = torch.zeros(1, 3, 6, 7, 8)
    half_voxel_out[:, 0] = 0.664 * 0.6  # i + 0.6 voxel: the last i-plane samples 0.6 voxel beyond the box
    warped = warp_labels(labels, half_voxel_out, grid, method="onehot")
    assert torch.all(warped[0, 0, :-1] == 4) and torch.all(warped[0, 0, -1] == 0)


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_gradcheck(padding_mode):
    grid = rotated_flipped_grid((4, 5, 6))
    volume = torch.rand(1, 1, 4, 5, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    displacement = random_displacement(grid, 0.8, seed=7)
    transformer = SpatialTransformer(grid, padding_mode=padding_mode)
    assert torch.autograd.gradcheck(transformer, (volume.requires_grad_(), displacement.requires_grad_()))


@pytest.mark.parametrize("grid_name", GRIDS)
def test_warp_through_affine_equals_warping_by_the_composed_field(grid_name):
    grid = GRIDS[grid_name]((6, 7, 5))
    volume = torch.rand(1, 2, 6, 7, 5, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    displacement = random_displacement(grid, 0.8, seed=9)
    # (The sample points stay >= 2e-4 voxel from every voxel plane, where trilinear interpolation has a kink
    # and gradcheck's finite differences would straddle it.)
    matrix = similarity_matrix(
        torch.tensor([[0.1, -0.2, 0.15, 1.3, -0.7, 0.4, 0.05]], dtype=torch.float64),
        torch.as_tensor(grid.centre_world, dtype=torch.float64),
    )
    transformer = SpatialTransformer(grid)
    expected = transformer(volume, compose_affine_displacement(matrix, displacement, grid))
    torch.testing.assert_close(transformer.warp_through_affine(volume, matrix, displacement), expected)
    assert torch.autograd.gradcheck(
        transformer.warp_through_affine,
        (volume.requires_grad_(), matrix.requires_grad_(), displacement.requires_grad_()),
    )
    with pytest.raises(ValueError, match="batch of 1"):
        transformer.warp_through_affine(volume, matrix.detach().expand(2, 4, 4), displacement.detach())


def test_matrices_are_buffers_that_follow_the_module_dtype():
    transformer = SpatialTransformer(anisotropic_grid((4, 5, 6))).to(torch.float32)
    assert transformer.vox_to_grid.dtype == torch.float32
    assert transformer.world_to_grid_linear.shape == (3, 3)


@pytest.mark.parametrize(
    "volume_shape, displacement_shape",
    [
        ((1, 1, 4, 5, 7), (1, 3, 4, 5, 6)),  # volume not on the grid
        ((1, 1, 4, 5, 6), (1, 2, 4, 5, 6)),  # two displacement components
        ((1, 1, 4, 5, 6), (1, 3, 4, 5)),  # displacement not 5-D
        ((2, 1, 4, 5, 6), (3, 3, 4, 5, 6)),  # batch mismatch
    ],
)
def test_bad_shapes_raise(volume_shape, displacement_shape):
    transformer = SpatialTransformer(anisotropic_grid((4, 5, 6)))
    with pytest.raises(ValueError, match="expected"):
        transformer(torch.zeros(volume_shape), torch.zeros(displacement_shape))


def test_bad_arguments_raise():
    grid = anisotropic_grid((4, 5, 6))
    with pytest.raises(ValueError, match="mode"):
        SpatialTransformer(grid, mode="bicubic")
    with pytest.raises(ValueError, match="padding_mode"):
        SpatialTransformer(grid, padding_mode="reflection")
    with pytest.raises(ValueError, match=r"expected shape \(B, 4, 4\)"):
        affine_displacement(torch.eye(4), grid)
    displacement = torch.zeros(1, 3, 4, 5, 6)
    with pytest.raises(ValueError, match="integer dtype"):
        warp_labels(torch.zeros(1, 1, 4, 5, 6), displacement, grid)
    with pytest.raises(ValueError, match=r"expected shape \(B, 1, I, J, K\)"):
        warp_labels(torch.zeros(1, 2, 4, 5, 6, dtype=torch.long), displacement, grid)
    with pytest.raises(ValueError, match="method"):
        warp_labels(torch.zeros(1, 1, 4, 5, 6, dtype=torch.long), displacement, grid, method="linear")
    with pytest.raises(ValueError, match="num_classes"):
        warp_labels(torch.full((1, 1, 4, 5, 6), 3), displacement, grid, method="onehot", num_classes=3)
