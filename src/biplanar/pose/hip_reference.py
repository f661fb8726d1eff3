"""Correct one view's C-arm angle on a radiograph of the whole patient, using the hip bones of both sides.

``register --estimate-pose`` corrects each view separately (:func:`biplanar.registration.pipeline.correct_calibration`).
Before issue 15 it rotated the whole atlas (the CT box: soft tissue, femur, part of the pelvis) about
the view's isocentre to fit the radiograph. That works when the radiograph shows that box with its
edges (the simulator's ``grid`` scene), because the edges fix the view. A real radiograph shows the
patient around the box: body, thighs, both hips. There the search moved correct views by 14-42
degrees. Comparing only the femur does not fix it (measured, ``docs/pose.md``). The patient's femur
is turned by up to 10 degrees about each axis relative to the pelvis, and one view cannot tell that
pose from a wrong C-arm angle. Each per-view search then finds the femur's own pose (9-23 degrees).

So for such radiographs the reference is what stays fixed when the femur turns, and what a
radiograph shows on both sides (:func:`hip_reference`):

- **content**: the atlas's bone (attenuation above that of 200 HU, :func:`~biplanar.pose.estimate.bone_attenuation`)
  minus the femur, except its head. The femur label is kept only within the head's radius
  (+ :data:`HEAD_MARGIN_MM`) of the head centre: a ball, whatever pose the femur has. The pelvis is
  kept. The content fades out over :data:`TAPER_MM` towards the atlas box's faces, so that the box
  does not cut the bone with a sharp edge.
- **the other side**: the same content mirrored about the midsagittal plane, ``x = head_x -
  inter_acetabular / 2`` (:data:`INTER_ACETABULAR_MM`, the mean of the simulator's body model
  :class:`~biplanar.data.body_shape.BodyParameters`; medial is world -x for the right femur that
  registration works on). In a lateral view the two hips lie about 180 mm apart along the beam.
  A LAO/RAO error of ``a`` shifts the far hip against the near one by about ``180 sin(a)`` mm, for
  example 16 mm at 5 degrees.

The search (:func:`estimate_carm_rotation`), for one view:

1. **Region of interest**: the reference's projection at the stated view, dilated by
   :data:`ROI_MARGIN_MM` at the isocentre (:func:`reference_region`). The similarity is computed
   inside it only, so the body outline, the thighs, the femoral shafts and the soft tissue do not
   pull the search.
2. **Position**: the translation of the reference along the detector's two axes (horizontal and
   world z) that best matches the radiograph, by the optimisation baseline's multi-resolution
   search. This is the patient's position relative to the atlas, a nuisance.
3. **Angle**: from there, the rotation about the vertical axis (world z) through the isocentre
   together with the same two translations, at the finest level of the config only. This rotation
   is the LAO/RAO angle error. Cranio-caudal and in-plane rotations are not searched: they cost
   little Dice (at most 0.004 at 5.4 degrees, ``docs/clinical.md``), and freeing the cranio-caudal
   axis sent 1 to 3 of 8 LAT views stated 5 degrees off into false optima 6-17 degrees from the
   true view.
4. **Gate**: the rotation is applied only if it raises the similarity over the translations alone
   by at least ``min_gain`` (:data:`MIN_GAIN`, GC units). Otherwise the view is left as stated.
   An AP view shows one hip, so its LAO/RAO angle changes its image too little to be found: with
   the true geometry the search drifted up to 4.6 degrees there, for gains of at most 0.004.

Measured on body-scene data (``docs/pose.md``, ``examples/estimate_pose_study.py``), the threshold
was chosen on 16 cases (seeds 6060 and 6062). There the rotation's gain was at most 0.015 with the
true geometry (32 views) and at least 0.029 with the LAT view stated 5 degrees off (16 views). On 8
fresh cases (seed 6064) one of the 16 views with the true geometry, a LAT, passed the gate (gain
0.025, moved 3.1 degrees), and all 8 LAT views stated 5 degrees off were corrected (gains 0.035-0.104). With a LAT
error of 3 degrees the gain passed in 4 of 8 cases.

:func:`shows_atlas_box` tells the two kinds of radiograph apart. It is the gradient correlation
between the radiograph and the DRR of the atlas box filled with a constant. It gave 0.83-0.96 on
radiographs of the CT box alone and 0.08-0.18 on whole-body ones.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from biplanar.data.body_shape import BodyParameters, midline_column
from biplanar.geometry.projection import ProjectionView
from biplanar.geometry.transforms import rigid_matrix
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.physics.attenuation import MU_WATER_PER_MM
from biplanar.pose.baselines import METHODS, OptimisationConfig, PoseProblem, estimate_pose
from biplanar.pose.estimate import bone_attenuation, render_drrs, view_isocentre
from biplanar.pose.similarity import gradient_correlation

INTER_ACETABULAR_MM = BodyParameters.mean().inter_acetabular_mm  # between the two hip centres
HEAD_MARGIN_MM = 1.0  # femur label kept within the head's radius plus this of its centre
TAPER_MM = 8.0  # the reference fades to 0 over this distance towards the atlas box's faces
ROI_MARGIN_MM = 5.0  # the region of interest: the reference's projection dilated by this, at the isocentre
ROI_LEVEL = 0.01  # ... where its DRR exceeds this fraction of its maximum
MIN_GAIN = 0.02  # a rotation is applied if it raises the similarity by this over the translations alone
ATLAS_BOX_GC = 0.5  # a radiograph shows the atlas box (CT alone) when the box's DRR correlates above this

_TRANSLATIONS = (False, False, False, True, False, True)  # along the detector's horizontal axis and world z
_ROTATION_AND_TRANSLATIONS = (False, False, True, True, False, True)  # + the rotation about world z


@dataclass(frozen=True)
class HipReference:
    """The atlas's hip bones, both sides (module doc).

    Attributes:
        volume: ``(1, 1, I', J', K')`` attenuation, 1/mm, on ``grid``.
        grid: the atlas grid's lattice widened along x to hold the mirrored side.
        midline_x_mm: world x of the mirror plane (a voxel face of the lattice).
        atlas_grid: the atlas grid (its centre is the isocentre when a view has none).
    """

    volume: Tensor
    grid: VolumeGrid
    midline_x_mm: float
    atlas_grid: VolumeGrid


def _face_taper(grid: VolumeGrid, taper_mm: float) -> Tensor:
    """``(I, J, K)`` weight rising linearly from 0 at the box's faces to 1 at ``taper_mm`` inside."""
    weight = torch.ones(grid.shape, dtype=torch.float32)
    if taper_mm <= 0:
        return weight
    for axis, (size, spacing) in enumerate(zip(grid.shape, grid.spacing_mm)):
        index = np.arange(size)
        # the distance of each voxel centre from the nearer face, mm
        inside_mm = (np.minimum(index, size - 1 - index) + 0.5) * float(spacing)
        ramp = torch.from_numpy(np.clip(inside_mm / taper_mm, 0.0, 1.0)).float()
        shape = [1, 1, 1]
        shape[axis] = size
        weight = weight * ramp.reshape(shape)
    return weight


def hip_reference(
    atlas_mu: Tensor,
    femur_labels: Tensor,
    grid: VolumeGrid,
    head_centre_mm: np.ndarray | list[float],
    head_radius_mm: float,
    mu_water_per_mm: float = MU_WATER_PER_MM,
    inter_acetabular_mm: float = INTER_ACETABULAR_MM,
    taper_mm: float = TAPER_MM,
) -> HipReference:
    """The atlas's pelvis and femoral head with their mirror image about the midsagittal plane (module doc).

    Args:
        atlas_mu: ``(I, J, K)`` or ``(1, 1, I, J, K)`` atlas attenuation, 1/mm, on ``grid``.
        femur_labels: same shape, > 0.5 on the femur.
        grid: the atlas grid; axis-aligned RAS+ (voxel axes along world x, y, z).
        head_centre_mm: ``(3,)`` world mm of the atlas femur's head centre (its ``landmarks.json``).
        head_radius_mm: the head's radius, mm.
        mu_water_per_mm: attenuation of water, for the bone threshold.
        inter_acetabular_mm: distance between the two hip centres, mm.
        taper_mm: the fade towards the box's faces, mm.

    Raises:
        ValueError: the grid is not axis-aligned RAS+.
    """
    linear = grid.affine[:3, :3]
    if not np.allclose(linear, np.diag(np.diag(linear))) or np.any(np.diag(linear) <= 0):
        raise ValueError("grid: the hip reference needs an axis-aligned RAS+ grid (i, j, k along world +x, +y, +z)")
    volume = atlas_mu.reshape(grid.shape).float().cpu()
    femur = femur_labels.reshape(grid.shape).cpu() > 0.5
    centre = torch.as_tensor(np.asarray(head_centre_mm, dtype=np.float64))
    points = grid.voxel_centres_world(torch.float64)
    head = torch.linalg.norm(points - centre, dim=-1) <= head_radius_mm + HEAD_MARGIN_MM
    keep = (~femur | head).float()
    content = bone_attenuation(volume, mu_water_per_mm) * keep * _face_taper(grid, taper_mm)
    # The mirror plane on a voxel face (column m's low face), so that mirroring columns is exact:
    # column c of the atlas grid and column 2 m - 1 - c are mirror images.
    mirror_column = midline_column(grid, float(centre[0]) - inter_acetabular_mm / 2.0)
    columns = grid.shape[0]
    first = min(0, 2 * mirror_column - columns)
    last = max(columns, 2 * mirror_column)  # exclusive
    both = torch.zeros((last - first, *grid.shape[1:]), dtype=torch.float32)
    both[-first : -first + columns] = content
    mirrored_start = 2 * mirror_column - columns - first  # where the flipped columns begin
    both[mirrored_start : mirrored_start + columns] = torch.maximum(
        both[mirrored_start : mirrored_start + columns], content.flip(0)
    )
    offset = np.eye(4)
    offset[0, 3] = first
    spacing_x = float(grid.spacing_mm[0])
    midline_x = float(grid.affine[0, 3]) + (mirror_column - 0.5) * spacing_x
    return HipReference(
        both[None, None].to(atlas_mu.device),
        VolumeGrid((last - first, *grid.shape[1:]), grid.affine @ offset),
        midline_x,
        grid,
    )


def _pixels_per_mm(view: ProjectionView, point_mm: np.ndarray) -> float:
    """Detector pixels per mm of a short segment at ``point_mm`` across the beam."""
    across = carm_frame(view)[:, 0]
    ends = torch.from_numpy(np.stack([point_mm, point_mm + across]))
    uv, _ = view.project(ends)
    return float(torch.linalg.norm(uv[1] - uv[0]))


def reference_region(reference: HipReference, view: ProjectionView, margin_mm: float = ROI_MARGIN_MM) -> np.ndarray:
    """``(rows, cols)`` bool: where the reference projects in ``view`` (at the identity), dilated by
    ``margin_mm`` at the view's isocentre."""
    drr = render_drrs(reference.volume, reference.grid, {"view": view}, torch.eye(4))["view"].cpu().numpy()
    region = drr > ROI_LEVEL * max(float(drr.max()), 1e-12)
    radius = round(margin_mm * _pixels_per_mm(view, view_isocentre(view, reference.atlas_grid.centre_world)))
    if radius < 1:
        return region
    offsets = np.arange(-radius, radius + 1)
    disk = offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2
    return ndimage.binary_dilation(region, structure=disk)


def carm_frame(view: ProjectionView) -> np.ndarray:
    """``(3, 3)`` orthonormal, right-handed columns: the detector's horizontal axis (across the beam),
    the beam's horizontal direction, world +z. A view looking along z uses world x and y."""
    across = np.cross(view.principal_direction, [0.0, 0.0, 1.0])
    if np.linalg.norm(across) < 1e-6:
        return np.eye(3)
    across = across / np.linalg.norm(across)
    return np.stack([across, np.cross([0.0, 0.0, 1.0], across), [0.0, 0.0, 1.0]], axis=1)


@dataclass
class CarmFrameProblem(PoseProblem):
    """A :class:`~biplanar.pose.baselines.PoseProblem` whose parameters are about the axes of ``frame``
    (world directions as columns) instead of world x, y, z: ``Delta = B rigid(x) B^T`` about the
    rotation centre, ``B`` the frame."""

    frame: np.ndarray = field(default_factory=lambda: np.eye(3))

    def delta(self, x: Tensor) -> Tensor:
        """``(..., 6)`` -> ``(..., 4, 4)`` ``Delta(x)``, ``x`` in degrees and mm along the frame's axes."""
        basis = torch.eye(4, dtype=x.dtype, device=x.device)
        basis[:3, :3] = torch.as_tensor(self.frame, dtype=x.dtype, device=x.device)
        params = torch.cat([torch.deg2rad(x[..., :3]), x[..., 3:]], dim=-1)
        local = rigid_matrix(params, basis[:3, :3].T @ self.moved_centre.to(x))
        return basis @ local @ basis.T


@dataclass
class CarmRotation:
    """One view's LAO/RAO correction (:func:`estimate_carm_rotation`).

    Attributes:
        matrix: ``(4, 4)`` float64 correction ``A_v`` moving the atlas: the rotation about world z
            through the isocentre, or the identity when not applied. The corrected view is ``P_v A_v``.
        found_deg: the rotation the search found, degrees about +z (applied or not).
        applied: whether its gain passed ``min_gain``.
        similarity_translations: the similarity with the translations alone (step 2).
        similarity: the similarity with the rotation and translations (step 3).
        region_fraction: the fraction of the detector inside the region of interest.
        time_s: wall-clock seconds.
    """

    matrix: Tensor
    found_deg: float
    applied: bool
    similarity_translations: float
    similarity: float
    region_fraction: float
    time_s: float

    @property
    def gain(self) -> float:
        """The rotation's gain in similarity over the translations alone."""
        return self.similarity - self.similarity_translations


def estimate_carm_rotation(
    reference: HipReference,
    radiograph: Tensor | np.ndarray,
    view: ProjectionView,
    method: str = "opt-gc",
    config: OptimisationConfig | None = None,
    min_gain: float = MIN_GAIN,
    progress: Callable[[str], None] | None = None,
) -> CarmRotation:
    """The LAO/RAO correction of one view against the hip reference (module doc, steps 1-4).

    Args:
        reference: :func:`hip_reference` of the atlas.
        radiograph: ``(rows, cols)`` line integrals of ``view``'s ``image_shape``, unmasked.
        view: the stated view; rotations are about its isocentre (:func:`~biplanar.pose.estimate.view_isocentre`,
            else the atlas grid's centre).
        method: ``opt-gc``, ``opt-ncc`` or ``opt-ngi``: the similarity (``min_gain`` is in its units).
        config: the search's settings (default :class:`~biplanar.pose.baselines.OptimisationConfig`);
            step 3 runs at its finest level with the translation steps scaled by ``level_sigma_factor``.
        min_gain: the gate (step 4).
        progress: called with a line of text after each stage.

    Returns:
        the correction and its record.
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    started = time.perf_counter()
    config = replace(config or OptimisationConfig(), similarity=METHODS[method])
    image = torch.as_tensor(np.asarray(radiograph, dtype=np.float32)).float()
    region = reference_region(reference, view)
    mask = torch.from_numpy(region.astype(np.float32))
    isocentre = view_isocentre(view, reference.atlas_grid.centre_world)
    name = view.name or "view"

    def problem(settings: OptimisationConfig, initial: Tensor | None, free: tuple[bool, ...]) -> CarmFrameProblem:
        return CarmFrameProblem(
            reference.volume,
            reference.grid,
            {name: image},
            {name: view},
            initial,
            settings,
            {name: mask},
            free,
            isocentre,
            frame=carm_frame(view),
        )

    position = estimate_pose(problem(config, None, _TRANSLATIONS), f"{method} translations", progress)
    angle_config = replace(
        config, levels_mm=config.levels_mm[-1:], sigma_mm=config.sigma_mm * config.level_sigma_factor
    )
    angle = estimate_pose(
        problem(angle_config, position.matrix, _ROTATION_AND_TRANSLATIONS), f"{method} LAO/RAO", progress
    )
    rotation = angle.matrix[:3, :3]
    found = math.atan2(float(rotation[1, 0]), float(rotation[0, 0]))
    applied = angle.similarity - position.similarity >= min_gain
    matrix = torch.eye(4, dtype=torch.float64)
    if applied:
        centre = torch.as_tensor(isocentre, dtype=torch.float64)
        matrix = rigid_matrix(torch.tensor([0.0, 0.0, found, 0.0, 0.0, 0.0], dtype=torch.float64), centre)
    return CarmRotation(
        matrix=matrix,
        found_deg=math.degrees(found),
        applied=bool(applied),
        similarity_translations=position.similarity,
        similarity=angle.similarity,
        region_fraction=float(region.mean()),
        time_s=time.perf_counter() - started,
    )


def atlas_box_gc(radiograph: Tensor | np.ndarray, view: ProjectionView, grid: VolumeGrid) -> float:
    """Gradient correlation of the radiograph with the DRR of ``grid``'s box filled with a constant."""
    box = torch.ones((1, 1, *grid.shape))
    drr = render_drrs(box, grid, {"view": view}, torch.eye(4))["view"]
    image = torch.as_tensor(np.asarray(radiograph, dtype=np.float32)).float()
    return float(gradient_correlation(image[None, None], drr[None, None].float())[0])


def shows_atlas_box(
    radiograph: Tensor | np.ndarray, view: ProjectionView, grid: VolumeGrid, threshold: float = ATLAS_BOX_GC
) -> bool:
    """Whether the radiograph shows the atlas box's edges (a DRR of a CT the size of the atlas grid,
    such as the simulator's ``grid`` scene), rather than a patient around it (module doc)."""
    return atlas_box_gc(radiograph, view, grid) >= threshold
