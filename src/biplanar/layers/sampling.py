"""Trilinear sampling of one volume on every CPU core.

PyTorch's CPU kernel for 5-D ``grid_sample`` (forward and backward) parallelises over the batch
only (``at::parallel_for`` over ``N`` in ``aten/src/ATen/native/GridSampler.cpp``): one volume is
sampled on one core. :func:`grid_sample_3d` splits the sample points of a batch of one into as many
batch elements as there are threads (consecutive slabs along the grid's first axis), over a
stride-0 view of the volume (no copy), and puts the slabs back together: the same values and
gradients, on every core. On GPU, and for larger batches, it is ``F.grid_sample`` itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def cpu_batch_splits(volume: Tensor, size: int) -> int:
    """Into how many batch elements to split the samples of ``volume`` ``(B, C, I, J, K)``: the
    largest divisor of ``size`` (the length of the axis split) up to the torch thread count when
    ``volume`` is a single CPU volume; 1 otherwise."""
    if volume.shape[0] > 1 or volume.device.type != "cpu":
        return 1
    threads = torch.get_num_threads()
    return max(splits for splits in range(1, threads + 1) if size % splits == 0)


def grid_sample_3d(
    volume: Tensor, grid: Tensor, mode: str = "bilinear", padding_mode: str = "zeros", align_corners: bool = True
) -> Tensor:
    """``F.grid_sample(volume, grid, ...)`` for 5-D inputs, threaded over the sample points on CPU.

    Args:
        volume: ``(B, C, I, J, K)`` values.
        grid: ``(B, D, H, W, 3)`` sample points in grid_sample coordinates (``x`` indexes ``K``).
        mode, padding_mode, align_corners: as for :func:`torch.nn.functional.grid_sample`.

    Returns:
        ``(B, C, D, H, W)``, equal to ``F.grid_sample``'s.
    """
    depth = grid.shape[1]
    splits = cpu_batch_splits(volume, depth) if grid.shape[0] == 1 else 1
    if splits == 1:
        return F.grid_sample(volume, grid, mode, padding_mode, align_corners)
    slabs = grid.reshape(splits, depth // splits, *grid.shape[2:])
    sampled = F.grid_sample(volume.expand(splits, *volume.shape[1:]), slabs, mode, padding_mode, align_corners)
    # (S, C, D / S, H, W) -> (1, C, D, H, W): the S slabs are consecutive ranges of the first axis.
    return sampled.transpose(0, 1).reshape(1, volume.shape[1], depth, *grid.shape[2:4])
