"""Synthetic CT subjects: a posed right proximal femur with its cortex, trabecular bone and canal,
a piece of pelvis around it and soft tissue, voxelised with partial-volume anti-aliasing.

Frames (see :mod:`biplanar.geometry.volume_grid`): world = RAS+ mm; the femur frame is defined in
:mod:`biplanar.data.femur_shape`, the pelvis frame in :mod:`biplanar.data.pelvis_shape`.
A subject maps its femur frame to the world by

    x_world = c + t + R_pose @ R_canonical @ x_femur,

i.e. the canonical femur with its head centre at ``c``, rotated about the head centre by the pose
and translated by ``t``; the pelvis and the soft tissue are translated by ``t`` only. The head
centre ``c`` is at height ``HEAD_HEIGHT_MM`` and chosen per subject in x and y so that the posed
proximal femur (top of the head to 30 mm below the lesser trochanter) is centred on the volume's
vertical axis (the world origin is the volume centre), as a technician would centre the scan.

Volumes are ``(I, J, K)`` numpy arrays in NIfTI array order on the subject's :class:`VolumeGrid`.
Every surface is a signed distance ``d`` sampled at voxel centres; a voxel's occupancy is the
linear partial-volume ramp ``clamp(1/2 - d / w, 0, 1)`` whose width ``w`` matches the voxel's
extent along the surface normal (:func:`biplanar.data.voxelise.ramp_width`): the box filter of
a supersampled rendering to about 0.02 per voxel, so coarser presets are anti-aliased, not
subsampled. Textures are analytic and box-filtered exactly (:mod:`biplanar.data.random_fields`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
from scipy.special import ndtri
from torch import Tensor

from biplanar.data.body_shape import AIR_HU, SKIN_HU, SKIN_MM, BodyParameters, BodyShape
from biplanar.data.femur_shape import FemurParameters, FemurSolid, canonical_rotation
from biplanar.data.femur_ssm import SsmFemurParameters
from biplanar.data.grid_presets import grid_preset
from biplanar.data.implicit import smoothstep
from biplanar.data.parameters import RangedParameters, ranged
from biplanar.data.pelvis_shape import CORTEX_MM as PELVIS_CORTEX_MM
from biplanar.data.pelvis_shape import PelvisParameters, PelvisShape
from biplanar.data.random_fields import FourierField
from biplanar.data.voxelise import narrow_band_sdf, occupancy, ramp_width, smooth_field
from biplanar.geometry.transforms import euler_to_rotation
from biplanar.geometry.volume_grid import VolumeGrid

# Height of the head centre above the volume centre (world z, mm, before the translation): the
# head in the upper part of the 192-mm field of view, the shaft leaving at the bottom.
HEAD_HEIGHT_MM = 55.0
MAX_POSE_ANGLE_DEG = 10.0  # flexion/extension, ab/adduction, internal/external rotation
MAX_TRANSLATION_MM = 3.0
SURFACE_BUMP_MM = 0.5  # standard deviation of the random surface deformation
COMPRESSIVE_TRABECULAE_HU = 120.0  # extra density of the principal compressive group
# The femur's shape: the parametric phantom, or a draw from the real-subject shape model.
FEMUR_SHAPES: dict[str, type[FemurParameters] | type[SsmFemurParameters]] = {
    "phantom": FemurParameters,
    "ssm": SsmFemurParameters,
}


@dataclass(frozen=True)
class TissueParameters(RangedParameters):
    """CT numbers (HU) of the tissues (ranges and sources: ``docs/data.md``)."""

    cortical_hu: float = ranged(1500.0, 140.0, 1200.0, 1800.0)
    trabecular_hu: float = ranged(260.0, 55.0, 150.0, 400.0)
    trabecular_texture_hu: float = ranged(70.0, 15.0, 40.0, 110.0)
    marrow_hu: float = ranged(-40.0, 20.0, -90.0, 20.0)
    muscle_hu: float = ranged(45.0, 6.0, 30.0, 60.0)
    fat_hu: float = ranged(-100.0, 10.0, -120.0, -80.0)
    fat_plane_fraction: float = ranged(0.12, 0.04, 0.04, 0.25)


@dataclass(frozen=True)
class PoseRange:
    """How far :meth:`Pose.sample` turns and moves a femur: each angle uniform in
    +-``max_angle_deg``, each translation in +-``max_translation_mm`` (world mm)."""

    max_angle_deg: float = MAX_POSE_ANGLE_DEG
    max_translation_mm: float = MAX_TRANSLATION_MM


@dataclass(frozen=True)
class Pose:
    """Rigid pose of the femur about its head centre, anatomical angles of a right hip.

    Attributes:
        flexion_deg: + moves the distal femur anteriorly (rotation about +x).
        abduction_deg: + moves the distal femur laterally (rotation about -y).
        external_rotation_deg: + turns the anterior surface laterally (rotation about -z).
        translation_mm: ``(3,)`` world mm added to femur, pelvis and soft tissue.
    """

    flexion_deg: float = 0.0
    abduction_deg: float = 0.0
    external_rotation_deg: float = 0.0
    translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @classmethod
    def sample(cls, rng: np.random.Generator, pose_range: PoseRange = PoseRange()) -> Pose:
        """Angles and translations uniform within ``pose_range`` (the same draws from ``rng``
        whatever the range, so a wider range moves the same subjects further)."""
        largest_angle, largest_shift = pose_range.max_angle_deg, pose_range.max_translation_mm
        angles = rng.uniform(-largest_angle, largest_angle, size=3)
        translation = rng.uniform(-largest_shift, largest_shift, size=3)
        flexion, abduction, external_rotation = (float(angle) for angle in angles)
        x, y, z = (float(offset) for offset in translation)
        return cls(flexion, abduction, external_rotation, (x, y, z))

    def rotation(self) -> np.ndarray:
        """``(3, 3)`` world rotation ``Rx(flexion) @ Ry(-abduction) @ Rz(-external_rotation)``."""
        angles = np.radians([self.flexion_deg, -self.abduction_deg, -self.external_rotation_deg])
        return euler_to_rotation(torch.tensor(angles)[None]).numpy()[0]

    def to_dict(self) -> dict[str, float | list[float]]:
        """Field name -> value (JSON-ready)."""
        return {
            "flexion_deg": self.flexion_deg,
            "abduction_deg": self.abduction_deg,
            "external_rotation_deg": self.external_rotation_deg,
            "translation_mm": list(self.translation_mm),
        }


@dataclass(frozen=True)
class SubjectSpec:
    """Everything that determines a subject; rendering it on a grid is deterministic.

    Attributes:
        femur, pelvis, tissue: shape and CT-number parameters (the femur parametric or from the
            shape model, :data:`FEMUR_SHAPES`).
        pose: femur pose about the head centre.
        detail_seed: seed of the random fields (surface deformation, textures, fat planes).
        deformed: whether the smooth random surface deformation is applied.
        body: the body around the hips, used when rendered with a :class:`BodyShape`
            (:mod:`biplanar.data.scene`); drawn last, so the other draws do not depend on it.
    """

    femur: FemurParameters | SsmFemurParameters = field(default_factory=FemurParameters.mean)
    pelvis: PelvisParameters = field(default_factory=PelvisParameters.mean)
    tissue: TissueParameters = field(default_factory=TissueParameters.mean)
    pose: Pose = field(default_factory=Pose)
    detail_seed: int = 0
    deformed: bool = True
    body: BodyParameters = field(default_factory=BodyParameters.mean)

    @classmethod
    def sample(
        cls, seed: int, femur_shape: str = "phantom", pose_range: PoseRange = PoseRange(), shape_spread: float = 1.0
    ) -> SubjectSpec:
        """A random subject with a ``femur_shape`` femur (:data:`FEMUR_SHAPES`) posed within
        ``pose_range``; all draws come from ``numpy.random.default_rng(seed)``. ``shape_spread``:
        the standard deviation of a shape-model femur's mode weights (:meth:`SsmFemurParameters.sample`;
        phantom femurs keep their ranges)."""
        rng = np.random.default_rng(seed)
        femur_class = FEMUR_SHAPES[femur_shape]
        return cls(
            femur_class.sample(rng, shape_spread) if femur_class is SsmFemurParameters else femur_class.sample(rng),
            PelvisParameters.sample(rng),
            TissueParameters.sample(rng),
            Pose.sample(rng, pose_range),
            detail_seed=int(rng.integers(2**62)),
            deformed=True,
            body=BodyParameters.sample(rng),
        )

    @classmethod
    def atlas(cls) -> SubjectSpec:
        """Mean parameters, canonical pose, no random deformation (textures from seed 0)."""
        return cls(deformed=False)

    @cached_property
    def centred_head_world(self) -> np.ndarray:
        """``(3,)`` world mm of the head centre before the translation (see the module doc)."""
        proximal = self.femur.solid().proximal_points() @ self.femur_rotation().T
        low, high = proximal.min(axis=0), proximal.max(axis=0)
        return np.array([-(low[0] + high[0]) / 2.0, -(low[1] + high[1]) / 2.0, HEAD_HEIGHT_MM])

    def femur_rotation(self) -> np.ndarray:
        """``(3, 3)`` rotation from the femur frame to the world: ``R_pose @ R_canonical``."""
        return self.pose.rotation() @ canonical_rotation()

    def femur_to_world(self) -> np.ndarray:
        """``(4, 4)`` homogeneous map from the femur frame to world mm."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.femur_rotation()
        matrix[:3, 3] = self.pelvis_origin_world()
        return matrix

    def pelvis_origin_world(self) -> np.ndarray:
        """``(3,)`` world mm of the pelvis frame's origin (the posed head centre)."""
        return self.centred_head_world + np.asarray(self.pose.translation_mm)

    def body_on(self, grid: VolumeGrid) -> BodyShape:
        """The subject's body, its midline on ``grid``'s lattice (:meth:`BodyShape.on_lattice`)."""
        return BodyShape.on_lattice(self.body, self.pelvis_origin_world(), grid)


