"""Parametric right proximal femur as a smooth signed-distance function.

Femur frame (``local``, mm), the frame every shape parameter is defined in:

- origin: the femoral head centre;
- ``+l`` lateral, ``+a`` anterior, ``+s`` superior along the proximal (straight) shaft axis;
  right-handed (``l x a = s``). For a right femur in the canonical pose,
  :func:`canonical_rotation` maps it to world RAS+ (``l`` is about +x, ``a`` = +y).

The shaft axis passes through ``P0 = offset * (cos(anteversion), -sin(anteversion), 0)``; the
neck axis runs from the head centre towards the shaft at the neck-shaft angle to the shaft axis,
its projection on the plane perpendicular to the shaft pointing medially and anteriorly at the
anteversion angle from the medial direction (the medial-lateral ``l`` axis stands in for the
posterior condylar axis, which a proximal phantom does not have).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from biplanar.data.implicit import (
    capsule,
    ellipsoid,
    scaled_distance,
    smooth_intersection,
    smooth_union,
    smoothstep,
    sphere,
)
from biplanar.data.parameters import RangedParameters

# The anatomical shaft axis leans 7 deg from vertical in the coronal plane, proximal end lateral
# (standing; the anatomical axis is ~6 deg off the mechanical axis, itself ~3 deg off vertical).
SHAFT_TILT_DEG = 7.0
NECK_FLARE = 0.15  # neck section grows by this fraction from the neck base to the shaft axis
# Fillet between the head-neck and the trochanters/shaft (the medial arch of the calcar): wide
# away from the head and down to the lesser trochanter, as narrow as the head-neck junction's
# near the head and on the shaft below.
FILLET_FAR_MM, FILLET_NEAR_MM = 20.0, 3.0
METAPHYSIS_FLARE = 0.25  # shaft radius grows by this fraction from subtrochanteric level upwards
SUBTROCHANTERIC_BELOW_LT_MM = 15.0  # level of shaft_radius_mm below the lesser trochanter
# The anterior bow starts this far below the lesser trochanter: the proximal shaft is straight
# (its axis well defined), the bow proper is mid-diaphyseal, mostly below the field of view.
BOW_START_BELOW_LT_MM = 60.0


class FemurParameters(RangedParameters, table="femur"):
    """Shape of one right proximal femur; each field (mm, deg or a ratio, as its name says) has its
    range in ``resources/parameters/femur.csv`` (sources: ``docs/data.md``)."""

    head_radius_mm: float
    neck_shaft_angle_deg: float
    anteversion_deg: float
    femoral_offset_mm: float
    neck_length_mm: float
    neck_width_ratio: float
    neck_aspect_ratio: float
    shaft_radius_mm: float
    shaft_taper_mm_per_100mm: float
    shaft_bow_radius_mm: float
    gt_height_mm: float
    gt_lateral_flare_mm: float
    gt_depth_mm: float
    lt_distance_mm: float
    lt_prominence_mm: float
    lt_angle_deg: float
    cortex_proximal_mm: float
    cortex_shaft_mm: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> FemurParameters:
        """Truncated-normal draws, redrawn until the combination is plausible (:meth:`is_plausible`)."""
        while True:
            candidate = super().sample(rng)
            if candidate.is_plausible():
                return candidate

    def solid(self) -> FemurShape:
        """The femur as a solid in the femur frame."""
        return FemurShape(self)

    def is_plausible(self) -> bool:
        """The head clears the shaft and the neck base lies between the head and the shaft."""
        axis_length = self.femoral_offset_mm / np.sin(np.radians(self.neck_shaft_angle_deg))
        return (
            self.femoral_offset_mm - self.head_radius_mm >= 14.0
            and self.head_radius_mm + 6.0 <= self.neck_length_mm <= axis_length - 10.0
        )


def canonical_rotation() -> np.ndarray:
    """``(3, 3)`` columns = the femur frame's ``l, a, s`` axes in world RAS+ (canonical pose)."""
    tilt = np.radians(SHAFT_TILT_DEG)
    lateral = [np.cos(tilt), 0.0, -np.sin(tilt)]
    superior = [np.sin(tilt), 0.0, np.cos(tilt)]
    return np.column_stack([lateral, [0.0, 1.0, 0.0], superior])


