"""Surface meshes of label maps in world millimetres, written as STL, PLY, OBJ or VTK (:func:`write_mesh`).

The surface of one label is the 0.5 iso-surface of its 0/1 indicator (marching cubes, Lewiner),
computed in voxel indices on the volume padded with one voxel of zeros on every side (so a label
touching the border still gives a closed surface), then mapped to world mm by the grid's affine
(any affine: anisotropic, rotated or flipped). Only the largest connected piece of the label is
meshed (26-connected voxels, its cavities filled: one closed outer surface); its faces are oriented
with normals pointing out of the label.

A mesh is a :class:`TriangleMesh` (vertices and faces). trimesh is imported only to smooth one
(:func:`label_surface` with ``smoothing_vox``); the rest is NumPy, SciPy's ``ndimage``,
scikit-image and meshio, so that ``register`` does not pay trimesh's import (0.27 s with the SciPy
modules and networkx it loads, of a 3 s budget; docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.io.atomic import atomic_path

PAD_VOX = 1  # zero voxels added on every side before marching cubes
TAUBIN_ITERATIONS = 10  # Taubin smoothing passes of a smoothed surface (trimesh's defaults otherwise)
MESH_FORMATS = ("stl", "ply", "obj", "vtk")  # write_mesh's formats, named by the file's suffix


@dataclass(frozen=True)
class TriangleMesh:
    """A triangle mesh.

    Attributes:
        vertices: ``(V, 3)`` float64 world mm.
        faces: ``(F, 3)`` int64 vertex indices, counter-clockwise seen from outside (outward normals).
    """

    vertices: np.ndarray
    faces: np.ndarray

    @property
    def triangles(self) -> np.ndarray:
        """``(F, 3, 3)`` world mm: each face's corners."""
        return self.vertices[self.faces]

    @property
    def volume(self) -> float:
        """The enclosed volume, mm^3 (divergence theorem): negative when the normals point inwards."""
        corners = self.triangles
        return float(np.einsum("ij,ij->i", corners[:, 0], np.cross(corners[:, 1], corners[:, 2])).sum() / 6.0)

    def inverted(self) -> TriangleMesh:
        """The same surface with every face's winding reversed (normals flipped)."""
        return TriangleMesh(self.vertices, np.ascontiguousarray(self.faces[:, ::-1]))


def largest_piece(indicator: np.ndarray) -> np.ndarray:
    """The largest 26-connected piece of a binary volume, its cavities filled (``(I, J, K)`` bool)."""
    pieces, count = ndimage.label(indicator, structure=np.ones((3, 3, 3), dtype=bool))
    if count > 1:
        sizes = np.bincount(pieces.ravel())[1:]
        indicator = pieces == 1 + int(np.argmax(sizes))
    return ndimage.binary_fill_holes(indicator)


def label_surface(labels: np.ndarray, grid: VolumeGrid, label: int = 1, smoothing_vox: float = 0.0) -> TriangleMesh:
    """The closed surface of ``labels == label`` (its largest piece).

    Args:
        labels: ``(I, J, K)`` integer label map on ``grid``.
        grid: its voxel grid (world RAS+ mm).
        label: the label whose surface is wanted.
        smoothing_vox: standard deviation (voxels) of a Gaussian blur of the 0/1 indicator before
            marching cubes, followed by Taubin smoothing of the mesh (volume-preserving, trimesh's
            ``filter_taubin``): no voxel staircase. 0: the plain marching-cubes surface.

    Returns:
        the surface, vertices in world mm, outward normals.

    Raises:
        ValueError: ``labels`` not on ``grid``, or no voxel has ``label``.
    """
    from skimage.measure import marching_cubes  # lazy: scikit-image only where it is used

    if tuple(labels.shape) != grid.shape:
        raise ValueError(f"labels: expected shape {grid.shape}, got {tuple(labels.shape)}")
    if not np.any(labels == label):
        raise ValueError(f"labels: no voxel has label {label}, so there is no surface")
    pad = PAD_VOX + int(np.ceil(3 * smoothing_vox))
    indicator = np.pad(largest_piece(labels == label).astype(np.float32), pad)
    if smoothing_vox > 0:
        indicator = ndimage.gaussian_filter(indicator, smoothing_vox)
    vertices_padded, faces, _, _ = marching_cubes(indicator, level=0.5)
    vertices_vox = vertices_padded.astype(np.float64) - pad  # padded indices -> indices of ``labels``
    vertices_world = vertices_vox @ grid.affine[:3, :3].T + grid.affine[:3, 3]
    mesh = TriangleMesh(vertices_world, faces.astype(np.int64))
    # skimage winds the faces with normals into the label; a flipping affine (det < 0) reverses that.
    if mesh.volume < 0:
        mesh = mesh.inverted()
    return taubin_smoothed(mesh) if smoothing_vox > 0 else mesh