@dataclass(frozen=True)
class FemurLandmarks:
    """True landmarks of a posed subject, world mm (directions: unit vectors)."""

    head_centre_mm: np.ndarray
    head_radius_mm: float
    neck_axis: np.ndarray  # from the shaft towards the head centre
    shaft_axis_point_mm: np.ndarray  # on the proximal shaft axis, level with the head centre
    shaft_axis: np.ndarray  # proximal direction of the proximal shaft axis
    greater_trochanter_tip_mm: np.ndarray
    lesser_trochanter_tip_mm: np.ndarray

    def to_dict(self) -> dict[str, float | list[float]]:
        """Field name -> value, vectors as lists (JSON-ready)."""
        return {
            name: value if isinstance(value, float) else np.asarray(value).tolist()
            for name, value in self.__dict__.items()
        }


@dataclass(frozen=True)
class Subject:
    """One rendered subject.

    Attributes:
        ct_hu: ``(I, J, K)`` float32, Hounsfield units, on ``grid``.
        labels: ``(I, J, K)`` uint8, 1 = femur, 0 = everything else (pelvis included).
        grid: the volume grid (world RAS+ mm).
        spec: the parameters it was rendered from.
        landmarks: the femur's true landmarks after the pose, world mm.
    """

    ct_hu: np.ndarray
    labels: np.ndarray
    grid: VolumeGrid
    spec: SubjectSpec
    landmarks: FemurLandmarks

    @property
    def parameters(self) -> FemurParameters | SsmFemurParameters:
        """The femur's shape parameters."""
        return self.spec.femur

    @property
    def pose(self) -> Pose:
        """The femur's pose."""
        return self.spec.pose


