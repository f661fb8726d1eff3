"""Hip measurements from femur landmarks, and the atlas's landmarks carried through a registration.

Landmarks are a dict in the format of ``landmarks.json`` and of ``subject.json``'s ``landmarks``
(:meth:`biplanar.data.phantom.FemurLandmarks.to_dict`), world RAS+ mm, directions unit vectors:

    head_centre_mm (3,), head_radius_mm, neck_axis (3,) from the shaft towards the head centre,
    shaft_axis_point_mm (3,) on the proximal shaft axis level with the head centre,
    shaft_axis (3,) proximal, greater_trochanter_tip_mm (3,), lesser_trochanter_tip_mm (3,)

plus ``condylar_axis`` (3,): the femur frame's ``+l`` axis (medial to lateral), which the phantom
generator (:mod:`biplanar.data.femur_shape`) uses as its stand-in for the posterior condylar axis
that a proximal femur does not show. :func:`with_condylar_axis` adds it to the generator's
landmarks from the subject's pose (the shipped atlases are in the canonical pose).

Measurements (:func:`hip_measurements`), with the generator's definitions (and those of
``tests/data/test_phantom.py``, which measures them back from label maps):

- ``head_centre_mm``: the head centre; ``head_diameter_mm``: twice the head radius;
- ``neck_shaft_angle_deg``: 180 degrees minus the angle between the neck and shaft axes;
- ``femoral_offset_mm``: the distance from the head centre to the shaft axis (a line);
- ``anteversion_deg``: the angle, in the plane perpendicular to the shaft axis, from the medial
  direction (``-condylar_axis``, projected on that plane) to the neck axis, positive towards
  anterior (``medial x shaft``).

Carrying (:func:`carry_landmarks`): registration outputs a pull displacement ``u`` on the atlas
grid, ``warped(p) = atlas(p + u(p))``, so the subject-space point showing the atlas point ``L`` solves
``p + u(p) = L``; it is found by the fixed-point iteration ``p <- L - u(p)`` (``u`` trilinear in
world mm, continued by its border values outside the grid), which converges where ``u``'s Jacobian
has norm below 1 (rotations under 60 degrees, scales within a factor 2), and damped Newton steps
where it does not (a steep but invertible field: the edge slices of a network's grid). Directions are carried
as the difference of two carried points. The head centre and radius are those of the sphere
fitted (least squares) to carried points of the atlas's head sphere on the head's side of the neck
(as the shape model fits its heads), which follow the carried articular surface, not only the field
at its centre; the part of the sphere inside the neck would follow the neck's deformation.
Given the atlas's surface, the neck axis is measured on
the carried surface as :mod:`biplanar.data.femur_ssm` measures it on a shape model's mesh (from the
centroid of the surface in a shell beyond the head sphere to the head centre; with the surface's
faces, the centroid of its carried triangles weighted by their carried areas: a deformation
crowds the vertices where it compresses, and their plain mean would follow it); else it is carried
through the head centre and a mid-neck point. The shaft axis is that of the diaphysis 35 to 85 mm
below the lesser trochanter: the lowest diaphysis that the registration grid shows, where it stands
for the whole femur's anatomical axis (the shape model's ``SHAFT_BAND``) best. Given the atlas's
surface, it is measured on the carried surface as the shape model measures its meshes: the line
through the centroids of ``SHAFT_SLABS`` slabs of that band (slabs cut in the atlas, perpendicular
to its shaft axis, and carried; with the faces, each carried vertex weighted by its carried area);
else (or where the surface does not cover the band: a short grid)
it is carried through two points of the axis at 35 and 85 mm.
The condylar axis is not carried: it stays the atlas's, the patient's medial-lateral axis with the leg
in neutral rotation. The grid and the radiographs show no condyles, and the diaphysis is near a
cylinder, so a registration cannot tell the leg's turn about its shaft; carried through the field,
the axis followed the neck's turn instead (on 26 validation shape-model femurs it read anteversion
12 deg low, slope 0.42 against the truth; kept, the reading has slope 1 and its error is the leg's
rotation: ``docs/results.md``, "Anteversion against the neutral leg").

These definitions were chosen on the validation splits of the training sets, never on the held-out
subjects (``docs/results.md``, "Hip measurements").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from biplanar.data.atlas import atlas_surface
from biplanar.data.femur_shape import canonical_rotation
from biplanar.data.femur_ssm import (
    HEAD_SIDE_OF_NECK,
    NECK_SHELL_MM,
    neck_axis_from_surface,
    triangle_centroids_areas,
)
from biplanar.data.phantom import Pose
from biplanar.geometry.fitting import fit_line, fit_sphere
from biplanar.geometry.volume_grid import VolumeGrid

POINT_KEYS = ("head_centre_mm", "shaft_axis_point_mm", "greater_trochanter_tip_mm", "lesser_trochanter_tip_mm")
DIRECTION_KEYS = ("neck_axis", "shaft_axis", "condylar_axis")
# The shaft axis is that of the diaphysis between these depths below the lesser trochanter tip (along
# the axis): the lowest diaphysis inside the lite and paper grids (module doc).
SHAFT_LEVELS_BELOW_LT_MM = (35.0, 85.0)
SHAFT_SLABS = 5  # slabs of that band on the carried surface, each 10 mm long
# Atlas surface vertices this far beyond the head sphere are carried to find the neck's shell:
# the shell's outer radius plus room for the registration's stretch.
NECK_SEARCH_MM = NECK_SHELL_MM[1] + 8.0
SPHERE_POINTS = 64  # head-sphere points carried to fit the head centre and radius
MEASUREMENT_KEYS = (
    "head_centre_mm",
    "head_diameter_mm",
    "neck_shaft_angle_deg",
    "femoral_offset_mm",
    "anteversion_deg",
)


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def with_condylar_axis(landmarks: dict[str, Any], pose: dict[str, Any] | None = None) -> dict[str, Any]:
    """``landmarks`` with ``condylar_axis`` added (kept if present): the femur frame's ``+l`` axis
    rotated by the subject's pose.

    Args:
        landmarks: a landmarks dict (module doc).
        pose: ``subject.json``'s ``pose`` (:meth:`biplanar.data.phantom.Pose.to_dict`); ``None``:
            the canonical pose (the shipped atlases).
    """
    if "condylar_axis" in landmarks:
        return dict(landmarks)
    pose = pose or {}
    rotation = Pose(
        flexion_deg=float(pose.get("flexion_deg", 0.0)),
        abduction_deg=float(pose.get("abduction_deg", 0.0)),
        external_rotation_deg=float(pose.get("external_rotation_deg", 0.0)),
    ).rotation()
    return {**landmarks, "condylar_axis": (rotation @ canonical_rotation()[:, 0]).tolist()}


def _vectors(landmarks: dict[str, Any]) -> dict[str, np.ndarray]:
    """The points and directions of ``landmarks`` as float64 arrays, checked."""
    missing = [key for key in (*POINT_KEYS, *DIRECTION_KEYS, "head_radius_mm") if key not in landmarks]
    if missing:
        raise ValueError(f"landmarks: missing {', '.join(missing)}")
    vectors = {key: np.asarray(landmarks[key], dtype=np.float64) for key in (*POINT_KEYS, *DIRECTION_KEYS)}
    for key, value in vectors.items():
        if value.shape != (3,) or not np.all(np.isfinite(value)):
            raise ValueError(f"landmarks: {key}: expected 3 finite numbers, got {landmarks[key]!r}")
    for key in DIRECTION_KEYS:
        vectors[key] = _unit(vectors[key])
    return vectors


def _closest_parameter(
    point: np.ndarray, direction: np.ndarray, line_point: np.ndarray, line_direction: np.ndarray
) -> float:
    """``t`` of the point of the line ``point + t direction`` closest to the line through
    ``line_point`` along ``line_direction`` (unit vectors)."""
    offset, cosine = point - line_point, direction @ line_direction
    denominator = 1.0 - cosine**2
    if denominator < 1e-9:  # parallel lines: any t; the point itself
        return 0.0
    return float((cosine * (offset @ line_direction) - offset @ direction) / denominator)


def fibonacci_sphere(count: int) -> np.ndarray:
    """``(count, 3)`` unit vectors spread evenly over the sphere (Fibonacci lattice)."""
    index = np.arange(count) + 0.5
    z = 1.0 - 2.0 * index / count
    azimuth = math.pi * (1.0 + math.sqrt(5.0)) * index
    radius = np.sqrt(1.0 - z**2)
    return np.stack([radius * np.cos(azimuth), radius * np.sin(azimuth), z], axis=-1)


def _articular_sphere_points(centre: np.ndarray, radius: float, neck: np.ndarray) -> np.ndarray:
    """``(N, 3)`` points of the ``(3,)`` ``centre``'s sphere on the head's side of the neck, as the
    shape model fits its heads (:data:`~biplanar.data.femur_ssm.HEAD_SIDE_OF_NECK`): the part of the
    sphere inside the neck follows the neck's deformation, not the head's."""
    offsets = radius * fibonacci_sphere(SPHERE_POINTS)
    return centre + offsets[offsets @ neck > HEAD_SIDE_OF_NECK * radius]


def _construction_points(vectors: dict[str, np.ndarray], radius: float) -> dict[str, np.ndarray]:
    """The atlas points carried to rebuild the landmarks, name -> ``(N, 3)`` world mm."""
    centre, neck = vectors["head_centre_mm"], vectors["neck_axis"]
    shaft_point, shaft = vectors["shaft_axis_point_mm"], vectors["shaft_axis"]
    # Half way from the head centre to where the neck axis passes the shaft axis: mid-neck.
    neck_depth = 0.5 * _closest_parameter(centre, -neck, shaft_point, shaft)
    lt_depth = (shaft_point - vectors["lesser_trochanter_tip_mm"]) @ shaft  # below the shaft point
    upper, lower = (shaft_point - (lt_depth + level) * shaft for level in SHAFT_LEVELS_BELOW_LT_MM)
    return {
        "head_centre_mm": centre[None],
        "neck": (centre - neck_depth * neck)[None],
        "sphere": _articular_sphere_points(centre, radius, neck),
        "shaft_upper": upper[None],
        "shaft_lower": lower[None],
        "greater_trochanter_tip_mm": vectors["greater_trochanter_tip_mm"][None],
        "lesser_trochanter_tip_mm": vectors["lesser_trochanter_tip_mm"][None],
    }


def _shaft_band(surface_vertices: np.ndarray, vectors: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Which of the atlas surface's vertices lie in the shaft band (module doc), and the slab of each.

    Args:
        surface_vertices: ``(V, 3)`` the atlas femur surface, world mm.
        vectors: the atlas's landmarks (:func:`_vectors`).

    Returns:
        ``(V,)`` mask and ``(N,)`` slab indices ``0 .. SHAFT_SLABS - 1`` of the ``N`` vertices in
        the band, proximal first.
    """
    shaft_point, shaft = vectors["shaft_axis_point_mm"], vectors["shaft_axis"]
    lt_depth = (shaft_point - vectors["lesser_trochanter_tip_mm"]) @ shaft
    below_lt = (shaft_point - surface_vertices) @ shaft - lt_depth
    top, bottom = SHAFT_LEVELS_BELOW_LT_MM
    inside = (below_lt >= top) & (below_lt < bottom)
    slabs = ((below_lt[inside] - top) * (SHAFT_SLABS / (bottom - top))).astype(int)
    return inside, slabs


