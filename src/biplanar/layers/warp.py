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

from biplanar.geometry.transforms import check_matrix, transform_points
from biplanar.geometry.volume_grid import VolumeGrid

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
    points_world = grid.voxel_centres_world(torch.float64, matrix.device).to(matrix.dtype)
    points_world = points_world.expand(matrix.shape[0], *points_world.shape)  # (B, I, J, K, 3)
    moved_world = transform_points(matrix, points_world)
    # (B, I, J, K, 3) -> (B, 3, I, J, K): vector components become channels.
    return (moved_world - points_world).movedim(-1, 1)


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
        return F.grid_sample(volume, sample_grid, mode=self.mode, padding_mode=self.padding_mode, align_corners=True)

    def _sample_grid(self, displacement: Tensor) -> Tensor:
        """``(B, I, J, K, 3)`` grid_sample coordinates of ``p + displacement(p)`` at every voxel centre."""
        dtype, device = displacement.dtype, displacement.device
        axes = [torch.arange(n, dtype=dtype, device=device) for n in self.grid.shape]
        points_vox = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (I, J, K, 3): i, j, k
        vox_to_grid = self.vox_to_grid.to(dtype)
        identity_grid = points_vox @ vox_to_grid[:3, :3].T + vox_to_grid[:3, 3]
        # (B, 3, I, J, K) -> (B, I, J, K, 3): world (x, y, z) components last, then to grid units.
        offset_grid = displacement.movedim(1, -1) @ self.world_to_grid_linear.to(dtype).T
        return identity_grid + offset_grid


def warp_labels(
    labels: Tensor, displacement: Tensor, grid: VolumeGrid, method: str = "nearest", num_classes: int | None = None
) -> Tensor:
    """Warp an integer label map by a displacement field; outside the volume is label 0.

    Args:
        labels: ``(B, 1, I, J, K)`` (or ``(1, 1, I, J, K)``) integer labels on ``grid``.
        displacement: ``(B, 3, I, J, K)`` mm, world components, on ``grid`` (pull convention).
        grid: the voxel grid of both.
        method: ``"nearest"`` (nearest-neighbour sampling) or ``"onehot"`` (each label's one-hot
            channel warped trilinearly, then the arg-max: smoother boundaries).
        num_classes: ``"onehot"`` only: labels lie in ``[0, num_classes)``; default
            ``labels.max() + 1``.

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
        warped = SpatialTransformer(grid, mode="nearest")(labels.to(displacement.dtype), displacement)
        return warped.to(labels.dtype)
    return _warp_onehot(labels, displacement, grid, num_classes)


def _warp_onehot(labels: Tensor, displacement: Tensor, grid: VolumeGrid, num_classes: int | None) -> Tensor:
    """The ``"onehot"`` method of :func:`warp_labels` (same arguments and result)."""
    if int(labels.min()) < 0:
        raise ValueError(f"labels: expected values >= 0, got minimum {int(labels.min())}")
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if int(labels.max()) >= num_classes:
        raise ValueError(f"labels: expected values < num_classes = {num_classes}, got maximum {int(labels.max())}")
    onehot = F.one_hot(labels[:, 0].long(), num_classes)
    # (B, I, J, K, classes) -> (B, classes, I, J, K): classes become channels.
    onehot = onehot.movedim(-1, 1).to(displacement.dtype)
    warped = SpatialTransformer(grid, mode="bilinear")(onehot, displacement)
    # Samples partly or wholly outside the volume lose weight: it goes to the background, label 0.
    warped[:, :1] += 1.0 - warped.sum(dim=1, keepdim=True)
    return warped.argmax(dim=1, keepdim=True).to(labels.dtype)
