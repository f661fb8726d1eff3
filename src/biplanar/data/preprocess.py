"""Real-CT preprocessing: one femur of a CT and its label map, brought into the phantom's frame.

The paper's steps (Van Houtte et al. 2022): extract one femur from a CT and a label map (e.g.
TotalSegmentator's ``femur_left`` / ``femur_right``), build its reference frame from the shaft and
neck axes, rotate it so that the AP and lateral views align with the image axes, crop around the
femoral head and resample to the atlas grid, left femurs mirrored to right ones.

Frames:

- ``input world``: the CT's NIfTI RAS+ mm (its affine may be oblique, anisotropic or flipped).
- ``femur frame``: :mod:`biplanar.data.femur_shape` (origin the head centre, ``l`` lateral,
  ``a`` anterior, ``s`` proximal along the shaft axis), built here from the measured axes.
- ``output world``: the preset grid's RAS+ mm (:mod:`biplanar.data.grid_presets`), the phantom's
  world. The femur frame is placed exactly as :func:`biplanar.data.make_atlas` places the atlas
  femur (``SubjectSpec.atlas().femur_to_world()``): head centre on the atlas's head centre,
  shaft axis 7 degrees off vertical in the coronal plane, and the neck at the atlas's anteversion
  (``FemurParameters.mean().anteversion_deg``) from the medial direction, so a preprocessed femur
  lands on the atlas femur. A proximal CT has no femoral condyles, so the rotation about the shaft
  axis comes from the neck: the measured anteversion is not kept (``frame.json`` keeps the axes).

Measurements (all on the label's largest connected part, in input world mm):

- shaft axis: principal axis (PCA) of the label's voxels between ``SHAFT_SLAB_MM`` below the head
  centre (below the lesser trochanter, above the mid-shaft bow), the slab re-cut perpendicular to
  the current axis until it settles; proximal direction.
- head: least-squares sphere through the label's surface (midpoints of voxel edges crossing it),
  started from the label point farthest from a first shaft axis (always on the head, the most
  medial part of a proximal femur) and trimmed to a shell around the sphere, which drops the neck.
- neck axis: the line from the head centre through the centroids of the neck between
  ``NECK_SECTION_RADII`` head radii from the head centre, re-cut perpendicular to the current axis
  until it settles; its junction is the point of the shaft axis closest to it.

Left femurs: the input world is mirrored by ``X = diag(-1, 1, 1)`` (``x -> -x``) before the femur
frame is built, so every output is a right femur. The axes in :class:`FemurAxes` stay in the
unmirrored input world; the output-to-input matrix is ``X @ A`` with ``A`` the rigid map from
the output world to the mirrored input world (determinant -1 for a left femur, +1 for a right).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from biplanar.data.femur_shape import FemurParameters
from biplanar.data.grid_presets import grid_preset
from biplanar.data.phantom import SubjectSpec
from biplanar.errors import InputError
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.io.atomic import atomic_folder, require_empty_out_dir
from biplanar.io.json_files import write_json
from biplanar.io.volumes import read_volume, write_volume

SIDES = ("left", "right")
AIR_HU = -1000.0  # CT value outside the input volume
LABEL_FRACTION = 0.5  # an output voxel is femur where the trilinear label fraction reaches this
# Shaft slab, mm below the head centre along the shaft: under the lesser trochanter (whose lowest
# part reaches about 81 mm in the phantom population) and above the bow of the mid-diaphysis.
SHAFT_SLAB_MM = (85.0, 150.0)
MIN_SHAFT_SLAB_MM = 40.0  # shorter slabs make the PCA ill-conditioned (length^2/12 ~ radius^2/4)
CUT_MARGIN_MM = 8.0  # slab kept this far above the label's lowest point: an oblique cut
PROXIMAL_LENGTH_MM = 200.0  # only the top of a full-length femur is used
FIRST_SHAFT_MM = 50.0  # length of the lowest part of that top used for the first shaft axis
HEAD_SEARCH_MM = 80.0  # the head is searched within this distance of the proximal end
HEAD_RADIUS_RANGE_MM = (15.0, 35.0)
# Neck centroids between these distances from the head centre (head radii): the sections there
# are the head's and the neck's, both centred on the neck axis, short of the trochanters.
NECK_SECTION_RADII = (0.7, 1.0)
NECK_SLICE_MM = 2.0
ITERATIONS = 8
CONVERGED_DEG = 0.01


@dataclass(frozen=True)
class FemurAxes:
    """The femur's measured axes, input world mm (directions: unit vectors).

    Attributes:
        head_centre_mm: ``(3,)`` centre of the fitted head sphere.
        head_radius_mm: its radius.
        shaft_axis_point_mm: ``(3,)`` the point of the shaft axis closest to the head centre.
        shaft_axis: ``(3,)`` proximal direction of the shaft axis.
        neck_axis: ``(3,)`` direction of the neck axis, from the shaft towards the head centre.
    """

    head_centre_mm: np.ndarray
    head_radius_mm: float
    shaft_axis_point_mm: np.ndarray
    shaft_axis: np.ndarray
    neck_axis: np.ndarray

    @property
    def neck_shaft_junction_mm(self) -> np.ndarray:
        """``(3,)`` the point of the shaft axis closest to the neck axis."""
        s, n = self.shaft_axis, self.neck_axis
        gap = self.head_centre_mm - self.shaft_axis_point_mm  # perpendicular to s
        # Closest points of p + t s and h + u n: t = (s.n)(n.gap) / (1 - (s.n)^2), as gap.s = 0.
        cos = s @ n
        return self.shaft_axis_point_mm + (cos * (n @ gap) / (1.0 - cos**2)) * s

    @property
    def neck_shaft_angle_deg(self) -> float:
        """Angle between the neck axis (towards the head) and the shaft axis (distal), degrees."""
        return 180.0 - _angle_deg(self.neck_axis, self.shaft_axis)

    @property
    def femoral_offset_mm(self) -> float:
        """Distance from the head centre to the shaft axis, mm."""
        return float(np.linalg.norm(self.head_centre_mm - self.shaft_axis_point_mm))


@dataclass(frozen=True)
class FemurFrame:
    """The recovered frame of one femur.

    Attributes:
        axes: the measured axes, input world mm.
        side: ``"left"`` or ``"right"``, as given.
        output_to_input: ``(4, 4)`` homogeneous map from output world mm to input world mm
            (mirrors x for a left femur, see the module doc).
    """

    axes: FemurAxes
    side: str
    output_to_input: np.ndarray

    def output_axes(self) -> FemurAxes:
        """The measured axes carried to the output world (mirrored for a left femur)."""
        to_output = np.linalg.inv(self.output_to_input)
        rotation, shift = to_output[:3, :3], to_output[:3, 3]
        axes = self.axes
        return FemurAxes(
            head_centre_mm=rotation @ axes.head_centre_mm + shift,
            head_radius_mm=axes.head_radius_mm,
            shaft_axis_point_mm=rotation @ axes.shaft_axis_point_mm + shift,
            shaft_axis=rotation @ axes.shaft_axis,
            neck_axis=rotation @ axes.neck_axis,
        )

    def to_dict(self) -> dict[str, object]:
        """Field name -> value, vectors and matrices as lists (JSON-ready)."""
        axes = self.axes
        return {
            "side": self.side,
            "head_centre_mm": axes.head_centre_mm.tolist(),
            "head_radius_mm": axes.head_radius_mm,
            "shaft_axis": axes.shaft_axis.tolist(),
            "shaft_axis_point_mm": axes.shaft_axis_point_mm.tolist(),
            "neck_axis": axes.neck_axis.tolist(),
            "neck_shaft_junction_mm": axes.neck_shaft_junction_mm.tolist(),
            "neck_shaft_angle_deg": axes.neck_shaft_angle_deg,
            "femoral_offset_mm": axes.femoral_offset_mm,
            "output_to_input": self.output_to_input.tolist(),
        }


@dataclass(frozen=True)
class PreprocessResult:
    """One preprocessed femur on a preset grid.

    Attributes:
        ct_hu: ``(I, J, K)`` float32 HU on ``grid`` (``AIR_HU`` outside the input CT).
        labels: ``(I, J, K)`` uint8, 1 = the femur, on ``grid``.
        grid: the preset grid (output world, RAS+ mm).
        frame: the recovered frame.
    """

    ct_hu: np.ndarray
    labels: np.ndarray
    grid: VolumeGrid
    frame: FemurFrame


# --- measurements ------------------------------------------------------------------------------
def _to_world(grid: VolumeGrid, points_vox: np.ndarray) -> np.ndarray:
    """``(N, 3)`` voxel indices -> world mm."""
    return points_vox @ grid.affine[:3, :3].T + grid.affine[:3, 3]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected part of a boolean ``(I, J, K)`` mask (labelled within its box)."""
    box = ndimage.find_objects(mask.astype(np.uint8))
    if not box:
        return mask
    parts, count = ndimage.label(mask[box[0]], structure=np.ones((3, 3, 3)))
    if count <= 1:
        return mask
    largest = np.zeros_like(mask)
    largest[box[0]] = parts == 1 + int(np.argmax(np.bincount(parts.ravel())[1:]))
    return largest


