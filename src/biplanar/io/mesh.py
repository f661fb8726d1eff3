"""Surface meshes of label maps in world millimetres, written as STL, PLY, OBJ or VTK (:func:`write_mesh`).

The surface of one label is the 0.5 iso-surface of its 0/1 indicator (marching cubes, Lewiner),
computed in voxel indices on the volume padded with one voxel of zeros on every side (so a label
touching the border still gives a closed surface), then mapped to world mm by the grid's affine
(any affine: anisotropic, rotated or flipped). Only the largest connected piece (most faces) is
kept; its faces are oriented with normals pointing out of the label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.io.atomic import atomic_path

PAD_VOX = 1  # zero voxels added on every side before marching cubes
TAUBIN_ITERATIONS = 10  # Taubin smoothing passes of a smoothed surface (trimesh's defaults otherwise)
MESH_FORMATS = ("stl", "ply", "obj", "vtk")  # write_mesh's formats, named by the file's suffix


def label_surface(labels: np.ndarray, grid: VolumeGrid, label: int = 1, smoothing_vox: float = 0.0):
    """The closed surface of ``labels == label``.

    Args:
        labels: ``(I, J, K)`` integer label map on ``grid``.
        grid: its voxel grid (world RAS+ mm).
        label: the label whose surface is wanted.
        smoothing_vox: standard deviation (voxels) of a Gaussian blur of the 0/1 indicator before
            marching cubes, followed by Taubin smoothing of the mesh (volume-preserving): no voxel
            staircase. 0: the plain marching-cubes surface.

    Returns:
        a :class:`trimesh.Trimesh`, vertices in world mm, outward normals, largest piece only.

    Raises:
        ValueError: ``labels`` not on ``grid``, or no voxel has ``label``.
    """
    import trimesh.smoothing  # lazy: trimesh only for meshes
    from skimage.measure import marching_cubes  # lazy: scikit-image only where it is used

    if tuple(labels.shape) != grid.shape:
        raise ValueError(f"labels: expected shape {grid.shape}, got {tuple(labels.shape)}")
    pad = PAD_VOX + int(np.ceil(3 * smoothing_vox))
    indicator = np.pad((labels == label).astype(np.float32), pad)
    if not indicator.any():
        raise ValueError(f"labels: no voxel has label {label}, so there is no surface")
    if smoothing_vox > 0:
        indicator = ndimage.gaussian_filter(indicator, smoothing_vox)
    vertices_padded, faces, _, _ = marching_cubes(indicator, level=0.5)
    vertices_vox = vertices_padded - pad  # padded indices -> indices of ``labels``
    vertices_world = vertices_vox @ grid.affine[:3, :3].T + grid.affine[:3, 3]
    mesh = trimesh.Trimesh(vertices_world, faces, process=True)
    pieces = mesh.split(only_watertight=False)
    mesh = max(pieces, key=lambda piece: len(piece.faces)) if len(pieces) > 1 else mesh
    # skimage winds the faces with normals into the label; a flipping affine (det < 0) reverses that.
    if mesh.volume < 0:
        mesh.invert()
    if smoothing_vox > 0:
        trimesh.smoothing.filter_taubin(mesh, iterations=TAUBIN_ITERATIONS)
    return mesh


def triangle_mesh(vertices_world: np.ndarray, faces: np.ndarray):
    """A :class:`trimesh.Trimesh` of ``(V, 3)`` world-mm vertices and ``(F, 3)`` vertex indices, kept as
    given (no merging or reordering: the vertex order is the correspondence between meshes)."""
    import trimesh  # lazy: trimesh only for meshes

    return trimesh.Trimesh(vertices_world, faces, process=False)


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


def write_mesh(path: str | Path, mesh) -> None:
    """Write a :class:`trimesh.Trimesh` atomically, in the format of ``path``'s suffix (:data:`MESH_FORMATS`).

    ``.stl``: binary STL; ``.ply``: binary little-endian PLY; ``.obj``: Wavefront OBJ, vertices and
    faces only (trimesh's exporters); ``.vtk``: legacy VTK polydata (:func:`vtk_polydata_bytes`).
    PLY, OBJ and VTK keep the vertices and faces in their order; STL stores each triangle's corners
    (a reader merges them again).

    Raises:
        ValueError: another suffix.
    """
    path = Path(path)
    file_type = path.suffix.lower().lstrip(".")
    if file_type not in MESH_FORMATS:
        raise ValueError(f"{path}: expected a mesh suffix of {', '.join(MESH_FORMATS)}, got {path.suffix!r}")
    if file_type == "vtk":
        data = vtk_polydata_bytes(np.asarray(mesh.vertices), np.asarray(mesh.faces))
    elif file_type == "obj":
        data = mesh.export(file_type="obj", include_normals=False, include_color=False, include_texture=False).encode()
    else:
        data = mesh.export(file_type=file_type)
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
