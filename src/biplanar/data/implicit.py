"""Signed-distance primitives and smooth Boolean operations (mm; negative inside).

All functions take points as ``(N, D)`` tensors in one frame (stated by the caller) and return
``(N,)`` distances in the same units. The ellipse/ellipsoid and cone distances are the usual
first-order approximations (exact on the axes, within a few percent elsewhere), which is all a
phantom needs: the partial-volume ramp only uses the distance within a voxel of the surface.
"""

from __future__ import annotations

import torch
from torch import Tensor

_EPS = 1e-6


def smoothstep(x: Tensor, edge0: float, edge1: float) -> Tensor:
    """Cubic Hermite step: 0 at ``edge0``, 1 at ``edge1`` (either order), smooth in between."""
    t = ((x - edge0) / (edge1 - edge0)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def smooth_union(a: Tensor, b: Tensor, radius_mm: float | Tensor) -> Tensor:
    """Polynomial smooth minimum: the union of two solids with a fillet of about ``radius_mm``.

    ``radius_mm`` is a positive float or an ``(N,)`` tensor (a fillet that varies in space).
    """
    h = (0.5 + 0.5 * (b - a) / radius_mm).clamp(0.0, 1.0)
    return torch.lerp(b, a, h) - radius_mm * h * (1.0 - h)


def smooth_intersection(a: Tensor, b: Tensor, radius_mm: float | Tensor) -> Tensor:
    """Intersection of two solids with edges rounded over about ``radius_mm``."""
    return -smooth_union(-a, -b, radius_mm)


def scaled_distance(coords: Tensor, semi_axes: Tensor) -> Tensor:
    """Approximate distance to an axis-aligned ellipse (D = 2) or ellipsoid (D = 3).

    Args:
        coords: ``(N, D)`` points in the shape's own axes, centred on it, mm.
        semi_axes: ``(D,)`` or ``(N, D)`` semi-axes, mm.

    Returns:
        ``(N,)`` approximate signed distance ``k0 (k0 - 1) / k1`` with ``k0 = |p / r|`` and
        ``k1 = |p / r^2|`` (exact on the axes).
    """
    k0 = (coords / semi_axes).norm(dim=-1)
    k1 = (coords / semi_axes.square()).norm(dim=-1)
    return k0 * (k0 - 1.0) / (k1 + _EPS)


def sphere(points: Tensor, centre: Tensor, radius_mm: float) -> Tensor:
    """Exact distance to a sphere; ``points (N, 3)``, ``centre (3,)`` in the same frame, mm."""
    return (points - centre).norm(dim=-1) - radius_mm


def ellipsoid(points: Tensor, centre: Tensor, semi_axes: Tensor, axes: Tensor | None = None) -> Tensor:
    """Approximate distance to an ellipsoid.

    Args:
        points: ``(N, 3)`` mm.
        centre: ``(3,)`` mm, same frame.
        semi_axes: ``(3,)`` mm along the ellipsoid's own axes.
        axes: ``(3, 3)`` rows = the ellipsoid's unit axes in the points' frame; ``None`` = aligned.
    """
    coords = points - centre
    if axes is not None:
        coords = coords @ axes.T
    return scaled_distance(coords, semi_axes)


def capsule(points: Tensor, start: Tensor, end: Tensor, radius_mm: float) -> Tensor:
    """Exact distance to the segment ``start``-``end`` (each ``(3,)`` mm) grown by ``radius_mm``."""
    segment = end - start
    t = ((points - start) @ segment / segment.dot(segment)).clamp(0.0, 1.0)
    return (points - start - t[:, None] * segment).norm(dim=-1) - radius_mm
