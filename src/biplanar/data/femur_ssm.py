"""Right femurs drawn from a real statistical shape model, as solids in the femur frame.

The model: GIAS2's whole-femur shape model of 26 CT-segmented left femurs (``LLP26``), shipped in
``biplanar/resources/femur_ssm/`` under MPL-2.0 (its ``README.md`` gives provenance, frame and
units; ``NOTICE.md`` how it came here). A femur is ``mean + sum_k b_k sd_k modes_k`` over the 25
modes, ``b_k ~ N(0, 1)`` truncated at ``+-TRUNCATION_SD``; the left femurs are mirrored to right
ones on loading (``x -> -x``, faces reversed).

Each shape is measured on its own mesh (vertices in the model's frame, mm) and then expressed in
the femur frame of :mod:`biplanar.data.femur_shape`:

- head: least-squares sphere through the head's vertices (those within 1.5 mm of the sphere, on
  the head's side of the neck), refitted until it settles;
- neck axis: from the (area-weighted) centroid of the neck's surface in the shell
  ``r + 3 .. r + 10`` mm around the head centre to the head centre;
- shaft axis ``+s``: the line through the area-weighted centroids of ``SHAFT_SLABS`` slabs of the
  diaphysis, from ``SHAFT_BAND[0]`` to ``SHAFT_BAND[1]`` of the femur's length below the head
  centre (the anatomical axis of the proximal half; the phantom's is its straight proximal part);
- ``+l``: the posterior condylar axis (medial to lateral through the most posterior vertex of
  each condyle) made perpendicular to ``+s``; ``+a = s x l`` (anterior);
- greater trochanter tip: the most proximal point lateral of the shaft axis; lesser trochanter
  tip: the point of the lesser trochanter's region (chosen once on the mean shape) farthest from
  the shaft axis.

So the hip measurements of :mod:`biplanar.evaluation.hip` (neck-shaft angle, offset, anteversion
against the condylar axis) are the clinical definitions on the whole femur.

The solid's signed distance comes from a dense sampling of the mesh (points every
``SURFACE_SAMPLE_MM`` on every triangle, with interpolated vertex normals): the distance to the
nearest sample's tangent plane within ``PLANE_DISTANCE_MM`` of it, the distance to the sample
beyond, signed by the normal (the mesh is closed and smooth); ``MAX_DISTANCE_MM`` beyond that.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import numpy as np
import torch
from torch import Tensor

from biplanar.data.femur_shape import FemurLandmarksLocal, FemurParameters, FemurSolid, extreme_inside_point
from biplanar.data.random_fields import FourierField
from biplanar.geometry.fitting import fit_line, fit_sphere

SHAPE_MODEL_FILE = "resources/femur_ssm/gias2_femur_left_llp26.npz"
SHAPE_MODEL_NAME = "gias2_llp26"
TRUNCATION_SD = 3.0
LARGEST_SPREAD = 3.0  # of SsmFemurParameters.sample: beyond it most weights sit at the truncation
SURFACE_SAMPLE_MM = 0.5
PLANE_DISTANCE_MM = 2.0
# Farther from the surface than this, a point is outside (no femur is that thick) and its distance is
# reported as this bound: a lower bound, which is all the narrow band of ``data.voxelise`` needs.
MAX_DISTANCE_MM = 40.0
HEAD_FIT_TOLERANCE_MM = 1.5
# The head's articular side: points whose offset from the head centre along the neck axis exceeds
# this fraction of the radius (towards the neck: negative), the rest being where the neck joins.
HEAD_SIDE_OF_NECK = -0.3
NECK_SHELL_MM = (3.0, 10.0)  # beyond the head radius
SHAFT_BAND = (0.2, 0.5)  # fraction of the femur's length below the head centre
SHAFT_SLABS = 7
CONDYLE_FRACTION = 0.12  # the distal part of the length searched for the posterior condyles
LESSER_TROCHANTER_BAND = (0.08, 0.25)  # fraction of the length below the head centre
LESSER_TROCHANTER_REGION_MM = 15.0
# Off-model shapes (off_model_vertices): the correlation length of the left-out femurs' residual.
OFF_MODEL_LENGTH_MM = 10.0
LARGEST_OFF_MODEL_MM = 3.0  # beyond it the surface folds where it curves (off_model_vertices)
OFF_MODEL_WAVES = 512
OFF_MODEL_SMOOTHNESS = 2.5  # Matern's nu: twice differentiable
OFF_MODEL_NORMAL_SMOOTHING = 30  # neighbour averages of the normals the surface moves along


@dataclass(frozen=True)
class ShapeModel:
    """A point-distribution shape model of right femurs (mm, the model's frame).

    Attributes:
        mean: ``(V, 3)`` mean vertices.
        faces: ``(F, 3)`` triangles, counter-clockwise seen from outside.
        modes: ``(K, V, 3)`` shape modes (vertex-space images of unit PCA eigenvectors).
        sd: ``(K,)`` standard deviation of each mode, mm.
    """

    mean: np.ndarray
    faces: np.ndarray
    modes: np.ndarray
    sd: np.ndarray

    def vertices(self, mode_weights: np.ndarray) -> np.ndarray:
        """``(V, 3)`` mm of the shape with ``(K,)`` weights in standard deviations."""
        return self.mean + np.einsum("k,k,kvd->vd", mode_weights, self.sd, self.modes)


@functools.cache
def femur_shape_model() -> ShapeModel:
    """The bundled model, mirrored to right femurs (float64)."""
    with files("biplanar").joinpath(SHAPE_MODEL_FILE).open("rb") as stream:
        arrays = np.load(stream)
        mirror = np.array([-1.0, 1.0, 1.0])
        return ShapeModel(
            mean=arrays["mean"].astype(np.float64) * mirror,
            faces=np.ascontiguousarray(arrays["faces"][:, ::-1]).astype(np.int64),
            modes=arrays["modes"].astype(np.float64) * mirror,
            sd=arrays["sd"].astype(np.float64),
        )


@functools.cache
def training_mode_weights() -> np.ndarray:
    """``(26, K)`` float64: the model's 26 training femurs' own mode weights, standard deviations."""
    with files("biplanar").joinpath(SHAPE_MODEL_FILE).open("rb") as stream:
        return np.load(stream)["scores"].astype(np.float64)


def training_femurs() -> np.ndarray:
    """``(26, V, 3)`` mm: the model's 26 training femurs, mirrored to right femurs as the model is."""
    model = femur_shape_model()
    return np.stack([model.vertices(weights) for weights in training_mode_weights()])


@dataclass(frozen=True)
class SsmFemurParameters:
    """One femur of the shape model: its mode weights and its cortex.

    Attributes:
        mode_weights: ``(K,)`` weights of the model's modes, standard deviations.
        cortex_proximal_mm, cortex_shaft_mm: cortical thickness (the phantom's ranges).
        off_model_rms_mm: root mean square of a displacement of the surface along its normals that
            no combination of the modes makes (:func:`off_model_vertices`), mm; 0: none.
        off_model_seed: the seed of that displacement.
    """

    mode_weights: tuple[float, ...]
    cortex_proximal_mm: float = FemurParameters.cortex_proximal_mm
    cortex_shaft_mm: float = FemurParameters.cortex_shaft_mm
    off_model_rms_mm: float = 0.0
    off_model_seed: int = 0

    @classmethod
    def sample(cls, rng: np.random.Generator, spread: float = 1.0) -> SsmFemurParameters:
        """Weights ``N(0, spread^2)`` redrawn beyond ``+-TRUNCATION_SD``, then the cortex (phantom
        ranges). ``spread`` above 1 draws more femurs near the model's edges (the same draws as
        ``spread`` 1 scaled, so ``spread`` 1 is the model's own population)."""
        if not 0 < spread <= LARGEST_SPREAD:
            raise ValueError(f"spread: expected in (0, {LARGEST_SPREAD}], got {spread}")
        weights = spread * rng.standard_normal(len(femur_shape_model().sd))
        while np.any(np.abs(weights) > TRUNCATION_SD):
            outside = np.abs(weights) > TRUNCATION_SD
            weights[outside] = spread * rng.standard_normal(int(outside.sum()))
        ranges = FemurParameters.ranges()
        return cls(
            tuple(float(w) for w in weights),
            ranges["cortex_proximal_mm"].sample(rng),
            ranges["cortex_shaft_mm"].sample(rng),
        )

    @classmethod
    def mean(cls) -> SsmFemurParameters:
        """The model's mean femur with the phantom's mean cortex."""
        return cls(tuple(0.0 for _ in femur_shape_model().sd))

    def solid(self) -> SsmFemurShape:
        """The femur as a solid in the femur frame (cached)."""
        return _ssm_femur_solid(self)

    @property
    def head_radius_mm(self) -> float:
        """The fitted head radius, mm."""
        return self.solid().head_radius_mm

    def to_dict(self) -> dict[str, Any]:
        """The model, weights and cortex, and the shape's measurements (JSON-ready)."""
        return {
            "shape_model": SHAPE_MODEL_NAME,
            "mode_weights": list(self.mode_weights),
            "cortex_proximal_mm": float(self.cortex_proximal_mm),
            "cortex_shaft_mm": float(self.cortex_shaft_mm),
            "off_model_rms_mm": float(self.off_model_rms_mm),
            "off_model_seed": int(self.off_model_seed),
            **self.solid().measurements(),
        }


@dataclass(frozen=True)
class MeshAnatomy:
    """Landmarks of a right femur mesh, in the mesh's frame (mm; directions unit vectors).

    Attributes:
        head_centre, head_radius: the head sphere.
        neck_axis: from the neck towards the head centre.
        shaft_point: a point of the shaft axis; shaft_axis: its proximal direction.
        lateral: the posterior condylar axis (medial to lateral), perpendicular to the shaft axis.
    """

    head_centre: np.ndarray
    head_radius: float
    neck_axis: np.ndarray
    shaft_point: np.ndarray
    shaft_axis: np.ndarray
    lateral: np.ndarray

    @property
    def rotation(self) -> np.ndarray:
        """``(3, 3)`` columns: the femur frame's ``l, a, s`` axes in the mesh's frame."""
        return np.column_stack([self.lateral, np.cross(self.shaft_axis, self.lateral), self.shaft_axis])

    def to_local(self, points: np.ndarray) -> np.ndarray:
        """``(N, 3)`` mesh-frame mm -> femur-frame mm (origin the head centre)."""
        return (points - self.head_centre) @ self.rotation

    def local_shaft_point(self) -> np.ndarray:
        """``(3,)`` femur-frame mm where the shaft axis crosses ``s = 0``."""
        point = self.to_local(self.shaft_point[None])[0]
        return np.array([point[0], point[1], 0.0])


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def neck_axis_from_surface(
    points: np.ndarray, head_centre: np.ndarray, head_radius: float, weights: np.ndarray | None = None
) -> np.ndarray:
    """Unit neck axis of a femur surface: from the centroid of its ``(N, 3)`` points (mm) in the
    shell ``NECK_SHELL_MM`` beyond the head sphere to the head centre (module doc).

    Args:
        points, weights: a mesh's triangle centroids and ``(N,)`` areas (mm^2): the centroid of the
            surface itself, whatever the mesh's vertex density (a deformed mesh's is not uniform);
            or points that sample the surface evenly, ``weights`` None.

    Raises:
        ValueError: no point lies in the shell (the surface does not reach the neck).
    """
    distance = np.linalg.norm(points - head_centre, axis=1)
    shell = (distance > head_radius + NECK_SHELL_MM[0]) & (distance < head_radius + NECK_SHELL_MM[1])
    if not shell.any():
        raise ValueError(f"no surface vertex {NECK_SHELL_MM[0]:g}-{NECK_SHELL_MM[1]:g} mm beyond the head sphere")
    return _unit(head_centre - np.average(points[shell], axis=0, weights=None if weights is None else weights[shell]))


def _head_sphere(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """``(centre, radius, neck axis)`` of the head, from the topmost vertex down (module doc)."""
    centroids, areas = triangle_centroids_areas(vertices, faces)
    radius = 22.0  # a start: adult heads are 18-30 mm
    centre = vertices[vertices[:, 2].argmax()] - [0.0, 0.0, radius]
    head = np.linalg.norm(vertices - centre, axis=1) < radius + NECK_SHELL_MM[0]
    for _ in range(6):
        centre, radius = fit_sphere(vertices[head])
        distance = np.linalg.norm(vertices - centre, axis=1)
        neck_axis = neck_axis_from_surface(centroids, centre, radius, areas)
        head = (np.abs(distance - radius) < HEAD_FIT_TOLERANCE_MM) & (
            (vertices - centre) @ neck_axis > HEAD_SIDE_OF_NECK * radius
        )
    return centre, radius, neck_axis


def triangle_centroids_areas(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(F, 3)`` centroids (mm) and ``(F,)`` areas (mm^2) of a mesh's triangles (``(V, 3)`` mm, ``(F, 3)``)."""
    corners = vertices[faces]
    areas = 0.5 * np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
    return corners.mean(axis=1), areas


def _shaft_axis(vertices: np.ndarray, faces: np.ndarray, head_centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(point, proximal direction)`` of the diaphysis's axis (module doc), refined twice."""
    centroids, areas = triangle_centroids_areas(vertices, faces)
    _, axis = fit_line(vertices)
    for _ in range(3):
        axis = axis * np.sign(axis[2])
        height = (centroids - head_centre) @ axis
        length = -((vertices - head_centre) @ axis).min()
        edges = -length * np.linspace(SHAFT_BAND[0], SHAFT_BAND[1], SHAFT_SLABS + 1)
        slab_centres = []
        for top, bottom in itertools.pairwise(edges):
            inside = (height <= top) & (height > bottom)
            slab_centres.append(np.average(centroids[inside], axis=0, weights=areas[inside]))
        point, axis = fit_line(np.array(slab_centres))
    return point, axis * np.sign(axis[2])


def _condylar_axis(vertices: np.ndarray, head_centre: np.ndarray, shaft_point: np.ndarray, shaft: np.ndarray):
    """Unit posterior condylar axis (medial to lateral) made perpendicular to ``shaft``."""
    towards_head = head_centre - shaft_point
    lateral_guess = _unit(-(towards_head - (towards_head @ shaft) * shaft))
    posterior = -np.cross(shaft, lateral_guess)
    height = (vertices - head_centre) @ shaft
    distal = vertices[height < height.min() + CONDYLE_FRACTION * (height.max() - height.min())]
    side = (distal - distal.mean(axis=0)) @ lateral_guess
    lateral_condyle, medial_condyle = (
        distal[mask][(distal[mask] @ posterior).argmax()] for mask in (side > 0, side <= 0)
    )
    axis = lateral_condyle - medial_condyle
    return _unit(axis - (axis @ shaft) * shaft)


def mesh_anatomy(vertices: np.ndarray, faces: np.ndarray) -> MeshAnatomy:
    """The landmarks of a right whole-femur mesh (``(V, 3)`` mm, ``(F, 3)``; +z proximal)."""
    centre, radius, neck_axis = _head_sphere(vertices, faces)
    shaft_point, shaft = _shaft_axis(vertices, faces, centre)
    lateral = _condylar_axis(vertices, centre, shaft_point, shaft)
    return MeshAnatomy(centre, radius, neck_axis, shaft_point, shaft, lateral)


@functools.cache
def _lesser_trochanter_region() -> np.ndarray:
    """Indices of the model's vertices around the mean shape's lesser trochanter tip."""
    model = femur_shape_model()
    anatomy = mesh_anatomy(model.mean, model.faces)
    local = anatomy.to_local(model.mean)
    from_axis, length = local[:, :2] - anatomy.local_shaft_point()[:2], -local[:, 2].min()
    candidates = (
        (local[:, 2] < -LESSER_TROCHANTER_BAND[0] * length)
        & (local[:, 2] > -LESSER_TROCHANTER_BAND[1] * length)
        & (from_axis[:, 0] < 0)  # medial
        & (from_axis[:, 1] < 0)  # posterior
    )
    reach = np.where(candidates, np.linalg.norm(from_axis, axis=1), -np.inf)
    tip = local[reach.argmax()]
    return np.flatnonzero(np.linalg.norm(local - tip, axis=1) < LESSER_TROCHANTER_REGION_MM)


class SsmFemurShape(FemurSolid):
    """A :class:`SsmFemurParameters` femur in the femur frame (signed distance from its mesh)."""

    def __init__(self, params: SsmFemurParameters) -> None:
        model = femur_shape_model()
        vertices = model.vertices(np.asarray(params.mode_weights))
        if params.off_model_rms_mm > 0:
            vertices = off_model_vertices(vertices, model.faces, params.off_model_rms_mm, params.off_model_seed)
        self.anatomy = mesh_anatomy(vertices, model.faces)
        self.vertices_local, self.faces = self.anatomy.to_local(vertices), model.faces
        shaft_point = self.anatomy.local_shaft_point()
        self.neck_axis = self.anatomy.neck_axis @ self.anatomy.rotation
        self._lt_vertex = self._lesser_trochanter_vertex(shaft_point)
        super().__init__(
            self.anatomy.head_radius,
            float(self.vertices_local[self._lt_vertex, 2]),
            shaft_point,
            self._shaft_radius(shaft_point),
            params.cortex_proximal_mm,
            params.cortex_shaft_mm,
        )
        self._distance = MeshSignedDistance(self.vertices_local, self.faces)

    def _lesser_trochanter_vertex(self, shaft_point: np.ndarray) -> int:
        region = _lesser_trochanter_region()
        reach = np.linalg.norm(self.vertices_local[region, :2] - shaft_point[:2], axis=1)
        return int(region[reach.argmax()])

    def _shaft_radius(self, shaft_point: np.ndarray) -> float:
        """Mean distance from the shaft axis of the vertices 15-45 mm below the lesser trochanter."""
        height = self.vertices_local[:, 2] - self.vertices_local[self._lt_vertex, 2]
        band = (height < -15.0) & (height > -45.0)
        return float(np.linalg.norm(self.vertices_local[band, :2] - shaft_point[:2], axis=1).mean())

    def sdf(self, points_local: Tensor) -> Tensor:
        """Signed distance to the mesh, mm (negative inside; :class:`MeshSignedDistance`)."""
        return self._distance(points_local)

    def landmarks(self, sdf_local: Callable[[Tensor], Tensor] | None = None) -> FemurLandmarksLocal:
        """Landmarks in the femur frame; the trochanter tips located on ``sdf_local`` near the mesh's."""
        sdf_local = self.sdf if sdf_local is None else sdf_local
        local, shaft_point = self.vertices_local, self.shaft_point
        lateral = (local[:, 0] > shaft_point[0]) & (local[:, 2] > self.lt_level)
        gt_mesh = local[lateral][local[lateral, 2].argmax()]
        gt_tip = extreme_inside_point(sdf_local, gt_mesh, np.full(3, 6.0), np.array([0.0, 0.0, 1.0]))
        lt_mesh = local[self._lt_vertex]
        outward = np.r_[_unit(lt_mesh[:2] - shaft_point[:2]), 0.0]
        lt_tip = extreme_inside_point(sdf_local, lt_mesh, np.full(3, 6.0), outward)
        return FemurLandmarksLocal(
            head_centre=np.zeros(3),
            neck_axis=self.neck_axis.copy(),
            shaft_axis_point=shaft_point.copy(),
            shaft_axis=np.array([0.0, 0.0, 1.0]),
            greater_trochanter_tip=gt_tip,
            lesser_trochanter_tip=lt_tip,
        )

    def measurements(self) -> dict[str, float]:
        """Head radius, neck-shaft angle, femoral offset and anteversion (``evaluation.hip``'s
        definitions, against the posterior condylar axis)."""
        neck = self.neck_axis
        return {
            "head_radius_mm": self.head_radius_mm,
            "neck_shaft_angle_deg": float(180.0 - np.degrees(np.arccos(np.clip(neck[2], -1.0, 1.0)))),
            "femoral_offset_mm": float(np.linalg.norm(self.shaft_point[:2])),
            "anteversion_deg": float(np.degrees(np.arctan2(neck[1], -neck[0]))),
        }

    def volume_mm3(self) -> float:
        """The closed mesh's volume (divergence theorem), mm^3."""
        corners = self.vertices_local[self.faces]
        return float(np.einsum("fd,fd->f", corners[:, 0], np.cross(corners[:, 1], corners[:, 2])).sum() / 6.0)


@functools.lru_cache(maxsize=8)
def _ssm_femur_solid(params: SsmFemurParameters) -> SsmFemurShape:
    return SsmFemurShape(params)


class MeshSignedDistance:
    """The signed distance to a closed, smooth triangle mesh (module doc), negative inside.

    Args:
        vertices: ``(V, 3)`` mm; faces: ``(F, 3)`` counter-clockwise seen from outside.
    """

    def __init__(self, vertices: np.ndarray, faces: np.ndarray) -> None:
        from scipy.spatial import cKDTree  # lazy: SciPy's spatial (0.2 s to import) only to simulate

        self._samples, self._normals = surface_samples(vertices, faces, SURFACE_SAMPLE_MM)
        # Sliding-midpoint splits: the median splits of a balanced tree are 10x slower to query here.
        self._tree = cKDTree(self._samples, balanced_tree=False, compact_nodes=False)

    def __call__(self, points: Tensor) -> Tensor:
        """``(N, 3)`` mm -> ``(N,)`` float32 signed distance, mm, at most ``MAX_DISTANCE_MM``."""
        query = points.detach().cpu().numpy().astype(np.float64)
        distance, nearest = self._tree.query(query, distance_upper_bound=MAX_DISTANCE_MM)
        found = np.isfinite(distance)
        signed = np.full(len(query), MAX_DISTANCE_MM)
        offsets = query[found] - self._samples[nearest[found]]
        plane = np.einsum("nd,nd->n", offsets, self._normals[nearest[found]])
        signed[found] = np.where(distance[found] < PLANE_DISTANCE_MM, plane, np.sign(plane) * distance[found])
        return torch.as_tensor(signed, dtype=torch.float32)


def surface_samples(vertices: np.ndarray, faces: np.ndarray, spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Points on every triangle at most ``spacing_mm`` apart along its edges, and unit normals
    interpolated from the area-weighted vertex normals.

    Args:
        vertices: ``(V, 3)`` mm; faces: ``(F, 3)`` counter-clockwise seen from outside.

    Returns:
        ``((P, 3) points mm, (P, 3) outward unit normals)``.
    """
    corners = vertices[faces]  # (F, 3, 3)
    vertex_normals = area_weighted_vertex_normals(vertices, faces)
    longest = np.linalg.norm(corners - np.roll(corners, 1, axis=1), axis=2).max(axis=1)
    divisions = np.maximum(1, np.ceil(longest / spacing_mm)).astype(int)
    points, normals = [], []
    for count in np.unique(divisions):
        i, j = np.meshgrid(np.arange(count + 1), np.arange(count + 1), indexing="ij")
        keep = i + j <= count
        weights = np.stack([i[keep], j[keep], count - i[keep] - j[keep]], axis=1) / count  # (B, 3)
        chosen = faces[divisions == count]
        points.append(np.einsum("bc,fcd->fbd", weights, vertices[chosen]).reshape(-1, 3))
        normals.append(np.einsum("bc,fcd->fbd", weights, vertex_normals[chosen]).reshape(-1, 3))
    all_normals = np.concatenate(normals)
    return np.concatenate(points), all_normals / np.linalg.norm(all_normals, axis=1, keepdims=True)


def area_weighted_vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """``(V, 3)`` outward unit normals: the mean of the adjacent faces' normals, weighted by area.

    Args:
        vertices: ``(V, 3)`` mm; faces: ``(F, 3)`` counter-clockwise seen from outside.
    """
    corners = vertices[faces]  # (F, 3, 3)
    face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])  # 2 x area
    normals = np.zeros_like(vertices)
    for corner in range(3):
        np.add.at(normals, faces[:, corner], face_normals)
    return normals / np.linalg.norm(normals, axis=1, keepdims=True)


def off_model_vertices(vertices: np.ndarray, faces: np.ndarray, rms_mm: float, seed: int) -> np.ndarray:
    """``(V, 3)`` mm: ``vertices`` moved by a smooth random field that no combination of the modes makes.

    A femur of another cohort is no combination of this model's 26 femurs: left out in turn, each of
    them lies 0.25-1.8 mm (median 0.8 mm) root mean square along the normals from the span of the
    other 25, locally up to 8 mm, and that residual's correlation along the surface falls as
    Matern's with ``OFF_MODEL_LENGTH_MM`` (0.62 at 5-10 mm, 0.29 at 15-20 mm;
    ``examples/off_model_residual.py``). The move is one such field (Matern, nu = 5/2,
    ``OFF_MODEL_WAVES`` random Fourier features in the model's frame) along the surface's normals
    averaged ``OFF_MODEL_NORMAL_SMOOTHING`` times over each vertex's neighbours (:func:`smoothed_vertex_normals`),
    scaled so that its component along the normals has ``rms_mm`` over the vertices.

    Args:
        vertices: ``(V, 3)`` mm; faces: ``(F, 3)`` counter-clockwise seen from outside.
        rms_mm: root mean square over the vertices of the move along the normals, mm.
        seed: the field's seed.
    """
    field = FourierField.matern(np.random.default_rng(seed), OFF_MODEL_WAVES, OFF_MODEL_LENGTH_MM, OFF_MODEL_SMOOTHNESS)
    values = field(torch.as_tensor(vertices, dtype=torch.float64))[:, 0].numpy()
    directions = smoothed_vertex_normals(vertices, faces, OFF_MODEL_NORMAL_SMOOTHING)
    along_normals = values * np.einsum("vd,vd->v", directions, area_weighted_vertex_normals(vertices, faces))
    return vertices + (values * rms_mm / np.sqrt(np.mean(along_normals**2)))[:, None] * directions


def smoothed_vertex_normals(vertices: np.ndarray, faces: np.ndarray, iterations: int) -> np.ndarray:
    """``(V, 3)`` unit normals averaged ``iterations`` times over each vertex and its neighbours.

    A surface moved along its own normals folds wherever it curves more tightly than the move (the
    model's mesh has a crease of small triangles where the head meets the neck); along normals
    averaged over ``iterations`` rings of neighbours (about ``3 sqrt(iterations)`` mm on the
    model's mesh) it folds only where it curves that tightly.

    Args:
        vertices: ``(V, 3)`` mm; faces: ``(F, 3)`` counter-clockwise seen from outside.
        iterations: neighbour averages.
    """
    from scipy.sparse import coo_matrix, identity  # lazy: SciPy's sparse only to simulate

    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    count = len(vertices)
    adjacent = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(count, count)).tocsr()
    neighbourhood = ((adjacent + adjacent.T) > 0).astype(np.float64) + identity(count, format="csr")
    normals = area_weighted_vertex_normals(vertices, faces)
    for _ in range(iterations):
        normals = neighbourhood @ normals
        normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    return normals