def _surface_points(mask: np.ndarray, grid: VolumeGrid) -> np.ndarray:
    """``(M, 3)`` world mm of the midpoints of voxel edges whose ends the mask tells apart."""
    midpoints = []
    for axis in range(3):
        edges_vox = np.argwhere(np.diff(mask, axis=axis)).astype(np.float64)
        edges_vox[:, axis] += 0.5
        midpoints.append(edges_vox)
    return _to_world(grid, np.concatenate(midpoints))


def _principal_axis(points: np.ndarray, towards: np.ndarray, origin: np.ndarray | None = None) -> np.ndarray:
    """``(3,)`` unit direction of largest spread of ``(N, 3)`` points about ``origin`` (default:
    their centroid), signed along ``towards``."""
    origin = points.mean(axis=0) if origin is None else origin
    _, _, vt = np.linalg.svd(points - origin, full_matrices=False)
    return vt[0] if vt[0] @ towards >= 0 else -vt[0]


def _settle(update: Callable[[np.ndarray], np.ndarray], axis: np.ndarray) -> np.ndarray:
    """Iterate ``axis = update(axis)`` until it turns by less than ``CONVERGED_DEG``."""
    for _ in range(ITERATIONS):
        new = update(axis)
        settled = _angle_deg(new, axis) < CONVERGED_DEG
        axis = new
        if settled:
            break
    return axis


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(a @ b, -1.0, 1.0))))


