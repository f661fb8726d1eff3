"""Radiograph files (``docs/contract.md`` section 4): read .npy/.tif/.png/.dcm, write .npy/.tif.

Images are ``(rows, cols)`` float32 arrays; ``v`` is the row index, ``u`` the column index.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import tifffile
from PIL import Image

from biplanar.errors import InputError
from biplanar.io.atomic import atomic_path

READ_SUFFIXES = (".npy", ".tif", ".tiff", ".png", ".dcm")
WRITE_SUFFIXES = (".npy", ".tif", ".tiff")


def _suffix(path: Path, allowed: tuple[str, ...]) -> str:
    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise InputError(f"{path}: unsupported image format {suffix!r} (use {', '.join(allowed)})")
    return suffix


def _read_pixels(path: Path, suffix: str) -> np.ndarray:
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix in (".tif", ".tiff"):
        return tifffile.imread(path)
    if suffix == ".png":
        with Image.open(path) as image:
            return np.asarray(image)

    return pydicom.dcmread(path).pixel_array


def read_image(path: str | Path) -> np.ndarray:
    """Read a radiograph as a ``(rows, cols)`` float32 array.

    Raises:
        InputError: missing, unreadable, not 2D (a 3-channel PNG is averaged), or non-finite.
    """
    path = Path(path)
    suffix = _suffix(path, READ_SUFFIXES)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        pixels = np.asarray(_read_pixels(path, suffix))
    except Exception as error:  # each reader raises its own types for corrupt files
        raise InputError(f"{path}: unreadable image ({type(error).__name__}: {error})") from None
    if pixels.ndim == 3 and suffix == ".png" and pixels.shape[2] in (3, 4):
        pixels = pixels[..., :3].mean(axis=2)
    if pixels.ndim != 2:
        raise InputError(f"{path}: expected a 2D image (rows, cols), got shape {pixels.shape}")
    pixels = pixels.astype(np.float32)
    if not np.all(np.isfinite(pixels)):
        raise InputError(f"{path}: contains NaN or infinite values")
    return pixels


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write a ``(rows, cols)`` image as float32 ``.npy`` or ``.tif``, atomically."""
    path = Path(path)
    suffix = _suffix(path, WRITE_SUFFIXES)
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"image: expected shape (rows, cols), got {image.shape}")
    with atomic_path(path) as temporary:
        if suffix == ".npy":
            np.save(temporary, image)
        else:
            tifffile.imwrite(temporary, image)


WINDOW_PERCENTILES = (0.5, 99.5)  # display window of a radiograph, percentiles of its values


def window(image: np.ndarray) -> np.ndarray:
    """``image`` mapped to ``[0, 1]`` by its :data:`WINDOW_PERCENTILES` (clipped), for display."""
    low, high = np.percentile(image, WINDOW_PERCENTILES)
    return np.clip((image - low) / max(float(high - low), 1e-12), 0.0, 1.0)


def write_preview_png(path: str | Path, image: np.ndarray) -> None:
    """Write an 8-bit PNG of an image for viewing, windowed by :func:`window`."""

    scaled = window(image)
    with atomic_path(Path(path)) as temporary:
        Image.fromarray((scaled * 255).round().astype(np.uint8)).save(temporary, format="PNG")


def write_mask_png(path: str | Path, mask: np.ndarray) -> None:
    """Write a ``(rows, cols)`` boolean mask as an 8-bit PNG (255 = inside, 0 = outside), atomically.

    :func:`read_image` reads it back; a mask is inside where its value is > 0.
    """

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected shape (rows, cols), got {mask.shape}")
    with atomic_path(Path(path)) as temporary:
        Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8)).save(temporary, format="PNG")