def _slab_axis(
    points: np.ndarray, slabs: np.ndarray, proximal: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``((3,) point, (3,) unit direction towards proximal)`` of the line through the centroids of
    the slabs of ``(N, 3)`` points (``slabs``: ``(N,)`` indices, each slab non-empty), each point
    weighted by its ``(N,)`` ``weights`` (surface area, mm^2; None: equally)."""
    weights = np.ones(len(points)) if weights is None else weights
    centroids = np.stack(
        [np.average(points[slabs == slab], axis=0, weights=weights[slabs == slab]) for slab in range(SHAFT_SLABS)]
    )
    point, direction = fit_line(centroids)
    return point, direction * np.sign(direction @ proximal)


def _as_field(displacement_mm: Tensor | np.ndarray, grid: VolumeGrid) -> Tensor:
    """``(1, 3, I, J, K)`` float64 CPU tensor of a ``(3, I, J, K)`` or ``(1, 3, I, J, K)`` field."""
    field = torch.as_tensor(
        np.asarray(displacement_mm) if isinstance(displacement_mm, np.ndarray) else displacement_mm.detach()
    ).to("cpu", torch.float64)
    field = field[None] if field.dim() == 4 else field
    if tuple(field.shape) != (1, 3, *grid.shape):
        raise ValueError(
            f"displacement_mm: expected shape (3, {', '.join(map(str, grid.shape))}) or with a "
            f"leading 1, got {tuple(np.shape(displacement_mm))}"
        )
    return field


def displacement_sampler(field: Tensor, grid: VolumeGrid) -> Callable[[Tensor], Tensor]:
    """The field ``(1, 3, I, J, K)`` as a function of world points: ``(N, 3)`` float64 mm ->
    ``(N, 3)`` mm, trilinear, continued by its border values outside the grid."""
    to_grid = torch.as_tensor(grid.world_to_grid_matrix(), dtype=field.dtype)
    rotation, shift = to_grid[:3, :3].T, to_grid[:3, 3]

    def sample(points: Tensor) -> Tensor:
        coordinates = points.to(field.dtype) @ rotation + shift  # (N, 3) grid_sample (k, j, i)
        sampled = F.grid_sample(
            field, coordinates.view(1, -1, 1, 1, 3), mode="bilinear", padding_mode="border", align_corners=True
        )  # (1, 3, N, 1, 1)
        return sampled[0, :, :, 0, 0].T.to(points.dtype)

    return sample


def invert_points(
    field: Tensor,
    grid: VolumeGrid,
    targets_world: np.ndarray,
    tolerance_mm: float = 1e-4,
    max_iterations: int = 200,
    newton: bool = True,
) -> tuple[np.ndarray, float]:
    """Solve ``p + u(p) = L`` for each target ``L`` (``(N, 3)`` world mm).

    First the fixed-point iteration ``p <- L - u(p)``, each point until its own step is below
    ``tolerance_mm``: cheap, and it converges where ``u``'s Jacobian has norm below 1. Points whose
    residual is still above ``tolerance_mm`` (a steep but invertible field, as at the edge of a
    network's grid, where the iteration oscillates) then take damped Newton steps
    (:func:`_newton_refined`), from the first guess ``L - u(L)`` where the iteration diverged.
    ``newton=False`` leaves them out: the iteration alone, as before 2026-12-06
    (``examples/carry_check.py`` compares the two).

    Returns:
        ``(N, 3)`` points ``p`` (world mm) and the largest residual ``|p + u(p) - L|`` (mm).
    """
    sample = displacement_sampler(field, grid)
    targets = torch.as_tensor(targets_world, dtype=torch.float64)
    first_guess = targets - sample(targets)
    points = first_guess.clone()
    active = torch.arange(len(points))
    for _ in range(max_iterations):
        updated = targets[active] - sample(points[active])
        moving = (updated - points[active]).abs().amax(dim=1) >= tolerance_mm
        points[active] = updated
        active = active[moving]
        if len(active) == 0:
            break
    if not newton:
        return points.numpy(), float(_residual_norms(sample, points, targets).max())
    # Where the iteration diverged (it can leave the grid, where u is constant), Newton starts again
    # from the first guess.
    diverged = _residual_norms(sample, points, targets) > _residual_norms(sample, first_guess, targets)
    points[diverged] = first_guess[diverged]
    points = _newton_refined(sample, targets, points, tolerance_mm, max_iterations)
    return points.numpy(), float(_residual_norms(sample, points, targets).max())


def _residual_norms(sample: Callable[[Tensor], Tensor], points: Tensor, targets: Tensor) -> Tensor:
    """``(N,)`` ``|p + u(p) - L|`` (mm) of ``(N, 3)`` world-mm ``points`` and ``targets``."""
    return (points + sample(points) - targets).norm(dim=1)


NEWTON_HALVINGS = 12  # step halvings tried before a Newton step is given up (a step of 1/4096)
JACOBIAN_STEP_MM = 1e-3  # central-difference step of u's Jacobian (trilinear: exact inside a cell)


def _displacement_jacobian(sample: Callable[[Tensor], Tensor], points: Tensor) -> Tensor:
    """``(N, 3, 3)`` ``du_i / dp_j`` at ``points`` (``(N, 3)`` world mm), central differences."""
    columns = []
    for axis in range(3):
        offset = torch.zeros(3, dtype=points.dtype)
        offset[axis] = JACOBIAN_STEP_MM
        columns.append((sample(points + offset) - sample(points - offset)) / (2 * JACOBIAN_STEP_MM))
    return torch.stack(columns, dim=2)


def _newton_refined(
    sample: Callable[[Tensor], Tensor], targets: Tensor, points: Tensor, tolerance_mm: float, max_iterations: int
) -> Tensor:
    """``points`` (``(N, 3)`` world mm) with those whose residual ``|p + u(p) - L|`` exceeds
    ``tolerance_mm`` moved by Newton steps on ``p + u(p) = L``, each step halved until the residual
    decreases (at most :data:`NEWTON_HALVINGS` times; a point that cannot improve stops)."""
    points = points.clone()
    residuals = points + sample(points) - targets
    active = torch.nonzero(residuals.norm(dim=1) > tolerance_mm).flatten()
    for _ in range(max_iterations):
        if len(active) == 0:
            break
        current, residual = points[active], residuals[active]
        jacobian = torch.eye(3, dtype=points.dtype) + _displacement_jacobian(sample, current)
        step = torch.linalg.lstsq(jacobian, residual[:, :, None]).solution[:, :, 0]
        norms = residual.norm(dim=1)
        improved = torch.zeros(len(active), dtype=torch.bool)
        scale = torch.ones(len(active), dtype=points.dtype)
        for _ in range(NEWTON_HALVINGS):
            trying = ~improved
            candidate = current[trying] - scale[trying, None] * step[trying]
            candidate_residual = candidate + sample(candidate) - targets[active[trying]]
            better = candidate_residual.norm(dim=1) < norms[trying]
            chosen = torch.nonzero(trying).flatten()[better]
            points[active[chosen]], residuals[active[chosen]] = candidate[better], candidate_residual[better]
            improved[chosen] = True
            scale[~improved] /= 2
            if bool(improved.all()):
                break
        active = active[improved & (residuals[active].norm(dim=1) > tolerance_mm)]
    return points


def carry_landmarks(
    landmarks: dict[str, Any],
    displacement_mm: Tensor | np.ndarray,
    grid: VolumeGrid,
    surface_vertices: np.ndarray | None = None,
    surface_faces: np.ndarray | None = None,
) -> dict[str, Any]:
    """The atlas ``landmarks`` in the registered (subject) space of a pull displacement.

    Args:
        landmarks: the atlas's landmarks with ``condylar_axis`` (module doc; see
            :func:`with_condylar_axis`), world mm.
        displacement_mm: ``(1, 3, I, J, K)`` or ``(3, I, J, K)`` (torch or numpy) displacement of
            the registration, mm, world components, on ``grid``: ``warped(p) = atlas(p + u(p))``.
        grid: the atlas grid.
        surface_vertices: ``(V, 3)`` the atlas femur surface's vertices, world mm
            (:func:`~biplanar.data.atlas.atlas_surface`): the neck and shaft axes are then
            measured on the carried surface (module doc).
        surface_faces: ``(F, 3)`` that surface's triangles (vertex indices): the neck's and the
            shaft slabs' centroids weighted by the carried areas; None: the vertices weigh equally.

    Returns:
        landmarks in the same format: points carried; ``head_centre_mm`` and ``head_radius_mm``
        of the sphere fitted to the carried head-sphere points; directions through two carried
        points (without ``surface_vertices``, the neck: head centre and mid-neck, and the shaft: 35
        and 85 mm below the lesser trochanter); the condylar axis the atlas's, not carried (module doc);
        ``shaft_axis_point_mm`` the foot of the perpendicular from the head centre to the carried
        shaft axis; and ``carry_residual_mm``, the largest ``|p + u(p) - L|`` left by the inversion.

    Raises:
        ValueError: the carried surface has no vertex in the neck's shell.
    """
    vectors = _vectors(landmarks)
    field = _as_field(displacement_mm, grid)
    construction = _construction_points(vectors, float(landmarks["head_radius_mm"]))
    if surface_vertices is not None:
        reach = np.linalg.norm(surface_vertices - vectors["head_centre_mm"], axis=1)
        near_head = reach < float(landmarks["head_radius_mm"]) + NECK_SEARCH_MM
        construction["surface"] = surface_vertices[near_head]
        in_band, band_slabs = _shaft_band(surface_vertices, vectors)
        if len(set(band_slabs.tolist())) == SHAFT_SLABS:  # else (a short grid) the two carried points
            construction["shaft_band"] = surface_vertices[in_band]
    names = list(construction)
    sizes = [len(construction[name]) for name in names]
    carried_all, residual = invert_points(field, grid, np.concatenate([construction[name] for name in names]))
    carried = dict(zip(names, np.split(carried_all, np.cumsum(sizes)[:-1])))
    lower = carried["shaft_lower"][0]
    shaft = _unit(carried["shaft_upper"][0] - lower)
    centre, radius = fit_sphere(carried["sphere"])
    if surface_vertices is None:
        neck = _unit(centre - carried["neck"][0])
    else:
        neck = _surface_neck_axis(carried["surface"], surface_faces, near_head, centre, radius)
    if "shaft_band" in carried:
        band_areas = None if surface_faces is None else _vertex_areas(carried["shaft_band"], surface_faces, in_band)
        lower, shaft = _slab_axis(carried["shaft_band"], band_slabs, shaft, band_areas)
    return {
        "head_centre_mm": centre.tolist(),
        "head_radius_mm": radius,
        "neck_axis": neck.tolist(),
        "shaft_axis_point_mm": (lower + ((centre - lower) @ shaft) * shaft).tolist(),
        "shaft_axis": shaft.tolist(),
        "greater_trochanter_tip_mm": carried["greater_trochanter_tip_mm"][0].tolist(),
        "lesser_trochanter_tip_mm": carried["lesser_trochanter_tip_mm"][0].tolist(),
        "condylar_axis": vectors["condylar_axis"].tolist(),  # the neutral leg's (module doc)
        "carry_residual_mm": residual,
    }


def _surface_neck_axis(
    carried_near_head: np.ndarray,
    faces: np.ndarray | None,
    near_head: np.ndarray,
    centre: np.ndarray,
    radius: float,
) -> np.ndarray:
    """The neck axis of the carried ``(N, 3)`` surface vertices near the head (the ``near_head``
    ``(V,)`` mask of the whole surface's), area-weighted on the ``(F, 3)`` triangles among them."""
    if faces is None:
        return neck_axis_from_surface(carried_near_head, centre, radius)
    centroids, areas = triangle_centroids_areas(carried_near_head, _faces_within(faces, near_head))
    return neck_axis_from_surface(centroids, centre, radius, areas)


def _faces_within(faces: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """The ``(F, 3)`` triangles whose three vertices the ``(V,)`` mask ``kept`` keeps, indexing the
    kept vertices alone."""
    index = np.cumsum(kept) - 1  # whole-surface vertex -> row among the kept
    return index[faces[kept[faces].all(axis=1)]]


def _vertex_areas(points: np.ndarray, faces: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """``(N,)`` area (mm^2) each of the ``(N, 3)`` kept vertices (``kept``: ``(V,)`` mask of the
    surface's) stands for: a third of each of its triangles among them."""
    triangles = _faces_within(faces, kept)
    _, areas = triangle_centroids_areas(points, triangles)
    vertex_areas = np.zeros(len(points))
    np.add.at(vertex_areas, triangles.ravel(), np.repeat(areas / 3.0, 3))
    return vertex_areas


def hip_measurements(landmarks: dict[str, Any]) -> dict[str, float | list]:
    """Head centre (mm), head diameter (mm), neck-shaft angle (deg), femoral offset (mm) and
    anteversion (deg) of a landmarks dict with ``condylar_axis`` (definitions: module doc)."""
    vectors = _vectors(landmarks)
    centre, neck, shaft = vectors["head_centre_mm"], vectors["neck_axis"], vectors["shaft_axis"]
    from_axis = centre - vectors["shaft_axis_point_mm"]
    return {
        "head_centre_mm": centre.tolist(),
        "head_diameter_mm": 2.0 * float(landmarks["head_radius_mm"]),
        "neck_shaft_angle_deg": 180.0 - math.degrees(math.acos(float(np.clip(neck @ shaft, -1.0, 1.0)))),
        "femoral_offset_mm": float(np.linalg.norm(from_axis - (from_axis @ shaft) * shaft)),
        "anteversion_deg": version_deg(neck, shaft, vectors["condylar_axis"]),
    }


def version_deg(neck: np.ndarray, shaft: np.ndarray, condylar_axis: np.ndarray) -> float:
    """Anteversion (deg) of the unit ``(3,)`` ``neck`` axis about the unit ``(3,)`` proximal ``shaft``
    axis, against the ``(3,)`` medial-to-lateral ``condylar_axis`` (module doc's definition)."""
    medial = _unit(-(condylar_axis - (condylar_axis @ shaft) * shaft))  # in the plane perpendicular to the shaft
    anterior = np.cross(medial, shaft)
    return math.degrees(math.atan2(neck @ anterior, neck @ medial))


def subject_hip_truth(document: dict[str, Any]) -> dict[str, float | list]:
    """The true measurements of a simulated subject from its ``subject.json`` document: the
    generator's femur ``parameters`` (head radius, neck-shaft angle, anteversion, femoral offset)
    and the head centre of its ``landmarks``."""
    try:
        femur, centre = document["parameters"]["femur"], document["landmarks"]["head_centre_mm"]
        return {
            "head_centre_mm": [float(value) for value in centre],
            "head_diameter_mm": 2.0 * float(femur["head_radius_mm"]),
            "neck_shaft_angle_deg": float(femur["neck_shaft_angle_deg"]),
            "femoral_offset_mm": float(femur["femoral_offset_mm"]),
            "anteversion_deg": float(femur["anteversion_deg"]),
        }
    except (KeyError, TypeError) as error:
        raise ValueError(f"subject document: missing parameters.femur or landmarks field ({error})") from None


def hip_errors(measured: dict[str, Any], truth: dict[str, Any]) -> dict[str, float]:
    """Errors of :func:`hip_measurements` output against the truth.

    Args:
        measured: :func:`hip_measurements` of the carried landmarks.
        truth: the same kind of dict, or a simulated subject's ``subject.json`` document (read with
            :func:`subject_hip_truth`).

    Returns:
        ``head_centre_error_mm`` (Euclidean distance) and the signed errors (measured - truth)
        ``head_diameter_error_mm``, ``neck_shaft_angle_error_deg``, ``femoral_offset_error_mm``,
        ``anteversion_error_deg``.
    """
    reference: dict[str, Any] = subject_hip_truth(truth) if "parameters" in truth else truth
    missing = [key for key in MEASUREMENT_KEYS if key not in measured or key not in reference]
    if missing:
        raise ValueError(f"hip_errors: missing {', '.join(missing)}")
    centre_error = np.asarray(measured["head_centre_mm"], float) - np.asarray(reference["head_centre_mm"], float)
    errors = {"head_centre_error_mm": float(np.linalg.norm(centre_error))}
    for key in MEASUREMENT_KEYS[1:]:
        name, unit = key.rsplit("_", 1)
        errors[f"{name}_error_{unit}"] = float(measured[key]) - float(reference[key])
    return errors


def hip_report(atlas, displacement: Tensor) -> dict[str, Any]:
    """Hip measurements of the atlas landmarks carried through a displacement (the neck axis
    measured on the carried atlas surface), as ``report.json``'s ``hip``.

    Args:
        atlas: an :class:`~biplanar.data.atlas.Atlas` (``landmarks``, ``grid``).
        displacement: ``(1, 3, I, J, K)`` mm, world components, on the atlas grid (pull).

    Returns:
        the measurements of :func:`biplanar.evaluation.hip.hip_measurements` and ``"landmarks"``:
        the carried landmarks (world mm).
    """

    surface = atlas_surface(atlas)
    vertices = np.asarray(surface.vertices, dtype=np.float64)
    carried = carry_landmarks(
        with_condylar_axis(atlas.landmarks), displacement, atlas.grid, vertices, np.asarray(surface.faces)
    )
    return {**hip_measurements(carried), "landmarks": carried}
