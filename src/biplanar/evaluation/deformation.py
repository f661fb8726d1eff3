"""Folds of a registration's deformation ``x -> x + u(x)`` (``u`` a displacement field in world mm).

A displacement sampled on a grid and interpolated trilinearly (as every consumer of
``displacement.nii.gz`` does) is, inside each cell of 2 x 2 x 2 voxel centres, a trilinear map. Its
Jacobian at a corner of the cell uses the three cell edges that leave that corner:
``J = I + D A^-1``, ``D[:, d]`` the change of ``u`` along the edge in array axis ``d`` and ``A`` the
grid's 3 x 3 voxel-to-world matrix. A corner whose determinant is <= 0 means the cell is folded
(the map turns inside out there); a cell whose eight corners are all positive is mapped one to
one. The share of folded cells is the usual "percentage of non-positive Jacobian determinants" of
learned registration (VoxelMorph, Learn2Reg), taken at the cells' corners rather than with central
differences at the voxels, which smooth over a fold one voxel wide.
"""

from __future__ import annotations

from itertools import product

import numpy as np
import torch
from torch import Tensor

from biplanar.geometry import VolumeGrid


def _corner_edges(field: Tensor, corner: tuple[int, ...]) -> list[Tensor]:
    """The change of ``field`` (``(3, I, J, K)``) along each array axis on the cell edges leaving
    ``corner`` (0/1 per axis) of every cell: three ``(3, I - 1, J - 1, K - 1)`` tensors."""
    size = field.shape[1:]
    edges = []
    for axis in range(3):
        index = [slice(None)] + [slice(offset, length - 1 + offset) for offset, length in zip(corner, size)]
        index[1 + axis] = slice(1, None)
        ahead = field[tuple(index)]
        index[1 + axis] = slice(0, -1)
        edges.append(ahead - field[tuple(index)])
    return edges


def corner_jacobian_determinants(displacement_mm: Tensor | np.ndarray, grid: VolumeGrid) -> Tensor:
    """The Jacobian determinant of ``x -> x + u(x)`` at the 8 corners of every trilinear cell.

    Args:
        displacement_mm: ``(3, I, J, K)`` or ``(1, 3, I, J, K)`` displacement, world mm, world
            components, on ``grid``.
        grid: the field's grid.

    Returns:
        ``(8, I - 1, J - 1, K - 1)`` determinants (dimensionless; float32 for a float32 field, else
        float64), corners in
        ``itertools.product((0, 1), repeat=3)`` order.
    """
    field = torch.as_tensor(np.asarray(displacement_mm) if isinstance(displacement_mm, np.ndarray) else displacement_mm)
    field = field.detach().cpu()
    field = field if field.dtype in (torch.float32, torch.float64) else field.double()
    field = field[0] if field.dim() == 5 else field
    if tuple(field.shape) != (3, *grid.shape):
        expected = ", ".join(map(str, grid.shape))
        raise ValueError(f"displacement_mm: expected shape (3, {expected}), got {tuple(field.shape)}")
    voxel_per_world = np.linalg.inv(grid.affine[:3, :3])
    determinants = []
    for corner in product((0, 1), repeat=3):
        edges = _corner_edges(field, corner)  # per array axis: (3 components, ...)
        jacobian = [
            [_world_derivative(edges, voxel_per_world, c, w) + float(c == w) for w in range(3)] for c in range(3)
        ]
        determinants.append(_determinant(jacobian))
    return torch.stack(determinants)


def _world_derivative(edges: list[Tensor], voxel_per_world: np.ndarray, component: int, world_axis: int) -> Tensor:
    """``du_component / dx_world_axis`` on the cells, from the changes along each array axis
    (``edges``, :func:`_corner_edges`); the grid matrix's zero terms are skipped."""
    derivative = torch.zeros_like(edges[0][component])
    for axis in range(3):
        if voxel_per_world[axis, world_axis]:
            derivative = derivative + edges[axis][component] * float(voxel_per_world[axis, world_axis])
    return derivative


def _determinant(matrix: list[list[Tensor]]) -> Tensor:
    """Elementwise determinant of a 3 x 3 matrix of equally shaped tensors (cofactor expansion: one
    pass over the cells, where ``torch.linalg.det`` would batch 3 x 3 LU factorisations)."""
    (a, b, c), (d, e, f), (g, h, i) = matrix
    return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)


def folding_statistics(displacement_mm: Tensor | np.ndarray, grid: VolumeGrid) -> dict[str, float]:
    """``folded_cells_percent``: the share of trilinear cells with a corner determinant <= 0 (%);
    ``smallest_jacobian_determinant``: the smallest corner determinant (see
    :func:`corner_jacobian_determinants`, whose arguments these are)."""
    determinants = corner_jacobian_determinants(displacement_mm, grid)
    folded = (determinants <= 0).any(dim=0)
    return {
        "folded_cells_percent": 100.0 * float(folded.double().mean()),
        "smallest_jacobian_determinant": float(determinants.min()),
    }
