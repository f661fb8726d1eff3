"""Joseph's slice walk: line integrals of a volume's trilinear interpolant, one voxel slice at a time.

For each ray, its *walk axis* is the volume axis along which it advances fastest in voxels per mm:
the ray crosses every slice of that axis once, and from one slice to the next it moves at most one
voxel along the other two axes. The line integral is the sum, over the slices, of the volume
sampled where the ray crosses the slice (bilinear interpolation inside the slice: the trilinear
interpolant's exact value on that plane) times the ray's path length from one slice to the next
(Joseph 1982, "An improved algorithm for reprojecting rays through pixel images"). It is the
trapezoid rule on the slice planes; with zero padding its end terms (one slice beyond each face)
vanish, so every slice of the volume counts in full.

Work: one 2-D bilinear sample per ray and slice (``F.grid_sample`` on ``(slices, C, H, W)``: on
CPU vectorised, and threaded over the slices), against ``K`` trilinear samples per ray for ray
sampling. Slices go in chunks, so the sampling grids stay under 32 MiB: the allocator reuses them
from call to call instead of mapping fresh pages, and with gradients the memory stays bounded
(chunks recomputed in backward when asked).

Coordinates: grid_sample's normalised ``(x, y, z)``, ``align_corners=True``; ``x, y, z`` run along
the volume dims ``K, J, I`` (``(B, C, I, J, K)``), and slice ``s`` of an axis of ``n`` voxels lies at
``-1 + 2 s / (n - 1)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

# Samples (slices x channels x rays) per chunk at most: one channel's float32 sampling grid then
# stays within glibc's 32 MiB limit for fresh mappings, so the allocator reuses it from call to call.
# Few chunks mean few parallel regions, which matters on a shared machine (each region waits for
# its slowest thread): at the paper size two chunks of 64 (AP) or 96 (LAT) slices of 224 x 160 rays.
CHUNK_SAMPLES = 2**22


class SliceGroup(NamedTuple):
    """The rays of one view that walk the same axis.

    Attributes:
        axis: the walk axis in ``(x, y, z)`` order: 0 the volume's dim K, 1 dim J, 2 dim I.
        rays: ``(R_g,)`` flat indices ``row * cols + col`` of these rays; ``None`` for all of them.
    """

    axis: int
    rays: Tensor | None


class SliceRays(NamedTuple):
    """Where one group's rays cross the slices of its walk axis.

    Ray ``r`` crosses the slice at normalised coordinate ``c`` of the walk axis at the in-plane point
    ``base[r] + c * slope[r]`` (the other two axes in ``(x, y, z)`` order, as a 2-D grid_sample's
    ``(x, y)`` of that slice), and travels ``weight[r]`` mm from one slice to the next.

    Attributes:
        base: ``(R_g, 2)`` normalised grid coordinates.
        slope: ``(R_g, 2)`` normalised grid units per normalised unit along the walk axis.
        weight: ``(R_g,)`` mm per slice.
    """

    base: Tensor
    slope: Tensor
    weight: Tensor


def slice_groups(direction: Tensor, shape: tuple[int, int, int]) -> list[SliceGroup]:
    """Split rays by walk axis.

    Args:
        direction: ``(R, 3)`` ray directions, normalised grid units ``(x, y, z)`` per mm of depth.
        shape: ``(I, J, K)`` voxels, each at least 2.

    Returns:
        one group per walk axis that some ray has (usually one for the whole view).
    """
    sizes_xyz = torch.tensor(shape[::-1], dtype=direction.dtype, device=direction.device)
    voxels_per_mm = direction.abs() * (sizes_xyz - 1.0) / 2.0  # (R, 3)
    axes = voxels_per_mm.argmax(dim=-1)
    groups = []
    for axis in range(3):
        members = axes == axis
        count = int(members.sum())
        if count == axes.numel():
            return [SliceGroup(axis, None)]
        if count > 0:
            groups.append(SliceGroup(axis, members.nonzero().squeeze(1)))
    return groups


def slice_rays(
    origin: Tensor, direction: Tensor, ray_lengths: Tensor, shape: tuple[int, int, int], group: SliceGroup
) -> SliceRays:
    """The crossings of ``group``'s rays with the slices of its walk axis (differentiable in the rays).

    Args:
        origin: ``(3,)`` the source, normalised grid coordinates ``(x, y, z)``; or ``(R, 3)``, one per ray.
        direction: ``(R, 3)`` normalised grid units per mm of depth.
        ray_lengths: ``(R,)`` world mm per mm of depth.
        shape: ``(I, J, K)`` voxels.
        group: which rays and axis.
    """
    if group.rays is not None:
        direction, ray_lengths = direction[group.rays], ray_lengths[group.rays]
        origin = origin[group.rays] if origin.dim() == 2 else origin
    axis = group.axis
    first, second = (other for other in range(3) if other != axis)
    along = direction[:, axis]
    # Two column views stacked: cheaper than indexing with a list of columns (a gather).
    slope = torch.stack([direction[:, first], direction[:, second]], dim=-1) / along[:, None]
    # The crossing with the plane at coordinate c: depth (c - origin[axis]) / along.
    base = torch.stack([origin[..., first], origin[..., second]], dim=-1) - origin[..., axis, None] * slope
    slice_step = 2.0 / (shape[2 - axis] - 1)  # normalised units between two slices
    return SliceRays(base, slope, ray_lengths * slice_step / along.abs())


def slice_ray_tangents(
    crossing: SliceRays, origin: Tensor, direction: Tensor, d_origin: Tensor, d_direction: Tensor, group: SliceGroup
) -> SliceRays:
    """The derivatives of :func:`slice_rays`' crossings along ``P`` directions of the rays.

    With ``a`` the ray direction's walk-axis component: ``d slope = (d plane - slope d a) / a``,
    ``d base = d origin_plane - d origin_axis slope - origin_axis d slope``, ``d weight = -weight d a / a``.

    Args:
        crossing: ``slice_rays(origin, direction, ...)`` of ``group``.
        origin: ``(3,)`` as :func:`slice_rays`'s.
        direction: ``(R, 3)`` as :func:`slice_rays`'s (all rays, before ``group``'s selection).
        d_origin: ``(3, P)`` its derivatives.
        d_direction: ``(R, 3, P)`` its derivatives.
        group: which rays and axis.

    Returns:
        ``(R_g, 2, P)``, ``(R_g, 2, P)`` and ``(R_g, P)`` derivatives of ``base``, ``slope``, ``weight``.
    """
    if group.rays is not None:
        direction, d_direction = direction[group.rays], d_direction[group.rays]
    axis = group.axis
    plane = [other for other in range(3) if other != axis]
    along, d_along = direction[:, axis, None], d_direction[:, axis]  # (R_g, 1), (R_g, P)
    slope = crossing.slope.unsqueeze(-1)  # (R_g, 2, 1)
    d_slope = (d_direction[:, plane] - slope * d_along.unsqueeze(1)) / along.unsqueeze(-1)
    d_base = d_origin[plane] - d_origin[axis] * slope - origin[axis] * d_slope
    return SliceRays(d_base, d_slope, -crossing.weight[:, None] * d_along / along)


def slice_stack(volume: Tensor, axis: int) -> Tensor:
    """The slices of ``volume`` ``(C, I, J, K)`` across walk axis ``axis``: ``(n, C, H, W)`` (a view).

    The (H, W) dims keep their order in ``(I, J, K)``, which makes a 2-D grid_sample's ``(x, y)``
    the remaining two of ``(x, y, z)`` in order: axis 0 (x, dim K sliced) -> (H, W) = (I, J);
    axis 1 (y, dim J) -> (I, K); axis 2 (z, dim I) -> (J, K).
    """
    return volume.movedim(3 - axis, 0)


def slice_coordinates(count: int, like: Tensor) -> Tensor:
    """``(count,)`` normalised coordinates of the slices of an axis of ``count`` voxels."""
    return torch.linspace(-1.0, 1.0, count, dtype=like.dtype, device=like.device)


def crossing_grid(coords: Tensor, base: Tensor, slope: Tensor) -> Tensor:
    """``(n, 1, R_g, 2)`` 2-D sampling grid: the crossings (``base``, ``slope`` of :class:`SliceRays`)
    with the slices at normalised coordinates ``coords`` ``(n,)``."""
    return torch.addcmul(base.unsqueeze(0), coords.view(-1, 1, 1), slope.unsqueeze(0)).unsqueeze(1)


def sample_crossings(slices: Tensor, grid: Tensor) -> Tensor:
    """Bilinear samples ``(n, C, 1, R_g)`` of ``slices`` ``(n, C, H, W)`` at ``grid`` ``(n, 1, R_g, 2)``."""
    return F.grid_sample(slices, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _accumulate(total: Tensor | None, slices: Tensor, coords: Tensor, base: Tensor, slope: Tensor) -> Tensor:
    """``total`` ``(1, C * R_g)`` (``None``: zero) plus the sum of ``slices`` ``(n, C, H, W)``'s samples
    at the crossings with the slices at ``coords`` ``(n,)``."""
    samples = sample_crossings(slices, crossing_grid(coords, base, slope))  # (n, C, 1, R_g)
    flat = samples.view(samples.shape[0], -1)
    ones = flat.new_ones(1, flat.shape[0])
    # A (1, n) x (n, C R_g) product sums the slices and adds the total in one pass.
    return ones @ flat if total is None else torch.addmm(total, ones, flat)


def _chunk_size(slices: int, per_slice: int, max_chunk_samples: int) -> int:
    """Slices per chunk: as even chunks as can hold at most ``max_chunk_samples`` and
    :data:`CHUNK_SAMPLES` samples each (``per_slice`` a slice), at least one slice."""
    limit = max(1, min(max_chunk_samples, CHUNK_SAMPLES) // per_slice)
    chunks = -(-slices // limit)
    return -(-slices // chunks)


def walk_slices(volume: Tensor, rays: SliceRays, axis: int, max_chunk_samples: int) -> Tensor:
    """Line integrals ``(C, R_g)`` (value x mm) of ``volume`` along one group's rays.

    Args:
        volume: ``(C, I, J, K)`` values per mm on the grid.
        rays: the group's crossings (:func:`slice_rays`).
        axis: the group's walk axis.
        max_chunk_samples: slices go in chunks of at most this many samples (and at most
            :data:`CHUNK_SAMPLES`); with gradients, when the whole walk holds more samples than
            this, each chunk is recomputed in backward instead of keeping its sampling grid.
    """
    slices = slice_stack(volume, axis)
    per_slice = volume.shape[0] * rays.base.shape[0]
    chunk = _chunk_size(slices.shape[0], per_slice, max_chunk_samples)
    recompute = torch.is_grad_enabled() and slices.shape[0] * per_slice > max_chunk_samples
    coords = slice_coordinates(slices.shape[0], volume)

    def accumulate(total: Tensor | None, part: Tensor, part_coords: Tensor) -> Tensor:
        arguments = (total, part, part_coords, rays.base, rays.slope)
        return checkpoint(_accumulate, *arguments, use_reentrant=False) if recompute else _accumulate(*arguments)

    chunks = zip(slices.split(chunk), coords.split(chunk))
    total = accumulate(None, *next(chunks))
    for part, part_coords in chunks:
        total = accumulate(total, part, part_coords)
    return total.view(volume.shape[0], -1) * rays.weight


def walk_slices_with_gradients(volume: Tensor, rays: SliceRays, axis: int) -> tuple[Tensor, Tensor, Tensor]:
    """Sums over the slices of the samples and of their in-plane gradients, without a graph.

    With ``V_s`` the sample of a ray at slice coordinate ``c_s`` and ``g_s`` its gradient with
    respect to the crossing's in-plane coordinates (from one backward pass of bilinear sampling:
    each sample depends on its own crossing only), these are the parts of the line integral's
    derivative: the crossing moves by ``d base + c_s d slope`` when the rays move.

    Args:
        volume: ``(1, I, J, K)`` values per mm on the grid (one channel).
        rays: the group's crossings (:func:`slice_rays`).
        axis: the group's walk axis.

    Returns:
        ``sum_s V_s`` ``(R_g,)``, ``sum_s g_s`` ``(R_g, 2)`` and ``sum_s c_s g_s`` ``(R_g, 2)``, per
        normalised grid unit.
    """
    slices = slice_stack(volume.detach(), axis)
    chunk = _chunk_size(slices.shape[0], rays.base.shape[0], CHUNK_SAMPLES)
    coords = slice_coordinates(slices.shape[0], volume)
    base, slope = rays.base.detach(), rays.slope.detach()
    sums = volume.new_zeros(base.shape[0])
    gradients, moments = volume.new_zeros(base.shape), volume.new_zeros(base.shape)
    for part, part_coords in zip(slices.split(chunk), coords.split(chunk)):
        with torch.enable_grad():
            grid = crossing_grid(part_coords, base, slope).requires_grad_(True)
            sampled = sample_crossings(part, grid)
            (spatial,) = torch.autograd.grad(sampled.sum(), grid)  # (n, 1, R_g, 2)
        sums += sampled.detach().sum(dim=(0, 1, 2))
        gradients += spatial.sum(dim=(0, 1))
        moments += (spatial * part_coords.view(-1, 1, 1, 1)).sum(dim=(0, 1))
    return sums, gradients, moments


def place_rays(image: Tensor, values: Tensor, rays: Tensor | None, dim: int = -1) -> Tensor:
    """``image`` with one group's ``values`` put at its ``rays`` along ``dim`` (out of place).

    ``rays`` ``None`` (the group holds every ray): ``values`` itself. Differentiable in both.
    """
    return values if rays is None else image.index_copy(dim, rays, values)