def extreme_inside_point(
    sdf_local: Callable[[Tensor], Tensor], centre: np.ndarray, half_size: np.ndarray, direction: np.ndarray
) -> np.ndarray:
    """``(3,)`` the point of the solid ``sdf_local <= 0`` farthest along ``direction`` within the
    box ``centre +- half_size`` (all femur-frame mm): a 1 mm lattice search refined on a 0.25 mm
    lattice within 1.5 mm of the best point; ties within half a step are averaged (accurate to
    about 0.2 mm).
    """
    for step in (1.0, 0.25):
        axes = [np.arange(c - h, c + h + step / 2, step) for c, h in zip(centre, half_size)]
        lattice = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
        inside = lattice[sdf_local(torch.as_tensor(lattice, dtype=torch.float32)).numpy() <= 0]
        if len(inside) == 0:
            raise ValueError(f"extreme_inside_point: no point of the solid in {centre} +- {half_size}")
        reach = inside @ direction
        centre, half_size = inside[reach > reach.max() - step / 2].mean(axis=0), np.full(3, 1.5)
    return centre


@dataclass(frozen=True)
class FemurLandmarksLocal:
    """Landmarks of the parametric shape in the femur frame (mm; directions are unit vectors)."""

    head_centre: np.ndarray
    neck_axis: np.ndarray  # from the shaft towards the head centre
    shaft_axis_point: np.ndarray  # on the proximal shaft axis, level with the head centre
    shaft_axis: np.ndarray  # proximal direction of the proximal (straight) shaft axis
    greater_trochanter_tip: np.ndarray
    lesser_trochanter_tip: np.ndarray