def make_subject(seed: int, preset: str = "lite", femur_shape: str = "phantom") -> Subject:
    """The random subject ``seed`` with a ``femur_shape`` femur (:data:`FEMUR_SHAPES`) on the named
    grid preset (see ``GRID_PRESETS``)."""
    return render_subject(SubjectSpec.sample(seed, femur_shape), grid_preset(preset))


def make_atlas(preset: str = "lite") -> Subject:
    """The mean-shape subject (canonical pose, no deformation) on the named grid preset."""
    return render_subject(SubjectSpec.atlas(), grid_preset(preset))


def landmarks_world(spec: SubjectSpec) -> FemurLandmarks:
    """The femur's landmarks of ``spec`` (trochanter tips of the deformed femur), world mm."""
    femur = spec.femur.solid()
    fields = _DetailFields(spec.detail_seed)
    local = femur.landmarks(lambda x: _femur_sdf_local(spec, femur, fields, x))
    to_world = spec.femur_to_world()
    point = lambda x: to_world[:3, :3] @ x + to_world[:3, 3]  # noqa: E731
    return FemurLandmarks(
        head_centre_mm=point(local.head_centre),
        head_radius_mm=float(spec.femur.head_radius_mm),
        neck_axis=to_world[:3, :3] @ local.neck_axis,
        shaft_axis_point_mm=point(local.shaft_axis_point),
        shaft_axis=to_world[:3, :3] @ local.shaft_axis,
        greater_trochanter_tip_mm=point(local.greater_trochanter_tip),
        lesser_trochanter_tip_mm=point(local.lesser_trochanter_tip),
    )


