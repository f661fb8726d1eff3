"""The atlas: the mean-shape phantom (image, femur labels, landmarks), shipped for every grid preset.

Layout of an atlas folder (the shipped ones live in ``biplanar/resources/atlas/<preset>/``)::

    atlas.nii.gz          int16 HU (rounded from the generator's float HU), atlas grid and affine
    atlas_labels.nii.gz   uint8, 1 = femur
    landmarks.json        head centre and radius, neck/shaft axes, trochanter tips, world mm
    atlas_surface.npz     optional: the femur's smooth surface (:func:`atlas_surface`), stored so
                          that ``register`` need not make it (nor import trimesh to smooth it)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from biplanar.data.grid_presets import GRID_PRESETS
from biplanar.errors import InputError
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.io.atomic import atomic_path
from biplanar.io.json_files import read_json
from biplanar.io.mesh import TriangleMesh, label_surface
from biplanar.io.volumes import read_volume
from biplanar.layers.warp import SpatialTransformer, warp_labels

IMAGE_FILE, LABELS_FILE, LANDMARKS_FILE = "atlas.nii.gz", "atlas_labels.nii.gz", "landmarks.json"
SURFACE_FILE = "atlas_surface.npz"
FEMUR_LABEL = 1
SURFACE_SMOOTHING_VOX = 1.0  # Gaussian blur of the femur label before its surface is extracted


@dataclass(frozen=True)
class Atlas:
    """An atlas image with its label map and landmarks.

    Attributes:
        ct_hu: ``(I, J, K)`` float32 HU on ``grid``.
        labels: ``(I, J, K)`` uint8, 1 = femur.
        grid: the atlas grid (world RAS+ mm).
        landmarks: name -> value (world mm; see :class:`biplanar.data.phantom.FemurLandmarks`).
        surface: the femur's surface as stored in the atlas folder (:data:`SURFACE_FILE`), or
            ``None``: :func:`atlas_surface` then makes it.
    """

    ct_hu: np.ndarray
    labels: np.ndarray
    grid: VolumeGrid
    landmarks: dict
    surface: TriangleMesh | None = None


def require_preset(preset: str, field: str = "preset") -> None:
    """Raise :class:`InputError` ``"<field>: expected one of paper, lite, tiny, got '../x'"`` unless
    ``preset`` names a grid preset (a name from a file is a name, never a path)."""
    if preset not in GRID_PRESETS:
        raise InputError(f"{field}: expected one of {', '.join(GRID_PRESETS)}, got {preset!r}")


def shipped_atlas_dir(preset: str) -> Path:
    """The folder of the atlas shipped with the package for ``preset``.

    Raises:
        InputError: ``preset`` is not one of :data:`GRID_PRESETS` (e.g. a path).
    """
    require_preset(preset)
    return Path(str(resources.files("biplanar") / "resources" / "atlas" / preset))


def load_atlas(preset: str = "lite", directory: str | Path | None = None) -> Atlas:
    """Read an atlas folder (by default the shipped atlas of ``preset``).

    Raises:
        InputError: a missing file or labels that do not match the image grid.
    """
    directory = Path(directory) if directory is not None else shipped_atlas_dir(preset)
    ct_hu, grid = read_volume(directory / IMAGE_FILE)
    labels, label_grid = read_volume(directory / LABELS_FILE)
    if label_grid.shape != grid.shape or not np.allclose(label_grid.affine, grid.affine, atol=1e-4):
        raise InputError(f"{directory / LABELS_FILE}: grid differs from {directory / IMAGE_FILE}")
    landmarks = read_json(directory / LANDMARKS_FILE)
    labels = labels.astype(np.uint8)
    return Atlas(ct_hu, labels, grid, landmarks, read_atlas_surface(directory / SURFACE_FILE, labels, grid))


def surface_key(labels: np.ndarray, grid: VolumeGrid) -> str:
    """What a stored atlas surface was made from: a SHA-1 of the labels, the grid's affine and the
    smoothing. A stored surface whose key differs (the labels edited since) is ignored."""
    digest = hashlib.sha1(np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    digest.update(np.asarray(grid.affine, dtype=np.float32).tobytes())  # as NIfTI stores it
    digest.update(f"{labels.shape} {SURFACE_SMOOTHING_VOX}".encode())
    return digest.hexdigest()


def atlas_surface(atlas: Atlas) -> TriangleMesh:
    """The atlas femur's smooth, closed surface (world mm): the one stored beside the atlas, else
    the marching cubes of its label map blurred by :data:`SURFACE_SMOOTHING_VOX` voxels,
    Taubin-smoothed (:func:`biplanar.io.mesh.label_surface`). Every registration carries these
    vertices, in this order."""
    if atlas.surface is not None:
        return atlas.surface
    return label_surface(atlas.labels, atlas.grid, FEMUR_LABEL, SURFACE_SMOOTHING_VOX)


def write_atlas_surface(directory: str | Path, labels: np.ndarray, grid: VolumeGrid) -> Path:
    """Make the femur surface of an atlas's ``(I, J, K)`` ``labels`` on ``grid`` and store it in
    ``directory`` (:data:`SURFACE_FILE`: ``vertices`` world mm stored as float32, to 1e-5 mm;
    ``faces`` int32; ``key``), atomically."""
    mesh = label_surface(labels, grid, FEMUR_LABEL, SURFACE_SMOOTHING_VOX)
    path = Path(directory) / SURFACE_FILE
    with atomic_path(path) as temporary:
        np.savez_compressed(
            temporary,
            vertices=mesh.vertices.astype(np.float32),
            faces=mesh.faces.astype(np.int32),
            key=surface_key(labels, grid),
        )
    return path


def read_atlas_surface(path: Path, labels: np.ndarray, grid: VolumeGrid) -> TriangleMesh | None:
    """The surface stored at ``path`` if it was made from these ``labels`` on ``grid``, else ``None``."""
    if not path.is_file():
        return None
    with np.load(path) as stored:
        if str(stored["key"]) != surface_key(labels, grid):
            return None
        return TriangleMesh(stored["vertices"].astype(np.float64), stored["faces"].astype(np.int64))


def warped_atlas_labels(atlas, displacement: Tensor) -> np.ndarray:
    """The atlas label map warped by a displacement (nearest neighbour), as ``warped_labels.nii.gz``.

    Outside the atlas box the warp takes the nearest border label, as :func:`warped_atlas_hu` takes
    the nearest border HU: the atlas is cut from a whole femur, whose shaft leaves the grid through
    its distal face, so a warp that shrinks the femur, drawing the distal slices from beyond that
    face, continues the shaft instead of ending it above the face.

    Args:
        atlas: an :class:`~biplanar.data.atlas.Atlas` (``labels`` ``(I, J, K)``, ``grid``).
        displacement: ``(1, 3, I, J, K)`` mm, world components, on the atlas grid (pull:
            warped(p) = labels(p + displacement(p))).

    Returns:
        ``(I, J, K)`` uint8 labels on the atlas grid.
    """

    atlas_labels = torch.from_numpy(atlas.labels.astype(np.int64))[None, None].to(displacement.device)
    warped = warp_labels(atlas_labels, displacement, atlas.grid, "nearest", padding_mode="border")
    return warped[0, 0].cpu().numpy().astype(np.uint8)


def warped_atlas_hu(atlas, displacement: Tensor) -> Tensor:
    """The atlas CT warped by a displacement, as ``warped_atlas.nii.gz``.

    Outside the atlas box the warp takes the nearest border HU (surrounding tissue), not 0 HU.

    Args:
        atlas: an :class:`~biplanar.data.atlas.Atlas` (``ct_hu`` ``(I, J, K)``, ``grid``).
        displacement: ``(1, 3, I, J, K)`` mm, world components, on the atlas grid (pull:
            warped(p) = atlas(p + displacement(p))).

    Returns:
        ``(1, 1, I, J, K)`` float32 HU on the atlas grid, on ``displacement``'s device.
    """

    displacement = displacement.float()
    atlas_hu = torch.from_numpy(atlas.ct_hu).float()[None, None].to(displacement.device)  # (1, 1, I, J, K)
    return SpatialTransformer(atlas.grid, padding_mode="border").to(displacement.device)(atlas_hu, displacement)
