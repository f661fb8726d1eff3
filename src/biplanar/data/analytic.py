"""Analytic phantoms with closed-form projections, for tests and benchmarks.

A uniform ellipsoid ``||(x - centre) / semi_axes|| < 1`` (world mm, axis-aligned): its line
integral along a ray is ``mu`` times the chord length, solved from a quadratic.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from biplanar.geometry.projection import ProjectionView
from biplanar.geometry.volume_grid import VolumeGrid


def _ellipsoid_radius(points_world: Tensor, centre_mm: Tensor, semi_axes_mm: Tensor) -> Tensor:
    """``||(p - centre) / semi_axes||``: < 1 inside, > 1 outside; ``(...)`` for ``(..., 3)`` points."""
    return ((points_world - centre_mm) / semi_axes_mm).norm(dim=-1)


def voxelize_ellipsoid(
    grid: VolumeGrid,
    centre_mm: tuple[float, float, float],
    semi_axes_mm: tuple[float, float, float],
    supersampling: int = 4,
) -> Tensor:
    """Partial-volume occupancy of an axis-aligned ellipsoid on ``grid``.

    Voxels within 1.5 voxels of the surface are supersampled ``supersampling**3`` times; the
    others are 0 or 1.

    Returns:
        ``(I, J, K)`` float64 occupancy in ``[0, 1]``.
    """
    centre = torch.tensor(centre_mm, dtype=torch.float64)
    semi_axes = torch.tensor(semi_axes_mm, dtype=torch.float64)
    points = grid.voxel_centres_world(torch.float64)
    radius = _ellipsoid_radius(points, centre, semi_axes)
    occupancy = (radius < 1.0).double()
    # (radius - 1) * smallest semi-axis is at most the distance to the surface.
    near_surface = (radius - 1.0).abs() * semi_axes.min() < 1.5 * float(grid.spacing_mm.max())
    offsets = (torch.arange(supersampling, dtype=torch.float64) + 0.5) / supersampling - 0.5
    offsets_vox = torch.stack(torch.meshgrid(offsets, offsets, offsets, indexing="ij"), -1).reshape(-1, 3)
    offsets_world = offsets_vox @ torch.as_tensor(grid.affine[:3, :3]).T
    sub_points = points[near_surface][:, None, :] + offsets_world[None]
    occupancy[near_surface] = (_ellipsoid_radius(sub_points, centre, semi_axes) < 1.0).double().mean(1)
    return occupancy


def ellipsoid_chord_lengths(
    view: ProjectionView, centre_mm: tuple[float, float, float], semi_axes_mm: tuple[float, float, float]
) -> Tensor:
    """``(rows, cols)`` float64 chord length in mm of each pixel's ray through the ellipsoid (0 if missed)."""
    centre = torch.tensor(centre_mm, dtype=torch.float64)
    semi_axes = torch.tensor(semi_axes_mm, dtype=torch.float64)
    rays = view.pixel_rays(torch.float64)
    directions = rays / rays.norm(dim=-1, keepdim=True)
    # |o + t d| = 1 in ellipsoid-normalised coordinates: a t^2 + b t + c = 0.
    origin = (torch.as_tensor(view.source_world) - centre) / semi_axes
    scaled = directions / semi_axes
    a = (scaled * scaled).sum(-1)
    b = 2.0 * (origin * scaled).sum(-1)
    c = (origin * origin).sum() - 1.0
    discriminant = (b * b - 4.0 * a * c).clamp(min=0.0)
    return discriminant.sqrt() / a


def ball_volume(grid: VolumeGrid, centre_mm: np.ndarray, radius_mm: float) -> Tensor:
    """``(I, J, K)`` float64 partial-volume ball (a sphere-shaped ellipsoid)."""
    centre = (float(centre_mm[0]), float(centre_mm[1]), float(centre_mm[2]))
    return voxelize_ellipsoid(grid, centre, (radius_mm,) * 3)