def _femur_sdf_local(
    spec: SubjectSpec,
    femur: FemurSolid,
    fields: _DetailFields,
    points_local: Tensor,
    voxel_edges_mm: np.ndarray | None = None,
) -> Tensor:
    """``(N,)`` signed distance (mm) to the subject's femur, randomly deformed if ``spec.deformed``.

    Args:
        points_local: ``(N, 3)`` femur-frame mm.
        voxel_edges_mm: voxel edges in the femur frame, to box-filter the deformation; ``None``:
            point values.
    """
    sdf = femur.sdf(points_local)
    if not spec.deformed:
        return sdf
    bumps = fields.bumps(points_local, voxel_edges_mm)[:, 0]
    return sdf - SURFACE_BUMP_MM * femur.deformation_weight(points_local) * bumps


class _DetailFields:
    """The subject's random fields, all drawn from ``default_rng(detail_seed)``."""

    def __init__(self, detail_seed: int) -> None:
        rng = np.random.default_rng(detail_seed)
        self.bumps = FourierField(rng, 24, (20.0, 60.0))
        self.texture = FourierField(rng, 64, (1.5, 6.0))
        self.fat = FourierField(rng, 24, (25.0, 90.0))


class _Frames:
    """World <-> femur and pelvis frames of one subject, and a voxel's edges in each."""

    def __init__(self, spec: SubjectSpec, grid: VolumeGrid) -> None:
        to_world = spec.femur_to_world()
        self._rotation = torch.as_tensor(to_world[:3, :3], dtype=torch.float32)
        self._head = torch.as_tensor(to_world[:3, 3], dtype=torch.float32)
        self._pelvis_origin = torch.as_tensor(spec.pelvis_origin_world(), dtype=torch.float32)
        self.edges_world = grid.affine[:3, :3].T  # rows: the voxel's edge vectors, world mm
        self.edges_femur = self.edges_world @ to_world[:3, :3]

    def femur(self, points_world: Tensor) -> Tensor:
        """``(N, 3)`` world mm -> femur frame mm (row vectors: ``x R`` applies ``R^T``)."""
        return (points_world - self._head) @ self._rotation

    def pelvis(self, points_world: Tensor) -> Tensor:
        """``(N, 3)`` world mm -> pelvis frame mm."""
        return points_world - self._pelvis_origin