def _sphere(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Algebraic least-squares sphere ``|p|^2 = 2 c.p + r^2 - |c|^2`` of ``(N, 3)`` points."""
    design = np.column_stack([2.0 * points, np.ones(len(points))])
    solution = np.linalg.lstsq(design, np.einsum("ij,ij->i", points, points), rcond=None)[0]
    centre = solution[:3]
    return centre, float(np.sqrt(max(solution[3] + centre @ centre, 0.0)))


def _fit_head(surface: np.ndarray, centre: np.ndarray, radius: float, shell_mm: float) -> tuple[np.ndarray, float]:
    """Sphere fit to the surface points within a shell around ``(centre, radius)``, shrinking the
    shell from a quarter of the radius to ``shell_mm`` so the neck's surface drops out."""
    for shell in np.geomspace(radius / 4.0, shell_mm, ITERATIONS):
        near = np.abs(np.linalg.norm(surface - centre, axis=1) - radius) < shell
        if near.sum() < 20:
            raise InputError("too few surface points around the femoral head")
        centre, radius = _sphere(surface[near])
    return centre, radius


def _slab(points: np.ndarray, head: np.ndarray, proximal: np.ndarray, slab_mm: tuple[float, float]) -> np.ndarray:
    """The points between ``slab_mm`` below ``head`` along the shaft direction ``proximal``."""
    depth = (head - points) @ proximal
    slab = points[(depth >= slab_mm[0]) & (depth <= slab_mm[1])]
    if len(slab) < 20:
        raise InputError("too few shaft voxels to fit the shaft axis")
    return slab


def _fit_shaft(
    points: np.ndarray, head: np.ndarray, proximal: np.ndarray, slab_mm: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Principal axis of the points ``slab_mm`` below ``head`` along the shaft, the slab re-cut
    perpendicular to the new axis until it settles.

    Returns:
        ``(3,)`` world mm of the slab's centroid (on the axis), ``(3,)`` proximal unit direction.
    """
    proximal = _settle(lambda axis: _principal_axis(_slab(points, head, axis, slab_mm), axis), proximal)
    return _slab(points, head, proximal, slab_mm).mean(axis=0), proximal


def _fit_neck(points: np.ndarray, head: np.ndarray, radius: float, towards: np.ndarray) -> np.ndarray:
    """``(3,)`` unit direction from the head centre along the neck (towards the shaft): the line
    through ``head`` closest to the centroids of the neck's slices, re-cut until it settles."""
    relative = points - head
    # Every slice lies within sqrt(1.0^2 + 1) < 2 head radii of the head centre.
    relative = relative[np.einsum("ij,ij->i", relative, relative) < (2.0 * radius) ** 2]
    depths = np.arange(NECK_SECTION_RADII[0] * radius, NECK_SECTION_RADII[1] * radius, NECK_SLICE_MM)

    def update(axis: np.ndarray) -> np.ndarray:
        along = relative @ axis
        across = np.linalg.norm(relative - along[:, None] * axis, axis=1)
        slices = [relative[(np.abs(along - depth) < NECK_SLICE_MM / 2) & (across < radius)] for depth in depths]
        centroids = np.array([part.mean(axis=0) for part in slices if len(part) > 0])
        if len(centroids) < 2:
            raise InputError("no femoral neck next to the head")
        return _principal_axis(centroids, axis, origin=np.zeros(3))  # a line through the head

    return _settle(update, towards)


def _first_shaft_axis(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A first shaft axis and the label's points near the proximal end.

    The label's long axis (signed superior: a CT's patient axis is about its z) gives the proximal
    end; the lowest ``FIRST_SHAFT_MM`` of its top ``PROXIMAL_LENGTH_MM`` are shaft, so their
    centroid and principal axis give a first shaft axis.

    Returns:
        ``(3,)`` world mm of a point on the axis, ``(3,)`` its proximal unit direction, and
        ``(N, 3)`` the points within ``PROXIMAL_LENGTH_MM`` of the top.
    """
    long_axis = _principal_axis(points, np.array([0.0, 0.0, 1.0]))
    height = points @ long_axis
    top_part = height > height.max() - PROXIMAL_LENGTH_MM
    points, height = points[top_part], height[top_part]
    lowest = points[height < height.min() + FIRST_SHAFT_MM]
    return lowest.mean(axis=0), _principal_axis(lowest, long_axis), points


def _first_head(points: np.ndarray, axis_point: np.ndarray, shaft: np.ndarray) -> np.ndarray:
    """``(3,)`` first head centre: one mean head radius in from the label point farthest from the
    shaft axis ``axis_point + t shaft`` within ``HEAD_SEARCH_MM`` of the proximal end (the most
    medial point of the femoral head)."""
    height = points @ shaft
    proximal = points[height > height.max() - HEAD_SEARCH_MM]
    relative = proximal - axis_point
    across = relative - np.outer(relative @ shaft, shaft)
    farthest = int(np.argmax(np.linalg.norm(across, axis=1)))
    outward = across[farthest] / np.linalg.norm(across[farthest])
    return proximal[farthest] - FemurParameters.mean().head_radius_mm * outward


def _check_head(centre: np.ndarray, radius: float, grid: VolumeGrid) -> None:
    """Raise unless the head sphere has a femoral head's size and lies inside the CT."""
    low, high = HEAD_RADIUS_RANGE_MM
    if not low <= radius <= high:
        raise InputError(
            f"the head sphere fit gives a radius of {radius:.1f} mm, not a femoral head ({low:g} to {high:g} mm)"
        )
    centre_vox = np.linalg.solve(grid.affine[:3, :3], centre - grid.affine[:3, 3])
    margin_vox = radius / grid.spacing_mm
    inside = (centre_vox - margin_vox >= -0.5) & (centre_vox + margin_vox <= np.array(grid.shape) - 0.5)
    if not inside.all():
        raise InputError("the femoral head is cut off by the CT's field of view")


def _shaft_slab(points: np.ndarray, head: np.ndarray, shaft: np.ndarray) -> tuple[float, float]:
    """The slab (mm below the head centre) for the shaft axis; raise if the femur is cut too short."""
    reach = float(((head - points) @ shaft).max())
    slab = (SHAFT_SLAB_MM[0], min(SHAFT_SLAB_MM[1], reach - CUT_MARGIN_MM))
    if slab[1] - slab[0] < MIN_SHAFT_SLAB_MM:
        needed = SHAFT_SLAB_MM[0] + MIN_SHAFT_SLAB_MM + CUT_MARGIN_MM
        raise InputError(
            f"the femur is cut off {reach:.0f} mm below the head centre; the shaft "
            f"axis needs it to reach {needed:.0f} mm"
        )
    return slab


def measure_femur_axes(femur_mask: np.ndarray, grid: VolumeGrid, name: str = "femur_mask") -> FemurAxes:
    """Measure the head sphere, shaft axis and neck axis of a femur label (see the module doc).

    Args:
        femur_mask: ``(I, J, K)`` boolean (or 0/1) mask of one femur on ``grid``; only its largest
            connected part is used.
        grid: the CT's grid (input world, RAS+ mm).
        name: what error messages call the mask.

    Raises:
        InputError: the mask is too small or cut off (the message starts with ``name``).
    """
    return _measure(_largest_component(np.asarray(femur_mask, dtype=bool)), grid, name)


def _measure(mask: np.ndarray, grid: VolumeGrid, name: str) -> FemurAxes:
    """:func:`measure_femur_axes` of a connected boolean ``mask``."""
    with _errors_named(name):
        points = _to_world(grid, np.argwhere(mask).astype(np.float64))
        if len(points) < 1000:
            raise InputError(f"only {len(points)} voxels, too small for a femur")
        axis_point, shaft, proximal = _first_shaft_axis(points)
        head, radius = _fit_head(
            _surface_points(mask, grid),
            _first_head(proximal, axis_point, shaft),
            FemurParameters.mean().head_radius_mm,
            max(1.0, float(grid.spacing_mm.max())),
        )
        _check_head(head, radius, grid)
        centre, shaft = _fit_shaft(points, head, shaft, _shaft_slab(points, head, shaft))
        foot = centre + ((head - centre) @ shaft) * shaft
        # First neck direction: the mean neck-shaft angle in the plane of the shaft and the head.
        medial = (head - foot) / np.linalg.norm(head - foot)
        angle = np.radians(FemurParameters.mean().neck_shaft_angle_deg)
        neck = _fit_neck(points, head, radius, np.cos(angle) * shaft - np.sin(angle) * medial)
    return FemurAxes(
        head_centre_mm=head, head_radius_mm=radius, shaft_axis_point_mm=foot, shaft_axis=shaft, neck_axis=-neck
    )


@contextmanager
def _errors_named(name: str) -> Iterator[None]:
    """Prefix the message of an :class:`InputError` raised inside the block with ``name``."""
    try:
        yield
    except InputError as error:
        raise InputError(f"{name}: {error}") from None


# --- the frame and the resampling ---------------------------------------------------------------
def _mirror(side: str) -> np.ndarray:
    """``(3, 3)`` the mirror ``X`` of ``side`` (module doc): ``diag(-1, 1, 1)`` for a left femur."""
    if side not in SIDES:
        raise InputError(f"side: expected one of {SIDES}, got {side!r}")
    return np.diag([-1.0 if side == "left" else 1.0, 1.0, 1.0])


def _check_side(side: str, axes: FemurAxes) -> None:
    """Raise unless the head lies medially of the shaft for ``side``: -x (RAS+) for a right femur."""
    s = axes.shaft_axis
    medial_x = (axes.neck_axis - (axes.neck_axis @ s) * s)[0]  # the neck's x, across the shaft
    found = "right" if medial_x < 0 else "left"
    if side != found:
        raise InputError(
            f"side: {side!r} given, but the femoral head lies towards "
            f"{'-' if medial_x < 0 else '+'}x of the shaft (RAS+): a {found} femur"
        )


@lru_cache(maxsize=1)
def _atlas_femur_to_world() -> np.ndarray:
    """``(4, 4)`` the atlas's femur frame -> output world mm (as :func:`make_atlas` places it)."""
    matrix = SubjectSpec.atlas().femur_to_world()
    matrix.setflags(write=False)  # shared by every call
    return matrix


def femur_frame(axes: FemurAxes, side: str) -> FemurFrame:
    """The frame that places the femur of ``axes`` on the atlas femur (see the module doc).

    The femur frame's ``s`` is the shaft axis; ``l`` and ``a`` are turned about ``s`` so that the
    neck axis, projected across the shaft, points medially and anteriorly at the atlas's
    anteversion ``theta`` (``-cos(theta) l + sin(theta) a``, :mod:`biplanar.data.femur_shape`).
    """
    mirror = _mirror(side)
    _check_side(side, axes)
    proximal, neck = mirror @ axes.shaft_axis, mirror @ axes.neck_axis
    towards_head = neck - (neck @ proximal) * proximal
    towards_head /= np.linalg.norm(towards_head)
    turned = np.cross(proximal, towards_head)  # towards_head turned +90 degrees about s
    theta = np.radians(FemurParameters.mean().anteversion_deg)  # the atlas femur's
    # towards_head = (-cos, sin, 0) and turned = (-sin, -cos, 0) in (l, a, s): solve for l and a.
    lateral = -np.cos(theta) * towards_head - np.sin(theta) * turned
    anterior = np.sin(theta) * towards_head - np.cos(theta) * turned
    femur_to_mirrored = np.eye(4)
    femur_to_mirrored[:3, :3] = np.column_stack([lateral, anterior, proximal])
    femur_to_mirrored[:3, 3] = mirror @ axes.head_centre_mm
    mirror_h = np.eye(4)
    mirror_h[:3, :3] = mirror
    output_to_input = mirror_h @ femur_to_mirrored @ np.linalg.inv(_atlas_femur_to_world())
    return FemurFrame(axes=axes, side=side, output_to_input=output_to_input)


def resample(
    volume: np.ndarray, source: VolumeGrid, target: VolumeGrid, target_to_source: np.ndarray, outside: float = 0.0
) -> np.ndarray:
    """Trilinear resampling of a volume onto another grid through a world-to-world map.

    Args:
        volume: ``(I, J, K)`` values on ``source``.
        source: the volume's grid (source world mm).
        target: the output grid (target world mm).
        target_to_source: ``(4, 4)`` homogeneous map from target world mm to source world mm
            (a pull: ``out(q) = volume(target_to_source @ q)``).
        outside: the value beyond the source's box of voxel centres.

    Returns:
        ``(I', J', K')`` float32 on ``target``.
    """
    if tuple(volume.shape) != source.shape:
        raise ValueError(f"volume: expected shape {source.shape}, got {tuple(volume.shape)}")
    source, volume = _crop_to(source, volume, target, target_to_source)
    to_grid = torch.as_tensor(source.world_to_grid_matrix() @ target_to_source)
    points = target.voxel_centres_world(torch.float64)  # (I', J', K', 3) target world mm
    sample_grid = points @ to_grid[:3, :3].T + to_grid[:3, 3]  # grid_sample coordinates (k, j, i)
    shifted = torch.as_tensor(volume, dtype=torch.float32) - outside  # zero padding -> outside
    sampled = F.grid_sample(
        shifted[None, None], sample_grid[None].float(), mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return (sampled[0, 0] + outside).numpy()


def _crop_to(
    source: VolumeGrid, volume: np.ndarray, target: VolumeGrid, target_to_source: np.ndarray
) -> tuple[VolumeGrid, np.ndarray]:
    """The part of ``volume`` (and its grid) that the target's box reaches, one voxel of margin."""
    corners = target.corners_world() @ target_to_source[:3, :3].T + target_to_source[:3, 3]
    corners_vox = np.linalg.solve(source.affine[:3, :3], (corners - source.affine[:3, 3]).T).T
    size = np.array(source.shape)
    # At least two voxels per axis (where the source has them): a one-voxel axis would be
    # stretched over the whole target by grid_sample's align_corners convention.
    low = np.clip(np.floor(corners_vox.min(axis=0)).astype(int) - 1, 0, np.maximum(size - 2, 0))
    high = np.clip(np.ceil(corners_vox.max(axis=0)).astype(int) + 2, np.minimum(low + 2, size), size)
    affine = source.affine.copy()
    affine[:3, 3] = source.affine[:3, :3] @ low + source.affine[:3, 3]
    crop = volume[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
    return VolumeGrid(tuple(high - low), affine), crop


def preprocess_arrays(
    ct_hu: np.ndarray,
    ct_grid: VolumeGrid,
    femur_mask: np.ndarray,
    side: str,
    preset: str = "lite",
    mask_name: str = "femur_mask",
    keep_side: bool = False,
) -> PreprocessResult:
    """One femur of a CT in the atlas's frame on a preset grid (no file I/O).

    Args:
        ct_hu: ``(I, J, K)`` HU on ``ct_grid``.
        ct_grid: the CT's grid (input world, RAS+ mm; any affine).
        femur_mask: ``(I, J, K)`` boolean or 0/1, the femur (largest connected part used).
        side: ``"left"`` (mirrored to a right femur) or ``"right"``.
        preset: the output grid, a name of :data:`biplanar.data.GRID_PRESETS`.
        mask_name: what error messages call ``femur_mask``.
        keep_side: keep a left femur left (not mirrored): it lands on the atlas femur mirrored
            about the grid's midsagittal plane ``x = 0`` (``output_to_input`` then has
            determinant +1).

    Returns:
        the CT (trilinear, ``AIR_HU`` outside the input) and the label (trilinear fraction
        ``>= LABEL_FRACTION``) on the preset grid, and the recovered frame.

    Raises:
        InputError: bad shapes, side or preset, or a femur too small, cut off or of the other side.
    """
    for name, array in (("ct_hu", ct_hu), ("femur_mask", femur_mask)):
        if tuple(np.shape(array)) != ct_grid.shape:
            raise InputError(f"{name}: expected shape {ct_grid.shape} (the CT grid's), got {tuple(np.shape(array))}")
    try:
        grid = grid_preset(preset)
    except ValueError as error:
        raise InputError(f"preset: {error}") from None
    _mirror(side)  # a bad side fails before the measurements
    mask = _largest_component(np.asarray(femur_mask, dtype=bool))
    frame = femur_frame(_measure(mask, ct_grid, mask_name), side)
    if keep_side and side == "left":
        frame = dataclasses.replace(frame, output_to_input=frame.output_to_input @ np.diag([-1.0, 1.0, 1.0, 1.0]))
    ct_out = resample(np.asarray(ct_hu, dtype=np.float32), ct_grid, grid, frame.output_to_input, AIR_HU)
    fraction = resample(mask.astype(np.float32), ct_grid, grid, frame.output_to_input)
    return PreprocessResult(ct_hu=ct_out, labels=(fraction >= LABEL_FRACTION).astype(np.uint8), grid=grid, frame=frame)


def read_ct_and_labels(ct_path: str | Path, labels_path: str | Path) -> tuple[np.ndarray, VolumeGrid, np.ndarray]:
    """A CT, its grid and its label map.

    Returns:
        ``(I, J, K)`` float32 HU, the CT's grid (input world mm), ``(I, J, K)`` float32 labels.

    Raises:
        InputError: missing or unreadable files, CT and labels on different grids.
    """
    ct_hu, ct_grid = read_volume(ct_path)
    labels, labels_grid = read_volume(labels_path)
    if labels_grid.shape != ct_grid.shape or not np.allclose(labels_grid.affine, ct_grid.affine, atol=1e-4):
        raise InputError(
            f"{labels_path}: grid (shape {labels_grid.shape}) differs from the CT's "
            f"{ct_path} (shape {ct_grid.shape}): shapes and affines must match"
        )
    return ct_hu, ct_grid, labels


def femur_mask(labels: np.ndarray, label: int, labels_path: str | Path) -> np.ndarray:
    """``(I, J, K)`` bool: where ``labels`` (read from ``labels_path``) holds ``label``.

    Raises:
        InputError: ``label`` absent (the message lists the values present).
    """
    mask = labels == label
    if not mask.any():
        present = np.unique(labels).astype(int)
        raise InputError(
            f"{labels_path}: label {label} not present (values: "
            f"{', '.join(map(str, present[:20]))}{' ...' if len(present) > 20 else ''})"
        )
    return mask


def read_femur(ct_path: str | Path, labels_path: str | Path, label: int) -> tuple[np.ndarray, VolumeGrid, np.ndarray]:
    """A CT, its grid and the mask of femur ``label`` of its label map.

    Returns:
        ``(I, J, K)`` float32 HU, the CT's grid (input world mm), ``(I, J, K)`` bool mask.

    Raises:
        InputError: missing or unreadable files, CT and labels on different grids, ``label`` absent.
    """
    ct_hu, ct_grid, labels = read_ct_and_labels(ct_path, labels_path)
    return ct_hu, ct_grid, femur_mask(labels, label, labels_path)


def preprocess_femur(
    ct_path: str | Path, labels_path: str | Path, label: int, side: str, out_dir: str | Path, preset: str = "lite"
) -> PreprocessResult:
    """Preprocess femur ``label`` of a CT and its label map; write the result atomically.

    Writes ``out_dir/ct.nii.gz`` (float32 HU), ``out_dir/labels.nii.gz`` (uint8, 1 = femur) on the
    preset grid and ``out_dir/frame.json`` (:meth:`FemurFrame.to_dict` plus ``label`` and
    ``preset``: axes in the input CT's world mm, the output-to-input matrix, the side).

    Args:
        ct_path: NIfTI CT in HU.
        labels_path: NIfTI label map on the CT's grid (e.g. TotalSegmentator's: 75 femur_left,
            76 femur_right).
        label: the femur's value in ``labels_path``.
        side: ``"left"`` or ``"right"``: the femur's side (a left one is mirrored to a right one).
        out_dir: output folder, new or empty (it appears with all three files, or not at all).
        preset: the output grid, a name of :data:`biplanar.data.GRID_PRESETS`.

    Raises:
        InputError: a non-empty ``out_dir``, missing or unreadable files, CT and labels on different
            grids, ``label`` absent, bad side or preset, femur too small, cut off or of the other side.
    """
    out_dir = Path(out_dir)
    require_empty_out_dir(out_dir)
    ct_hu, ct_grid, mask = read_femur(ct_path, labels_path, label)
    result = preprocess_arrays(ct_hu, ct_grid, mask, side, preset, f"{labels_path} (label {label})")
    with atomic_folder(out_dir, replace=False) as folder:
        write_volume(folder / "ct.nii.gz", result.ct_hu, result.grid)
        write_volume(folder / "labels.nii.gz", result.labels, result.grid)
        write_json(folder / "frame.json", {"label": int(label), "preset": preset, **result.frame.to_dict()})
    return result