class FemurSolid(ABC):
    """A right femur in the femur frame: its surface (subclasses) and the internal structure every
    femur shares, placed by a few of its landmarks.

    Attributes:
        head_radius_mm: radius of the femoral head.
        lt_level: height ``s`` (mm, negative) of the lesser trochanter.
        shaft_point: ``(3,)`` mm, where the proximal shaft axis (parallel to ``+s``) crosses
            the plane ``s = 0``.
        shaft_radius_mm: outer radius of the proximal diaphysis.
        cortex_proximal_mm, cortex_shaft_mm: cortical thickness at the head and neck, and in the
            diaphysis.

    The field methods (``sdf``, ``cortex_thickness``, ``marrow_fraction``,
    ``compressive_trabeculae``, ``deformation_weight``) take ``points_local: (N, 3)`` float32 mm
    in the femur frame and return ``(N,)``.
    """

    def __init__(
        self,
        head_radius_mm: float,
        lt_level: float,
        shaft_point: np.ndarray,
        shaft_radius_mm: float,
        cortex_proximal_mm: float,
        cortex_shaft_mm: float,
    ) -> None:
        self.head_radius_mm, self.lt_level = float(head_radius_mm), float(lt_level)
        self.shaft_point, self.shaft_radius_mm = np.asarray(shaft_point, dtype=float), float(shaft_radius_mm)
        self.cortex_proximal_mm, self.cortex_shaft_mm = float(cortex_proximal_mm), float(cortex_shaft_mm)

    @abstractmethod
    def sdf(self, points_local: Tensor) -> Tensor:
        """Signed distance to the femur surface, mm (negative inside)."""

    @abstractmethod
    def landmarks(self, sdf_local: Callable[[Tensor], Tensor] | None = None) -> FemurLandmarksLocal:
        """The landmarks in the femur frame; trochanter tips located on ``sdf_local`` (the
        subject's deformed solid; ``None``: :meth:`sdf`)."""

    def cortex_thickness(self, points_local: Tensor) -> Tensor:
        """Cortical thickness (mm): thin proximally, thick in the diaphysis."""
        shaft_weight = smoothstep(points_local[:, 2], self.lt_level, self.lt_level - 40.0)
        return self.cortex_proximal_mm + (self.cortex_shaft_mm - self.cortex_proximal_mm) * shaft_weight

    def marrow_fraction(self, points_local: Tensor) -> Tensor:
        """0 where the interior is trabecular bone, 1 in the medullary canal of the diaphysis."""
        return smoothstep(points_local[:, 2], self.lt_level - 5.0, self.lt_level - 45.0)

    def compressive_trabeculae(self, points_local: Tensor) -> Tensor:
        """0..1 weight of the principal compressive trabecular group (head dome -> calcar)."""
        dome = 0.7 * self.head_radius_mm * np.array([-0.35, 0.0, 0.94])
        calcar = self.shaft_point + [-self.shaft_radius_mm, 0.0, self.lt_level + 15.0]
        distance = capsule(points_local, _t(dome), _t(calcar), 0.0)
        return 1.0 - smoothstep(distance, 4.0, 9.0)

    def proximal_points(self, step_mm: float = 4.0, below_lt_mm: float = 30.0) -> np.ndarray:
        """``(M, 3)`` femur-frame mm of lattice points inside the femur from the top of the head
        down to ``below_lt_mm`` under the lesser trochanter (a coarse sample of the solid)."""
        r = self.head_radius_mm
        reach = float(np.linalg.norm(self.shaft_point)) + 2.0 * self.shaft_radius_mm
        axes = [
            np.arange(-r - step_mm, reach + 15.0, step_mm),
            np.arange(-reach, reach, step_mm),
            np.arange(self.lt_level - below_lt_mm, r + step_mm, step_mm),
        ]
        lattice = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
        inside = self.sdf(_t(lattice)).numpy() <= 0
        return lattice[inside]

    def deformation_weight(self, points_local: Tensor) -> Tensor:
        """0..1 weight of the random surface deformation: none on the articular head, full over
        the trochanters, a third on the smooth diaphysis."""
        r = self.head_radius_mm
        head = smoothstep(points_local.norm(dim=-1), r + 2.0, r + 14.0)
        trochanteric = smoothstep(points_local[:, 2], self.lt_level - 30.0, self.lt_level)
        return head * (0.35 + 0.65 * trochanteric)


def _t(array: np.ndarray) -> Tensor:
    """A numpy constant as a float32 tensor (the dtype of the points)."""
    return torch.as_tensor(np.asarray(array), dtype=torch.float32)


