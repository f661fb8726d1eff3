"""Surface meshes of label maps in world millimetres, written as binary STL.

The surface of one label is the 0.5 iso-surface of its 0/1 indicator (marching cubes, Lewiner),
computed in voxel indices on the volume padded with one voxel of zeros on every side (so a label
touching the border still gives a closed surface), then mapped to world mm by the grid's affine
(any affine: anisotropic, rotated or flipped). Only the largest connected piece (most faces) is
kept; its faces are oriented with normals pointing out of the label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.io.atomic import atomic_path

PAD_VOX = 1  # zero voxels added on every side before marching cubes


def label_surface(labels: np.ndarray, grid: VolumeGrid, label: int = 1):
    """The closed surface of ``labels == label``.

    Args:
        labels: ``(I, J, K)`` integer label map on ``grid``.
        grid: its voxel grid (world RAS+ mm).
        label: the label whose surface is wanted.

    Returns:
        a :class:`trimesh.Trimesh`, vertices in world mm, outward normals, largest piece only.

    Raises:
        ValueError: ``labels`` not on ``grid``, or no voxel has ``label``.
    """
    import trimesh  # lazy: trimesh only for meshes
    from skimage.measure import marching_cubes  # lazy: scikit-image only where it is used

    if tuple(labels.shape) != grid.shape:
        raise ValueError(f"labels: expected shape {grid.shape}, got {tuple(labels.shape)}")
    indicator = np.pad((labels == label).astype(np.float32), PAD_VOX)
    if not indicator.any():
        raise ValueError(f"labels: no voxel has label {label}, so there is no surface")
    vertices_padded, faces, _, _ = marching_cubes(indicator, level=0.5)
    vertices_vox = vertices_padded - PAD_VOX  # padded indices -> indices of ``labels``
    vertices_world = vertices_vox @ grid.affine[:3, :3].T + grid.affine[:3, 3]
    mesh = trimesh.Trimesh(vertices_world, faces, process=True)
    pieces = mesh.split(only_watertight=False)
    mesh = max(pieces, key=lambda piece: len(piece.faces)) if len(pieces) > 1 else mesh
    # skimage winds the faces with normals into the label; a flipping affine (det < 0) reverses that.
    if mesh.volume < 0:
        mesh.invert()
    return mesh


def write_stl(path: str | Path, mesh) -> None:
    """Write a :class:`trimesh.Trimesh` as binary STL, atomically."""
    with atomic_path(Path(path)) as temporary:
        temporary.write_bytes(mesh.export(file_type="stl"))
