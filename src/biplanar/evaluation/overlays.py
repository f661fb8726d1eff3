"""Overlay figures: a radiograph in grey with the contour of a projected region drawn in colour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from skimage import measure

from biplanar.io.atomic import atomic_path
from biplanar.io.images import window

UPSCALE = 4  # output pixels per radiograph pixel (room for a smooth contour line)
CONTOUR_COLOUR = "#ff3030"
CONTOUR_WIDTH_PX = 2


def write_contour_overlay(path: str | Path, radiograph: np.ndarray, region: np.ndarray) -> None:
    """Write an 8-bit RGB PNG of ``radiograph`` with the outline of ``region``.

    Args:
        path: the ``.png`` to write (atomically).
        radiograph: ``(rows, cols)`` image, any units (windowed to grey).
        region: ``(rows, cols)`` boolean (or 0/1) mask on the same pixels; its boundary is drawn
            at the 0.5 level, pixel centres at ``(u, v) = (col, row)``.

    Raises:
        ValueError: the two arrays differ in shape or are not 2D.
    """
    if radiograph.ndim != 2 or region.shape != radiograph.shape:
        raise ValueError(f"region: expected the radiograph's shape {radiograph.shape}, got {region.shape}")
    rows, cols = radiograph.shape
    grey = Image.fromarray(np.round(window(radiograph) * 255.0).astype(np.uint8))
    image = grey.resize((cols * UPSCALE, rows * UPSCALE), Image.Resampling.NEAREST).convert("RGB")
    draw = ImageDraw.Draw(image)
    # Pixel centre (row, col) lies at ((col + 0.5) * UPSCALE, (row + 0.5) * UPSCALE) in the image.
    for contour in measure.find_contours(np.asarray(region, dtype=np.float32), 0.5):
        points = [((col + 0.5) * UPSCALE, (row + 0.5) * UPSCALE) for row, col in contour]
        draw.line(points, fill=CONTOUR_COLOUR, width=CONTOUR_WIDTH_PX, joint="curve")
    with atomic_path(Path(path)) as temporary:
        image.save(temporary, format="PNG")