class FemurShape(FemurSolid):
    """The parametric femur of a :class:`FemurParameters` (signed distance from implicit parts)."""

    def __init__(self, params: FemurParameters) -> None:
        self.p = params
        alpha, theta = np.radians(params.neck_shaft_angle_deg), np.radians(params.anteversion_deg)
        towards_head = np.array([-np.cos(theta), np.sin(theta), 0.0])  # perpendicular to the shaft
        up = np.array([0.0, 0.0, 1.0])
        super().__init__(
            params.head_radius_mm,
            -params.lt_distance_mm,
            -params.femoral_offset_mm * towards_head,  # P0
            params.shaft_radius_mm,
            params.cortex_proximal_mm,
            params.cortex_shaft_mm,
        )
        self.neck_axis = -np.cos(alpha) * up + np.sin(alpha) * towards_head
        self.axis_length = params.femoral_offset_mm / np.sin(alpha)  # head centre -> shaft axis
        major = up - up.dot(self.neck_axis) * self.neck_axis
        self.neck_major = major / np.linalg.norm(major)  # superior side of the neck section
        self.neck_minor = np.cross(self.neck_axis, self.neck_major)
        lt_angle = np.radians(params.lt_angle_deg)
        self.lt_direction = np.array([-np.cos(lt_angle), -np.sin(lt_angle), 0.0])
        self._gt = self._greater_trochanter()

    # --- parts ---------------------------------------------------------------------------
    def _greater_trochanter(self) -> dict[str, np.ndarray]:
        """Centres and semi-axes of the greater trochanter's body and its posterior-superior hook."""
        p, shaft = self.p, self.shaft_point
        # The body reaches from the tip down to about the lesser trochanter's level.
        body_semi = np.array([12.0, p.gt_depth_mm / 2.0, (p.gt_height_mm - self.lt_level) / 2.0 + 2.0])
        lateral_face = shaft[0] + p.shaft_radius_mm + p.gt_lateral_flare_mm
        body = np.array([lateral_face - body_semi[0], shaft[1] - 4.0, p.gt_height_mm - body_semi[2]])
        hook = np.array([shaft[0] + 0.25 * p.shaft_radius_mm, shaft[1] - 6.0, p.gt_height_mm - 9.0])
        return {"body": body, "body_semi": body_semi, "hook": hook, "hook_semi": np.array([8.0, 8.0, 9.0])}

    def shaft_radius(self, s: Tensor) -> Tensor:
        """Outer shaft radius (mm) at height ``s`` (mm, femur frame): tapered, flared proximally."""
        p = self.p
        sub = self.lt_level - SUBTROCHANTERIC_BELOW_LT_MM
        taper = p.shaft_taper_mm_per_100mm * (sub - s).clamp(min=0.0) / 100.0
        flare = METAPHYSIS_FLARE * p.shaft_radius_mm * smoothstep(s, sub, sub + 40.0)
        return p.shaft_radius_mm - taper + flare

    def shaft_centre(self, s: Tensor) -> Tensor:
        """``(N, 2)`` ``(l, a)`` of the shaft centreline at heights ``s`` (anterior bow below its start)."""
        below = (self.lt_level - BOW_START_BELOW_LT_MM - s).clamp(min=0.0)
        bow = below.square() / (2.0 * self.p.shaft_bow_radius_mm)
        centre_l = torch.full_like(s, float(self.shaft_point[0]))
        return torch.stack([centre_l, self.shaft_point[1] + bow], dim=-1)

    def _shaft(self, points: Tensor) -> Tensor:
        s = points[:, 2]
        offset = points[:, :2] - self.shaft_centre(s)
        tube = offset.norm(dim=-1) - self.shaft_radius(s)
        linea_aspera = self._linea_aspera(offset, s)
        tube = smooth_union(tube, linea_aspera, 3.0)
        return smooth_intersection(tube, s - (self.p.gt_height_mm - 15.0), 10.0)

    def _linea_aspera(self, offset_la: Tensor, s: Tensor) -> Tensor:
        """Posterior ridge of the shaft, from just below the lesser trochanter downwards."""
        ridge = offset_la.clone()
        ridge[:, 1] += self.shaft_radius(s) - 1.5
        return smooth_intersection(ridge.norm(dim=-1) - 3.0, s - (self.lt_level - 10.0), 6.0)

    def _neck(self, points: Tensor) -> Tensor:
        t = -(points @ _t(self.neck_axis))  # distance from the head centre towards the shaft
        section = torch.stack([points @ _t(self.neck_major), points @ _t(self.neck_minor)], -1)
        base = self.p.neck_length_mm
        growth = 1.0 + NECK_FLARE * ((t - base) / (self.axis_length - base)).clamp(0.0, 1.0)
        semi = (
            self.p.neck_width_ratio
            * self.p.head_radius_mm
            * torch.stack([growth, growth * self.p.neck_aspect_ratio], dim=-1)
        )
        caps = torch.maximum(-t, t - self.axis_length)  # from the head centre to the shaft axis
        return torch.maximum(scaled_distance(section, semi), caps)

    def _lt_reach(self) -> float:
        """Distance from the shaft axis to the lesser trochanter's apex, mm."""
        radius = self.shaft_radius(torch.tensor([self.lt_level], dtype=torch.float32))
        return float(radius) + self.p.lt_prominence_mm

    def _lesser_trochanter(self, points: Tensor) -> Tensor:
        semi = np.array([9.0, 8.0, 13.0])
        reach = self._lt_reach() - semi[0]
        centre = self.shaft_point + reach * self.lt_direction + [0.0, 0.0, self.lt_level]
        axes = np.stack([self.lt_direction, np.cross([0.0, 0.0, 1.0], self.lt_direction), [0.0, 0.0, 1.0]])
        return ellipsoid(points, _t(centre), _t(semi), _t(axes))

    def _crest(self, points: Tensor) -> Tensor:
        """Intertrochanteric crest: posterior ridge from the greater to the lesser trochanter."""
        p, shaft = self.p, self.shaft_point
        top = np.array(
            [shaft[0] + 0.5 * p.shaft_radius_mm, shaft[1] - p.gt_depth_mm / 2.0 + 5.0, p.gt_height_mm - 20.0]
        )
        bottom = shaft + p.shaft_radius_mm * self.lt_direction + [0.0, 0.0, self.lt_level + 5.0]
        return capsule(points, _t(top), _t(bottom), 4.5)

    # --- public --------------------------------------------------------------------------
    def sdf(self, points_local: Tensor) -> Tensor:
        """Signed distance to the femur surface, mm (negative inside)."""
        head = sphere(points_local, _t(np.zeros(3)), self.p.head_radius_mm)
        head_neck = smooth_union(head, self._neck(points_local), 3.0)
        gt = self._gt
        proximal = smooth_union(
            self._shaft(points_local), ellipsoid(points_local, _t(gt["body"]), _t(gt["body_semi"])), 14.0
        )
        proximal = smooth_union(proximal, ellipsoid(points_local, _t(gt["hook"]), _t(gt["hook_semi"])), 5.0)
        proximal = smooth_union(proximal, self._lesser_trochanter(points_local), 4.0)
        proximal = smooth_union(proximal, self._crest(points_local), 4.0)
        r = self.p.head_radius_mm
        wide = smoothstep(points_local.norm(dim=-1), r + 5.0, r + 18.0) * smoothstep(
            points_local[:, 2], self.lt_level - 25.0, self.lt_level - 5.0
        )
        fillet = FILLET_NEAR_MM + (FILLET_FAR_MM - FILLET_NEAR_MM) * wide
        return smooth_union(head_neck, proximal, fillet)

    def landmarks(self, sdf_local: Callable[[Tensor], Tensor] | None = None) -> FemurLandmarksLocal:
        """The shape's landmarks in the femur frame.

        Args:
            sdf_local: the solid whose trochanter tips are located (the deformed femur of a
                subject); ``None``: :meth:`sdf`. The greater trochanter tip is its most proximal
                point (along the shaft axis) over the greater trochanter, the lesser trochanter
                tip its farthest point along the lesser trochanter's direction.
        """
        sdf_local = self.sdf if sdf_local is None else sdf_local
        p, shaft = self.p, self.shaft_point
        # The greater trochanter: lateral of the shaft axis, within 8 mm of its nominal tip height.
        lateral_face = shaft[0] + p.shaft_radius_mm + p.gt_lateral_flare_mm
        gt_box = np.array(
            [
                [shaft[0], lateral_face + 2.0],
                [shaft[1] - p.gt_depth_mm / 2.0 - 3.0, shaft[1] + p.gt_depth_mm / 2.0 + 3.0],
                [p.gt_height_mm - 8.0, p.gt_height_mm + 8.0],
            ]
        )
        gt_tip = extreme_inside_point(
            sdf_local, gt_box.mean(axis=1), np.diff(gt_box, axis=1)[:, 0] / 2, np.array([0.0, 0.0, 1.0])
        )
        lt_apex = self.shaft_point + self._lt_reach() * self.lt_direction + [0.0, 0.0, self.lt_level]
        lt_tip = extreme_inside_point(sdf_local, lt_apex, np.array([6.0, 6.0, 8.0]), self.lt_direction)
        return FemurLandmarksLocal(
            head_centre=np.zeros(3),
            neck_axis=self.neck_axis.copy(),
            shaft_axis_point=self.shaft_point.copy(),
            shaft_axis=np.array([0.0, 0.0, 1.0]),
            greater_trochanter_tip=gt_tip,
            lesser_trochanter_tip=lt_tip,
        )
