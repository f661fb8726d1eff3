"""Evaluating analytic fields on a :class:`VolumeGrid`: narrow-band signed distances, smooth fields
from a coarse lattice, and partial-volume occupancy.

Every function returns ``(I, J, K)`` float32 tensors in NIfTI array order on ``grid``; the
callables they take map ``(N, 3)`` world mm (RAS+) to ``(N,)`` values.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from biplanar.geometry.volume_grid import VolumeGrid

# The approximate distances of biplanar.data.implicit change by at most this factor times the
# distance moved (they are 1-Lipschitz where exact); used to bound a field between coarse samples.
LIPSCHITZ_BOUND = 1.5
BAND_STEP_VOX = 4  # coarse lattice step of the narrow-band test, voxels of the target grid
SMOOTH_STEP_MM = 3.0  # largest lattice step for smooth fields (their features are >= 20 mm)

WorldField = Callable[[Tensor], Tensor]


def _coarse_lattice(grid: VolumeGrid, step_vox: np.ndarray) -> tuple[list[Tensor], Tensor]:
    """Per-axis coarse voxel positions (first and last voxel included, steps of at most
    ``step_vox`` voxels per axis) and their world points.

    Returns:
        ``([(Ic,), (Jc,), (Kc,)] positions in voxels, (Ic, Jc, Kc, 3) world mm)``.
    """
    counts = [max(2, int(np.ceil((n - 1) / step)) + 1) for n, step in zip(grid.shape, step_vox)]
    positions = [torch.linspace(0.0, n - 1.0, count, dtype=torch.float64) for n, count in zip(grid.shape, counts)]
    points_vox = torch.stack(torch.meshgrid(*positions, indexing="ij"), dim=-1)
    return positions, grid.vox_to_world(points_vox).to(torch.float32)


def narrow_band_sdf(
    sdf_world: WorldField,
    grid: VolumeGrid,
    band_mm: float,
    points_world: Tensor,
    known: tuple[tuple[slice, slice, slice], Tensor] | None = None,
) -> Tensor:
    """A signed distance on ``grid``, exact inside the solid and within ``band_mm`` of its surface.

    The field is first sampled on a coarse lattice; voxels whose nearest coarse sample is farther
    than ``band_mm`` plus the Lipschitz-bounded change over half a coarse cell are set to
    ``band_mm`` without evaluating the field. Values are clamped to at most ``band_mm``.

    Args:
        sdf_world: ``(N, 3)`` world mm -> ``(N,)`` signed distance, mm.
        grid: the target grid.
        band_mm: half-width of the band that is evaluated exactly, mm.
        points_world: ``(I, J, K, 3)`` world mm of the voxel centres of ``grid``.
        known: ``(block, values)``: this field already computed on the sub-block ``block``
            (index slices) of ``grid``, e.g. on another grid of the same lattice; copied there, not
            evaluated.
    """
    positions, coarse_world = _coarse_lattice(grid, np.full(3, BAND_STEP_VOX))
    coarse = sdf_world(coarse_world.reshape(-1, 3)).reshape(coarse_world.shape[:3])
    cell_vox = np.array([float(p[1] - p[0]) for p in positions])
    half_diagonal = 0.5 * np.linalg.norm(grid.affine[:3, :3] @ cell_vox)
    near = coarse < band_mm + LIPSCHITZ_BOUND * half_diagonal
    nearest = [
        torch.round(torch.arange(n) * (len(p) - 1) / max(n - 1, 1)).long() for n, p in zip(grid.shape, positions)
    ]
    mask = near[nearest[0]][:, nearest[1]][:, :, nearest[2]]
    sdf = torch.full(grid.shape, band_mm, dtype=torch.float32)
    if known is not None:
        block, values = known
        mask[block] = False
        sdf[block] = values
    sdf[mask] = sdf_world(points_world[mask]).clamp(max=band_mm)
    return sdf


def smooth_field(field_world: WorldField, grid: VolumeGrid) -> Tensor:
    """A slowly varying field sampled every ``SMOOTH_STEP_MM`` at most, trilinearly upsampled."""
    _, coarse_world = _coarse_lattice(grid, np.maximum(SMOOTH_STEP_MM / grid.spacing_mm, 1.0))
    coarse = field_world(coarse_world.reshape(-1, 3)).reshape(1, 1, *coarse_world.shape[:3])
    # The coarse lattice spans the first to the last voxel centre: align_corners=True.
    return F.interpolate(coarse, size=grid.shape, mode="trilinear", align_corners=True)[0, 0]


def ramp_width(sdf: Tensor, grid: VolumeGrid) -> Tensor:
    """``(I, J, K)`` width (mm) of the partial-volume ramp of each voxel for the surfaces of ``sdf``.

    A voxel's extent along the surface normal ``n`` is the sum of three uniform variables of
    widths ``|n . e_i|`` (``e_i`` its edges); the ramp is the uniform with the same variance,
    ``sqrt(sum_i (n . e_i)^2)``. For a distance field ``n . e_i`` is the change of ``sdf`` per
    voxel step along axis ``i`` (central differences here).
    """
    step_i, step_j, step_k = torch.gradient(sdf)
    width = torch.sqrt(step_i.square() + step_j.square() + step_k.square())
    spacing = grid.spacing_mm
    return width.clamp(float(spacing.min()), float(spacing.max()))


def occupancy(sdf: Tensor, width: Tensor) -> Tensor:
    """Partial-volume fraction of each voxel inside ``sdf <= 0`` (linear ramp over ``width``)."""
    return (0.5 - sdf / width).clamp(0.0, 1.0)
