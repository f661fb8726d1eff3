"""Average pooling of volumes and trilinear upsampling of fields between a grid and its pooled grid
(:func:`biplanar.geometry.volume_grid.pooled_grid`)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def pool_volume(volume: Tensor, factor: int) -> Tensor:
    """``(B, C, I, J, K)`` -> ``(B, C, I / f, J / f, K / f)``: averages of ``f^3`` blocks (:func:`pooled_grid`)."""
    return F.avg_pool3d(volume, factor) if factor > 1 else volume


def upsample_field(coarse: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """Trilinear upsampling of a field on a pooled grid to the fine grid of ``shape``.

    Args:
        coarse: ``(B, C, i, j, k)`` on ``pooled_grid(grid, f)``, ``shape = f * (i, j, k)``; values
            are kept (a displacement in mm stays in mm).
        shape: ``(I, J, K)`` of ``grid``.

    Returns:
        ``(B, C, I, J, K)``; beyond the outer coarse voxel centres the border value is continued.
    """
    if tuple(coarse.shape[2:]) == tuple(shape):
        return coarse
    # align_corners=False with an integer ratio f puts fine index i at coarse (i + 0.5) / f - 0.5,
    # i.e. coarse voxel n at fine index f n + (f - 1) / 2: the alignment of pooled_grid.
    return F.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=False)
