"""Warping volumes and label maps by dense displacement fields in world millimetres.

Convention (``docs/contract.md`` section 6): a displacement field ``u`` of shape
``(B, 3, I, J, K)`` holds, at each voxel centre ``p`` of a :class:`VolumeGrid`, a vector in mm
with world (RAS+) components ``(x, y, z)``, and warping *pulls*::

    warped(p) = volume(p + u(p))

A 4x4 world-to-world matrix ``T`` is used the same way (``warped(p) = volume(T p)``), so its
displacement is ``u(p) = T p - p`` (:func:`affine_displacement`).

Implementation choice: a small :func:`torch.nn.functional.grid_sample` layer rather than MONAI's
``Warp``. MONAI's layer works in voxel units along the array axes, so an anisotropic or rotated
grid would need a world-to-voxel conversion anyway; it also warns on every construction and caches
its reference grid as a plain attribute (not moved by ``.to(device)``). Here the single
conversion ``VolumeGrid.world_to_grid_matrix()`` (``align_corners=True``) maps both the voxel
centres and the world displacement to grid_sample coordinates; the layer holds only two small
float64 matrices, and it agrees with MONAI's ``Warp`` on voxel-unit fields (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biplanar.geometry.transforms import check_matrix
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.layers.sampling import grid_sample_3d

INTERPOLATION_MODES = ("bilinear", "nearest")
PADDING_MODES = ("zeros", "border")
LABEL_METHODS = ("nearest", "onehot")


def check_displacement(displacement: Tensor, grid: VolumeGrid, name: str = "displacement") -> None:
    """Raise ``ValueError`` unless ``displacement`` is ``(B, 3, I, J, K)`` on ``grid``."""
    if displacement.dim() != 5 or tuple(displacement.shape[1:]) != (3, *grid.shape):
        raise ValueError(
            f"{name}: expected shape (B, 3, {', '.join(map(str, grid.shape))}), got {tuple(displacement.shape)}"
        )


def affine_displacement(matrix: Tensor, grid: VolumeGrid) -> Tensor:
    """Displacement field of a pull matrix: ``u(p) = matrix @ p - p`` at the voxel centres of ``grid``.

    Args:
        matrix: ``(B, 4, 4)`` world mm -> world mm, used as ``warped(p) = volume(matrix @ p)``.
        grid: the voxel grid on which the field is sampled.

    Returns:
        ``(B, 3, I, J, K)`` displacement in mm, world components ``(x, y, z)``.
    """
    check_matrix(matrix)
    vox_to_world = torch.as_tensor(grid.affine, dtype=matrix.dtype, device=matrix.device)
    identity = torch.eye(4, dtype=matrix.dtype, device=matrix.device)
    # At p = vox_to_world (i, j, k, 1), u(p) = (matrix - I) p is affine in the voxel index:
    # per_index[:, :3, 3] + i per_index[:, :3, 0] + j per_index[:, :3, 1] + k per_index[:, :3, 2].
    per_index = (matrix - identity) @ vox_to_world  # (B, 4, 4)
    return _affine_in_index(per_index[:, :3], grid.shape).movedim(-1, 1)


def _affine_in_index(coefficients: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """``(B, I, J, K, 3)``: ``coefficients @ (i, j, k, 1)`` at every voxel index, built by broadcasting
    (no index grid, no catastrophic cancellation); ``coefficients`` ``(B, 3, 4)``."""
    terms = coefficients.transpose(1, 2)  # (B, 4, 3): the i, j, k and constant terms
    i, j, k = (torch.arange(n, dtype=terms.dtype, device=terms.device) for n in shape)
    return (
        terms[:, None, None, None, 3]
        + i[None, :, None, None, None] * terms[:, None, None, None, 0]
        + j[None, None, :, None, None] * terms[:, None, None, None, 1]
        + k[None, None, None, :, None] * terms[:, None, None, None, 2]
    )


def _linear_channels_last(field: Tensor, linear: Tensor) -> Tensor:
    """``(B, I, J, K, 3)``: the ``(3, 3)`` ``linear`` map applied to every vector of the ``(B, 3, I, J, K)``
    ``field``, as one ``(3, 3) @ (3, IJK)`` product per batch element (the same values as
    ``field.movedim(1, -1) @ linear.T``; no end-to-end speed difference measured, docs/benchmarks.md)."""
    return (linear @ field.flatten(2)).unflatten(2, field.shape[2:]).movedim(1, -1)


class SpatialTransformer(nn.Module):
    """Pulls a volume on ``grid`` through a world-mm displacement field on the same grid.

    Args:
        grid: the voxel grid of both the volume and the displacement (any affine: anisotropic,
            rotated, flipped).
        mode: ``"bilinear"`` (trilinear, differentiable) or ``"nearest"``.
        padding_mode: value outside the volume's box of voxel centres: ``"zeros"`` or
            ``"border"`` (the nearest border voxel).
    """

    vox_to_grid: Tensor  # buffers, registered in __init__
    world_to_grid_linear: Tensor

    def __init__(self, grid: VolumeGrid, mode: str = "bilinear", padding_mode: str = "zeros") -> None:
        super().__init__()
        if mode not in INTERPOLATION_MODES:
            raise ValueError(f"mode: expected one of {INTERPOLATION_MODES}, got {mode!r}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode: expected one of {PADDING_MODES}, got {padding_mode!r}")
        self.grid, self.mode, self.padding_mode = grid, mode, padding_mode
        world_to_grid = grid.world_to_grid_matrix()
        # Voxel indices (i, j, k) straight to grid_sample coordinates (k, j, i) in [-1, 1].
        self.register_buffer("vox_to_grid", torch.tensor(world_to_grid @ grid.affine))
        # World mm vectors to grid_sample coordinate vectors (no translation).
        self.register_buffer("world_to_grid_linear", torch.tensor(world_to_grid[:3, :3]))

    def forward(self, volume: Tensor, displacement: Tensor) -> Tensor:
        """Warp ``volume`` by ``displacement``: ``warped(p) = volume(p + displacement(p))``.

        Args:
            volume: ``(B, C, I, J, K)`` (or ``(1, C, I, J, K)``, shared by the batch) on ``grid``,
                same dtype as ``displacement``.
            displacement: ``(B, 3, I, J, K)`` mm, world components ``(x, y, z)``, on ``grid``.

        Returns:
            ``(B, C, I, J, K)`` warped volume on ``grid``.
        """
        self.grid.check_volume(volume)
        check_displacement(displacement, self.grid)
        batch = displacement.shape[0]
        if volume.shape[0] not in (1, batch):
            raise ValueError(f"volume: expected batch 1 or {batch} (the displacement's), got {tuple(volume.shape)}")
        sample_grid = self._sample_grid(displacement)
        volume = volume.expand(batch, *volume.shape[1:])  # a stride-0 view when the batch is shared
        return grid_sample_3d(volume, sample_grid, self.mode, self.padding_mode, align_corners=True)

    def warp_through_affine(self, volume: Tensor, matrix: Tensor, displacement: Tensor) -> Tensor:
        """``volume o Psi`` with ``Psi(p) = matrix (p + displacement(p))``: the same as
        ``self(volume, compose_affine_displacement(matrix, displacement, grid))``
        (:func:`~biplanar.layers.velocity.compose_affine_displacement`), without building ``Psi``'s
        displacement: the sample points are one affine map of the voxel index plus one 3 x 3 map of
        ``displacement``.

        Args:
            volume: ``(1, C, I, J, K)`` on ``grid``, same dtype as ``displacement``.
            matrix: ``(1, 4, 4)`` world mm -> world mm pull matrix ``T``.
            displacement: ``(1, 3, I, J, K)`` mm, world components, the field ``u`` of ``phi`` on ``grid``.

        Returns:
            ``(1, C, I, J, K)`` warped volume on ``grid``.
        """
        self.grid.check_volume(volume)
        check_displacement(displacement, self.grid)
        check_matrix(matrix)
        if matrix.shape[0] != 1 or displacement.shape[0] != 1 or volume.shape[0] != 1:
            raise ValueError(
                f"expected a batch of 1, got volume {tuple(volume.shape)}, matrix {tuple(matrix.shape)}, "
                f"displacement {tuple(displacement.shape)}"
            )
        world_to_grid = torch.as_tensor(self.grid.world_to_grid_matrix(), dtype=matrix.dtype, device=matrix.device)
        vox_to_world = torch.as_tensor(self.grid.affine, dtype=matrix.dtype, device=matrix.device)
        # grid_sample coordinates of T p at voxel index (i, j, k), and of T's linear part applied to u.
        index_to_grid = (world_to_grid @ matrix @ vox_to_world)[:, :3]  # (1, 3, 4)
        displacement_to_grid = world_to_grid[:3, :3] @ matrix[0, :3, :3]  # (3, 3)
        sample_grid = _affine_in_index(index_to_grid, self.grid.shape) + _linear_channels_last(
            displacement, displacement_to_grid
        )  # (1, I, J, K, 3)
        return grid_sample_3d(volume, sample_grid, self.mode, self.padding_mode, align_corners=True)

    def identity_grid(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """``(I, J, K, 3)`` grid_sample coordinates of the voxel centres themselves."""
        return _affine_in_index(self.vox_to_grid[None, :3].to(dtype=dtype, device=device), self.grid.shape)[0]

    def to_grid_units(self, displacement: Tensor) -> Tensor:
        """``(B, 3, I, J, K)`` world mm -> ``(B, I, J, K, 3)`` grid_sample coordinate offsets."""
        return _linear_channels_last(displacement, self.world_to_grid_linear.to(displacement.dtype))

    def to_world_mm(self, offsets: Tensor) -> Tensor:
        """The inverse of :meth:`to_grid_units`: ``(B, I, J, K, 3)`` -> ``(B, 3, I, J, K)`` world mm."""
        grid_to_world_linear = torch.linalg.inv(self.world_to_grid_linear).to(offsets.dtype)
        return (offsets @ grid_to_world_linear.T).movedim(-1, 1)

    def _sample_grid(self, displacement: Tensor) -> Tensor:
        """``(B, I, J, K, 3)`` grid_sample coordinates of ``p + displacement(p)`` at every voxel centre."""
        return self.identity_grid(displacement.dtype, displacement.device) + self.to_grid_units(displacement)


def warp_labels(
    labels: Tensor,
    displacement: Tensor,
    grid: VolumeGrid,
    method: str = "nearest",
    num_classes: int | None = None,
    padding_mode: str = "zeros",
) -> Tensor:
    """Warp an integer label map by a displacement field.

    Args:
        labels: ``(B, 1, I, J, K)`` (or ``(1, 1, I, J, K)``) integer labels on ``grid``.
        displacement: ``(B, 3, I, J, K)`` mm, world components, on ``grid`` (pull convention).
        grid: the voxel grid of both.
        method: ``"nearest"`` (nearest-neighbour sampling) or ``"onehot"`` (each label's one-hot
            channel warped trilinearly, then the arg-max: smoother boundaries).
        num_classes: ``"onehot"`` only: labels lie in ``[0, num_classes)``; default
            ``labels.max() + 1``.
        padding_mode: the label outside the volume's box of voxel centres: ``"zeros"`` (label 0)
            or ``"border"`` (the nearest border voxel's: a structure cut by a face of the grid
            continues through it).

    Returns:
        ``(B, 1, I, J, K)`` warped labels, dtype of ``labels``.
    """
    if labels.dim() != 5 or labels.shape[1] != 1:
        raise ValueError(f"labels: expected shape (B, 1, I, J, K), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels: expected an integer dtype, got {labels.dtype}")
    if method not in LABEL_METHODS:
        raise ValueError(f"method: expected one of {LABEL_METHODS}, got {method!r}")
    if method == "nearest":
        transformer = SpatialTransformer(grid, mode="nearest", padding_mode=padding_mode)
        return transformer(labels.to(displacement.dtype), displacement).to(labels.dtype)
    return _warp_onehot(labels, displacement, grid, num_classes, padding_mode)


def _warp_onehot(
    labels: Tensor, displacement: Tensor, grid: VolumeGrid, num_classes: int | None, padding_mode: str
) -> Tensor:
    """The ``"onehot"`` method of :func:`warp_labels` (same arguments and result)."""
    if int(labels.min()) < 0:
        raise ValueError(f"labels: expected values >= 0, got minimum {int(labels.min())}")
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if int(labels.max()) >= num_classes:
        raise ValueError(f"labels: expected values < num_classes = {num_classes}, got maximum {int(labels.max())}")
    onehot = F.one_hot(labels[:, 0].long(), num_classes)
    # (B, I, J, K, classes) -> (B, classes, I, J, K): classes become channels.
    onehot = onehot.movedim(-1, 1).to(displacement.dtype)
    warped = SpatialTransformer(grid, mode="bilinear", padding_mode=padding_mode)(onehot, displacement)
    # With zeros padding, samples partly or wholly outside the volume lose weight: it goes to the
    # background, label 0 (with border padding the weights sum to 1 and this adds nothing).
    warped[:, :1] += 1.0 - warped.sum(dim=1, keepdim=True)
    return warped.argmax(dim=1, keepdim=True).to(labels.dtype)