def taubin_smoothed(mesh: TriangleMesh) -> TriangleMesh:
    """``mesh`` after :data:`TAUBIN_ITERATIONS` passes of trimesh's Taubin filter (its defaults otherwise)."""
    import trimesh.smoothing  # lazy: trimesh (0.27 s to import) only to smooth

    smoothed = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    trimesh.smoothing.filter_taubin(smoothed, iterations=TAUBIN_ITERATIONS)
    return TriangleMesh(np.asarray(smoothed.vertices, dtype=np.float64), mesh.faces)


def vtk_polydata_bytes(
    vertices_world: np.ndarray, faces: np.ndarray, title: str = "biplanar surface, world mm"
) -> bytes:
    """A triangle mesh as a legacy VTK file (``DATASET POLYDATA``, ``BINARY``: big-endian float32
    points and int32 polygons, each ``3 a b c``), which 3D Slicer, ParaView and VTK read.

    Args:
        vertices_world: ``(V, 3)`` world mm.
        faces: ``(F, 3)`` vertex indices.
        title: the file's one-line title.

    Raises:
        ValueError: shapes other than ``(V, 3)`` and ``(F, 3)``.
    """
    if vertices_world.ndim != 2 or vertices_world.shape[1] != 3:
        raise ValueError(f"vertices_world: expected shape (V, 3), got {vertices_world.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces: expected shape (F, 3), got {faces.shape}")
    polygons = np.concatenate([np.full((len(faces), 1), 3), faces], axis=1)  # (F, 4): count, then the corners
    return b"".join(
        [
            f"# vtk DataFile Version 3.0\n{title}\nBINARY\nDATASET POLYDATA\n".encode("ascii"),
            f"POINTS {len(vertices_world)} float\n".encode("ascii"),
            np.ascontiguousarray(vertices_world, ">f4").tobytes(),
            f"\nPOLYGONS {len(faces)} {polygons.size}\n".encode("ascii"),
            np.ascontiguousarray(polygons, ">i4").tobytes(),
            b"\n",
        ]
    )


def write_mesh(path: str | Path, mesh: TriangleMesh) -> None:
    """Write a mesh atomically, in the format of ``path``'s suffix (:data:`MESH_FORMATS`).

    ``.stl``: binary STL; ``.ply``: binary little-endian PLY; ``.obj``: Wavefront OBJ, vertices and
    faces only (meshio's writers); ``.vtk``: legacy VTK polydata (:func:`vtk_polydata_bytes`).
    PLY, OBJ and VTK keep the vertices and faces in their order; STL stores each triangle's corners
    (a reader merges them again).

    Raises:
        ValueError: another suffix.
    """
    path = Path(path)
    file_type = path.suffix.lower().lstrip(".")
    if file_type not in MESH_FORMATS:
        raise ValueError(f"{path}: expected a mesh suffix of {', '.join(MESH_FORMATS)}, got {path.suffix!r}")
    with atomic_path(path) as temporary:
        if file_type == "vtk":
            temporary.write_bytes(vtk_polydata_bytes(mesh.vertices, mesh.faces))
        else:
            import meshio  # lazy: meshio only where meshes are written

            cells = [("triangle", np.asarray(mesh.faces, dtype=np.int32))]  # PLY has no 64-bit integers
            options = {"binary": True} if file_type in ("stl", "ply") else {}
            meshio.write(temporary, meshio.Mesh(np.asarray(mesh.vertices), cells), file_format=file_type, **options)
