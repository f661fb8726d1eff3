"""Least-squares fits of simple shapes to point sets (mm, any one frame)."""

from __future__ import annotations

import numpy as np


def fit_sphere(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Algebraic least-squares sphere ``|p|^2 = 2 c.p + (r^2 - |c|^2)`` through ``(N, 3)`` points.

    Returns:
        ``((3,) centre, radius)`` in the points' units.
    """
    design = np.c_[2.0 * points, np.ones(len(points))]
    solution, *_ = np.linalg.lstsq(design, (points**2).sum(axis=1), rcond=None)
    centre = solution[:3]
    return centre, float(np.sqrt(solution[3] + centre @ centre))


def fit_line(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Total least-squares line through ``(N, 3)`` points (``N >= 2``).

    Returns:
        ``((3,) centroid on the line, (3,) unit direction)``; the direction's sign is arbitrary.
    """
    centroid = points.mean(axis=0)
    _, _, right = np.linalg.svd(points - centroid, full_matrices=False)
    return centroid, right[0]
