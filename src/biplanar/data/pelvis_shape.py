"""The piece of right hemipelvis around the hip: acetabular cup, supra-acetabular ilium, the two
columns, ischium and pubis, as a smooth signed-distance function.

Pelvis frame (mm): world RAS+ axes (+x right = lateral, +y anterior, +z superior), origin at the
head centre of the femur in its canonical pose. The pelvis only translates with the subject; the
femur rotates in the cup about the head centre, so the joint space stays concentric.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from biplanar.data.implicit import capsule, ellipsoid, smooth_intersection, smooth_union
from biplanar.data.parameters import RangedParameters

CORTEX_MM = 1.5  # pelvic cortical shell; the cup's subchondral plate is of the same order
_RIM_DEPTH = 0.10  # the opening plane sits this fraction of the cup radius inside the centre


class PelvisParameters(RangedParameters, table="pelvis"):
    """Shape of the periacetabular pelvis; each field (mm or deg, as its name says) has its range in
    ``resources/parameters/pelvis.csv`` (sources: ``docs/data.md``)."""

    joint_space_mm: float
    acetabular_inclination_deg: float
    acetabular_anteversion_deg: float
    acetabular_wall_mm: float
    ischium_radius_mm: float
    pubic_ramus_radius_mm: float


def _points(first: list[float], second: list[float]) -> tuple[Tensor, Tensor]:
    return torch.tensor(first, dtype=torch.float32), torch.tensor(second, dtype=torch.float32)


class PelvisShape:
    """Signed distance to the periacetabular pelvis around a femoral head of ``head_radius_mm``."""

    def __init__(self, params: PelvisParameters, head_radius_mm: float) -> None:
        self.p = params
        self.cup_inner_mm = head_radius_mm + params.joint_space_mm
        self.cup_outer_mm = self.cup_inner_mm + params.acetabular_wall_mm
        inclination = np.radians(params.acetabular_inclination_deg)
        anteversion = np.radians(params.acetabular_anteversion_deg)
        # Acetabular axis (out of the cup): inclination from -z towards +x in the coronal plane,
        # anteversion out of the coronal plane towards +y (radiographic definitions).
        self.cup_axis = torch.tensor(
            [
                np.sin(inclination) * np.cos(anteversion),
                np.sin(anteversion),
                -np.cos(inclination) * np.cos(anteversion),
            ],
            dtype=torch.float32,
        )

    def sdf(self, points_pelvis: Tensor) -> Tensor:
        """``(N, 3)`` mm in the pelvis frame -> ``(N,)`` signed distance, mm (negative inside)."""
        q, p = points_pelvis, self.p
        radius = q.norm(dim=-1)
        rim_plane = q @ self.cup_axis + _RIM_DEPTH * self.cup_inner_mm
        shell = torch.maximum(radius - self.cup_outer_mm, self.cup_inner_mm - radius)
        bone = smooth_intersection(shell, rim_plane, 2.0)
        ilium = ellipsoid(q, *_points([-14.0, -6.0, 30.0], [24.0, 30.0, 30.0]))
        bone = smooth_union(bone, smooth_intersection(ilium, rim_plane, 4.0), 8.0)
        parts = [
            capsule(q, *_points([-6.0, -24.0, 4.0], [-22.0, -40.0, 40.0]), 13.0),  # post. column
            capsule(q, *_points([-10.0, 18.0, 5.0], [-14.0, 30.0, 40.0]), 10.0),  # ant. column
            ellipsoid(q, *_points([-34.0, -6.0, -8.0], [4.0, 20.0, 26.0])),  # quadrilateral plate
            capsule(q, *_points([-12.0, -22.0, -24.0], [-28.0, -28.0, -58.0]), p.ischium_radius_mm),
            ellipsoid(q, *_points([-30.0, -30.0, -64.0], [14.0, 12.0, 16.0])),  # tuberosity
            capsule(q, *_points([-30.0, -28.0, -68.0], [-60.0, 0.0, -70.0]), 7.0),  # ischial ramus
            capsule(q, *_points([-16.0, 16.0, -16.0], [-70.0, 35.0, -35.0]), p.pubic_ramus_radius_mm),
        ]  # superior pubic ramus
        for part in parts:
            bone = smooth_union(bone, part, 8.0)
        return torch.maximum(bone, self.cup_inner_mm - radius)  # keep the acetabular cavity open