@contextmanager
def _single_threaded() -> Iterator[None]:
    """Run torch on one thread inside the block, then restore the previous setting.

    Rendering is hundreds of small element-wise kernels: on a few cores the per-kernel OpenMP
    fork/join costs more than it saves, and on shared cores it is several times slower (a lite
    subject: 0.3 s on one thread, 5 s on two busy ones).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def render_subject(spec: SubjectSpec, grid: VolumeGrid, body: BodyShape | None = None) -> Subject:
    """Voxelise ``spec`` on ``grid``: CT in HU with partial volume, femur labels, landmarks.

    Runs torch single-threaded (see :func:`_single_threaded`); deterministic for a given
    ``spec``, ``grid`` and ``body``.

    Args:
        body: the body outline: skin, subcutaneous fat and air outside it (:meth:`SubjectSpec.body_on`);
            ``None``: soft tissue fills the grid.
    """
    return render_subject_and_femur_sdf(spec, grid, body)[0]


def render_subject_and_femur_sdf(
    spec: SubjectSpec, grid: VolumeGrid, body: BodyShape | None = None
) -> tuple[Subject, Tensor]:
    """:func:`render_subject` and the femur's ``(I, J, K)`` float32 narrow-band signed distance
    (mm) on ``grid``, the one the labels threshold at 0."""
    with _single_threaded():
        renderer = _Renderer(spec, grid, body)
        femur_sdf = renderer.femur_sdf()
        subject = Subject(
            ct_hu=renderer.ct_hu(femur_sdf).numpy(),
            labels=(femur_sdf <= 0).numpy().astype(np.uint8),
            grid=grid,
            spec=spec,
            landmarks=landmarks_world(spec),
        )
        return subject, femur_sdf


def render_ct_hu(
    spec: SubjectSpec,
    grid: VolumeGrid,
    body: BodyShape | None = None,
    femur_sdf_block: tuple[tuple[slice, slice, slice], Tensor] | None = None,
) -> Tensor:
    """The CT of :func:`render_subject` alone: ``(I, J, K)`` float32 HU on ``grid``.

    Args:
        femur_sdf_block: ``(block, values)``: the femur's signed distance already rendered on the
            sub-block ``block`` (index slices) of ``grid``, e.g. by :func:`render_subject_and_femur_sdf`
            on a grid of the same lattice inside this one; copied there instead of evaluated.
    """
    with _single_threaded():
        renderer = _Renderer(spec, grid, body)
        return renderer.ct_hu(renderer.femur_sdf(femur_sdf_block))


class _Renderer:
    """One subject on one grid; every volume is ``(I, J, K)`` float32 on ``grid``."""

    def __init__(self, spec: SubjectSpec, grid: VolumeGrid, body: BodyShape | None = None) -> None:
        self.spec, self.grid, self.body = spec, grid, body
        self.femur = spec.femur.solid()
        self.pelvis = PelvisShape(spec.pelvis, spec.femur.head_radius_mm)
        self.fields = _DetailFields(spec.detail_seed)
        self.frames = _Frames(spec, grid)
        self.points_world = grid.voxel_centres_world(torch.float32)  # (I, J, K, 3)
        self.ramp_margin = float(grid.spacing_mm.max()) / 2.0 + 1.0  # beyond any ramp, mm

    def _femur_sdf_world(self, points_world: Tensor) -> Tensor:
        """``(N, 3)`` world mm -> ``(N,)`` signed distance to the (deformed) femur, mm."""
        return _femur_sdf_local(
            self.spec, self.femur, self.fields, self.frames.femur(points_world), self.frames.edges_femur
        )

    def femur_sdf(self, known: tuple[tuple[slice, slice, slice], Tensor] | None = None) -> Tensor:
        """Femur signed distance, exact as far out as it carves the pelvis (joint + cortex);
        ``known``: see :func:`render_ct_hu`'s ``femur_sdf_block``."""
        band = PelvisParameters.ranges()["joint_space_mm"].high + PELVIS_CORTEX_MM + self.ramp_margin
        return narrow_band_sdf(self._femur_sdf_world, self.grid, band, self.points_world, known)

    def pelvis_sdf(self, femur_sdf: Tensor) -> Tensor:
        """Pelvis signed distance, kept ``joint_space_mm`` away from the posed femur."""
        sdf = narrow_band_sdf(
            lambda x: self.pelvis.sdf(self.frames.pelvis(x)),
            self.grid,
            PELVIS_CORTEX_MM + self.ramp_margin,
            self.points_world,
        )
        return torch.maximum(sdf, self.spec.pelvis.joint_space_mm - femur_sdf)

    def ct_hu(self, femur_sdf: Tensor) -> Tensor:
        """Soft tissue, then each bone's cortex (outer minus inner occupancy) and interior."""
        tissue, frames = self.spec.tissue, self.frames
        width = ramp_width(femur_sdf, self.grid)
        femur_outer = occupancy(femur_sdf, width)
        femur_inner = torch.zeros_like(femur_outer)
        core = femur_sdf < 0.5 * width
        thickness = self.femur.cortex_thickness(frames.femur(self.points_world[core]))
        femur_inner[core] = occupancy(femur_sdf[core] + thickness, width[core])
        pelvis_sdf = self.pelvis_sdf(femur_sdf)
        width = ramp_width(pelvis_sdf, self.grid)
        pelvis_outer = torch.minimum(occupancy(pelvis_sdf, width), 1.0 - femur_outer)
        pelvis_inner = torch.minimum(occupancy(pelvis_sdf + PELVIS_CORTEX_MM, width), pelvis_outer)

        fat = smooth_field(lambda x: self.fields.fat(frames.pelvis(x))[:, 0], self.grid)
        soft = _soft_tissue_hu(tissue, fat)
        if self.body is not None:
            soft = self._within_body(self.body, soft)
        hu = soft * (1.0 - femur_outer - pelvis_outer) + tissue.cortical_hu * (
            femur_outer - femur_inner + pelvis_outer - pelvis_inner
        )
        core = femur_inner > 0
        hu[core] += femur_inner[core] * _femur_interior_hu(
            self.femur, tissue, frames.femur(self.points_world[core]), self.fields.texture, frames.edges_femur
        )
        core = pelvis_inner > 0
        texture = self.fields.texture(frames.pelvis(self.points_world[core]), frames.edges_world)
        hu[core] += pelvis_inner[core] * (tissue.trabecular_hu + tissue.trabecular_texture_hu * texture[:, 0])
        return hu

    def _within_body(self, body: BodyShape, deep_hu: Tensor) -> Tensor:
        """``deep_hu`` (soft tissue, ``(I, J, K)`` HU, changed in place) under the subcutaneous fat
        and the skin of ``body``, air outside it; each layer with its partial-volume ramp."""
        sdf = body.sdf_on_grid(self.grid)
        width = body.ramp_width_mm(self.grid)
        depth = SKIN_MM + body.p.subcutaneous_fat_mm  # of the deep tissue under the skin, mm
        # Layers mix from half a ramp outside the skin to half a ramp below the fat: deeper voxels
        # keep deep_hu, those farther out are air.
        shell = (sdf <= 0.5 * width) & (sdf > -depth - 0.5 * width)
        deep_hu[sdf > 0.5 * width] = AIR_HU
        distance, fat_hu = sdf[shell], self.spec.tissue.fat_hu
        skin, subcutaneous, deep = (
            occupancy(distance + offset, distance.new_tensor(width)) for offset in (0.0, SKIN_MM, depth)
        )
        deep_hu[shell] = (
            AIR_HU + (SKIN_HU - AIR_HU) * skin + (fat_hu - SKIN_HU) * subcutaneous + (deep_hu[shell] - fat_hu) * deep
        )
        return deep_hu


def _soft_tissue_hu(tissue: TissueParameters, fat_field: Tensor) -> Tensor:
    """Muscle with intermuscular fat planes: fat where the unit Gaussian ``fat_field`` is near 0."""
    # P(|f| < h) = fraction for f ~ N(0, 1): the zero level set thickened into sheets.
    half_width = float(ndtri(0.5 + tissue.fat_plane_fraction / 2.0))
    fat = smoothstep(fat_field.abs(), 1.25 * half_width, 0.75 * half_width)
    return tissue.muscle_hu + (tissue.fat_hu - tissue.muscle_hu) * fat


def _femur_interior_hu(
    femur: FemurSolid, tissue: TissueParameters, points_femur: Tensor, texture: FourierField, edges_femur: np.ndarray
) -> Tensor:
    """HU inside the femoral cortex: textured trabecular bone, fatty marrow in the canal."""
    trabecular = (
        tissue.trabecular_hu
        + tissue.trabecular_texture_hu * texture(points_femur, edges_femur)[:, 0]
        + COMPRESSIVE_TRABECULAE_HU * femur.compressive_trabeculae(points_femur)
    )
    return torch.lerp(trabecular, torch.full_like(trabecular, tissue.marrow_hu), femur.marrow_fraction(points_femur))
