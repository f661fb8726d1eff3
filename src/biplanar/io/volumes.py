"""NIfTI volumes: read into (array, VolumeGrid), write atomically."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from biplanar.errors import InputError
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.io.atomic import atomic_path


def read_volume(path: str | Path) -> tuple[np.ndarray, VolumeGrid]:
    """Read a 3D NIfTI volume.

    Returns:
        ``(I, J, K)`` float32 array in the file's units, and its grid (shape and affine).

    Raises:
        InputError: missing or unreadable file, not 3D, non-finite values.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        image = nib.load(str(path))
        if not isinstance(image, nib.spatialimages.SpatialImage):
            raise TypeError(f"{type(image).__name__} is not a spatial image")
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as error:  # nibabel raises many types for corrupt files
        raise InputError(f"{path}: not a readable NIfTI volume ({type(error).__name__}: {error})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3D volume, got shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise InputError(f"{path}: contains NaN or infinite values")
    try:
        grid = VolumeGrid(data.shape, image.affine)
    except ValueError as error:
        raise InputError(f"{path}: {error}") from None
    return data, grid


def write_volume(path: str | Path, data: np.ndarray, grid: VolumeGrid, intent: str | None = None) -> None:
    """Write ``data`` (shape starting with ``grid.shape``) on ``grid`` to NIfTI, atomically.

    Args:
        path: ``.nii`` or ``.nii.gz``.
        data: ``(I, J, K, ...)`` array; its dtype is kept.
        grid: the voxel grid.
        intent: optional NIfTI intent code name (e.g. ``"vector"`` for displacement fields).
    """
    if tuple(data.shape[:3]) != grid.shape:
        raise ValueError(f"data: expected shape starting {grid.shape}, got {data.shape}")
    image = nib.Nifti1Image(data, grid.affine)
    image.header.set_xyzt_units("mm")
    if intent is not None:
        image.header.set_intent(intent)
    with atomic_path(Path(path)) as temporary:
        nib.save(image, str(temporary))
