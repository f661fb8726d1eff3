"""Overlay figures: a radiograph in grey with the contour of a projected region drawn in colour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from biplanar.io.atomic import atomic_path
from biplanar.io.images import window

UPSCALE = 4  # output pixels per radiograph pixel (room for a smooth contour line)
CONTOUR_COLOUR = "#ff3030"
CONTOUR_WIDTH_PX = 2.0


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
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: matplotlib only for pictures
    from matplotlib.figure import Figure  # lazy: matplotlib only for pictures

    if radiograph.ndim != 2 or region.shape != radiograph.shape:
        raise ValueError(f"region: expected the radiograph's shape {radiograph.shape}, got {region.shape}")
    rows, cols = radiograph.shape
    figure = Figure(figsize=(cols * UPSCALE / 100, rows * UPSCALE / 100), dpi=100)
    axes = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    axes.imshow(window(radiograph), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    if np.any(region) and not np.all(region):
        axes.contour(
            np.asarray(region, dtype=np.float32),
            levels=[0.5],
            colors=CONTOUR_COLOUR,
            linewidths=CONTOUR_WIDTH_PX * 72 / 100,
        )
    axes.set_xlim(-0.5, cols - 0.5)
    axes.set_ylim(rows - 0.5, -0.5)  # row 0 at the top
    axes.set_axis_off()
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3]
    with atomic_path(Path(path)) as temporary:
        Image.fromarray(np.ascontiguousarray(rgb)).save(temporary, format="PNG")
