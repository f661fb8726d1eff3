"""The patient's body around the hips: its outline (trunk above the crotch, two thighs below),
skin and subcutaneous fat, and the midsagittal plane that mirrors the right side to the left.

Body frame (mm): world RAS+ axes, origin at the posed head centre of the right femur (the pelvis
frame of :mod:`biplanar.data.pelvis_shape`). The midsagittal plane is ``x = midline_x`` in the
world, ``inter_acetabular_mm / 2`` medial of the head centre, moved to the nearest voxel face of
the grid lattice it is rendered on (:meth:`BodyShape.on_lattice`), so that mirroring voxels about
it mirrors the anatomy exactly. The outline is an elliptic cylinder centred on the midline above
the crotch, and below it two elliptic thighs whose lateral edges continue the trunk's; it does not
vary in z otherwise (the scene spans about 250 mm around the hip).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from biplanar.data.implicit import scaled_distance, smooth_union
from biplanar.data.parameters import RangedParameters
from biplanar.geometry.volume_grid import VolumeGrid

SKIN_MM = 2.0  # epidermis + dermis over the hip and thigh, about 1.5 to 3 mm
SKIN_HU = 40.0  # dermis, soft-tissue density
AIR_HU = -1000.0
CROTCH_BELOW_HEAD_MM = 90.0  # the trunk splits into the thighs this far below the head centre
CROTCH_FILLET_MM = 30.0  # rounds the perineum between the thighs
THIGH_DEPTH_RATIO = 0.85  # a thigh's antero-posterior semi-axis over the trunk's


class BodyParameters(RangedParameters, table="body"):
    """Size of the body around the hips, mm; each field has its range in
    ``resources/parameters/body.csv`` (sources: ``docs/data.md``). The skin lies
    ``subcutaneous_fat_mm + SKIN_MM`` outside the deep tissue (muscle) that the lateral and
    antero-posterior sizes bound."""

    inter_acetabular_mm: float
    lateral_muscle_mm: float
    muscle_half_depth_mm: float
    centre_anterior_mm: float
    subcutaneous_fat_mm: float

    @property
    def half_width_mm(self) -> float:
        """Midline to the lateral skin at the hips, mm."""
        return self.inter_acetabular_mm / 2.0 + self.lateral_muscle_mm + self.subcutaneous_fat_mm + SKIN_MM

    @property
    def half_depth_mm(self) -> float:
        """Half the antero-posterior thickness at the hips, skin to skin, mm."""
        return self.muscle_half_depth_mm + self.subcutaneous_fat_mm + SKIN_MM


def _axis_aligned(grid: VolumeGrid) -> np.ndarray:
    """``(3,)`` spacing of ``grid`` if its voxel axes are world x, y, z in that order (RAS+); else
    ``ValueError``."""
    linear = grid.affine[:3, :3]
    if not np.allclose(linear, np.diag(np.diag(linear))) or np.any(np.diag(linear) <= 0):
        raise ValueError("the body scene needs an axis-aligned RAS+ grid (i, j, k along world +x, +y, +z)")
    return np.diag(linear).copy()


class BodyShape:
    """The body outline of a subject, placed on a grid lattice.

    Args:
        params: the body's size.
        head_centre_world: ``(3,)`` world mm of the posed right head centre (the body frame's origin).
        midline_x_mm: world x of the midsagittal plane, mm.
    """

    def __init__(self, params: BodyParameters, head_centre_world: np.ndarray, midline_x_mm: float) -> None:
        self.p = params
        self.midline_x_mm = float(midline_x_mm)
        head = np.asarray(head_centre_world, dtype=np.float64)
        # Centre of the cross-section (world mm): on the midline, level with the head centre.
        self.centre_world = np.array([self.midline_x_mm, head[1] + params.centre_anterior_mm, head[2]])
        self.semi_axes_mm = np.array([params.half_width_mm, params.half_depth_mm])  # trunk, x and y

    @classmethod
    def on_lattice(cls, params: BodyParameters, head_centre_world: np.ndarray, grid: VolumeGrid) -> BodyShape:
        """The body with its midline on the voxel face of ``grid``'s lattice nearest to
        ``inter_acetabular_mm / 2`` medial (world -x) of the head centre (at most half a voxel away).

        Raises:
            ValueError: ``grid`` is not axis-aligned RAS+.
        """
        spacing = _axis_aligned(grid)
        midline = float(head_centre_world[0]) - params.inter_acetabular_mm / 2.0
        return cls(params, head_centre_world, grid.affine[0, 3] + (midline_column(grid, midline) - 0.5) * spacing[0])

    def bounds_world(self) -> tuple[np.ndarray, np.ndarray]:
        """``((2,), (2,))`` world mm of the lowest and highest x, y of the outline (any z)."""
        centre = self.centre_world[:2]
        return centre - self.semi_axes_mm, centre + self.semi_axes_mm

    def sdf_on_grid(self, grid: VolumeGrid) -> Tensor:
        """``(I, J, K)`` float32 approximate signed distance (mm) to the skin at the voxel centres of
        the axis-aligned ``grid``: the trunk's cross-section, cut below the crotch to the thighs'
        (their union with the space above the crotch rounded over :data:`CROTCH_FILLET_MM`)."""
        spacing = _axis_aligned(grid)
        # Voxel centres relative to the centre, world mm, per axis: x (I,), y (J,), z (K,).
        x, y, z = (
            torch.arange(size, dtype=torch.float64) * step + start - centre
            for size, step, start, centre in zip(grid.shape, spacing, grid.affine[:3, 3], self.centre_world)
        )
        across = torch.stack(torch.meshgrid(x, y, indexing="ij"), dim=-1).reshape(-1, 2).float()  # (I * J, 2)
        trunk = scaled_distance(across, torch.as_tensor(self.semi_axes_mm, dtype=torch.float32))
        # Each thigh half as wide as the trunk, its lateral edge on the trunk's; |x| mirrors the right one.
        half_width = float(self.semi_axes_mm[0]) / 2.0
        thigh_axes = torch.tensor([half_width, THIGH_DEPTH_RATIO * float(self.semi_axes_mm[1])])
        thighs = scaled_distance(torch.stack([across[:, 0].abs() - half_width, across[:, 1]], dim=-1), thigh_axes)
        above_crotch = -(z.float() + CROTCH_BELOW_HEAD_MM)  # (K,), <= 0 above the crotch
        # (I, J, 1) cross-sections against (1, 1, K) heights: broadcast to (I, J, K).
        legs_or_above = smooth_union(thighs.view(*grid.shape[:2], 1), above_crotch.view(1, 1, -1), CROTCH_FILLET_MM)
        return torch.maximum(trunk.view(*grid.shape[:2], 1), legs_or_above)

    @staticmethod
    def ramp_width_mm(grid: VolumeGrid) -> float:
        """Width (mm) of the skin's partial-volume ramp on ``grid``: a voxel's extent across a
        vertical surface, ``sqrt((dx^2 + dy^2) / 2)`` (:func:`biplanar.data.voxelise.ramp_width`'s for
        a horizontal normal, averaged over its direction; exact for square ``dx = dy``)."""
        dx, dy, _ = _axis_aligned(grid)
        return float(np.sqrt((dx**2 + dy**2) / 2.0))


def midline_column(grid: VolumeGrid, midline_x_mm: float) -> int:
    """Index ``m`` of the voxel column of ``grid`` (axis ``i``, world x) whose left face
    ``x0 + (m - 1/2) dx`` is nearest to ``midline_x_mm``; may lie outside ``0 .. I - 1``."""
    spacing = _axis_aligned(grid)
    return int(np.floor((midline_x_mm - grid.affine[0, 3]) / spacing[0] + 1.0))
