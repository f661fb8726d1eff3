"""The Python API behind the command line: each CLI command calls one function here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from biplanar.errors import InputError
from biplanar.geometry.presets import biplanar_pair
from biplanar.io.geometry_file import read_geometry, require_views, write_geometry
from biplanar.io.images import WRITE_SUFFIXES, write_image, write_preview_png
from biplanar.io.volumes import read_volume
from biplanar.physics.drr import render_ct_radiograph, render_drr


def _check_output_suffix(path: Path, allowed: tuple[str, ...]) -> None:
    if path.suffix.lower() not in allowed:
        raise InputError(f"{path}: unsupported output format {path.suffix!r} (use {', '.join(allowed)})")


def render_drr_file(
    volume_path: Path,
    geometry_path: Path,
    view_name: str,
    out_path: Path,
    mode: str = "line_integral",
    units: str = "hu",
    mu_water_per_mm: float = 0.02,
    num_samples: int = 256,
    photons: float = 1e5,
    seed: int = 0,
    preview: Path | None = None,
    kvp: float = 80.0,
    aluminium_mm: float = 2.5,
) -> np.ndarray:
    """Render a DRR of a NIfTI volume for one view of a geometry file and write it.

    Args:
        volume_path: NIfTI volume, HU (``units="hu"``) or attenuation 1/mm (``units="mu"``).
        geometry_path: ``geometry.json``; a ``carm`` without isocentre uses the volume's centre.
        view_name: the view to render.
        out_path: ``.npy`` or ``.tif`` float32 output.
        mode, num_samples, photons: see :func:`biplanar.physics.render_drr`; ``"polychromatic"``
            renders a two-material DRR (HU volumes only) with a ``kvp`` tube and ``aluminium_mm``
            filtration (:mod:`biplanar.physics.polychromatic`).
        seed: noise seed for ``mode="poisson"``.
        preview: optional 8-bit PNG for viewing.

    Returns:
        the ``(rows, cols)`` image that was written.
    """
    _check_output_suffix(Path(out_path), WRITE_SUFFIXES)
    if preview is not None:
        _check_output_suffix(Path(preview), (".png",))
    data, grid = read_volume(volume_path)
    views = read_geometry(geometry_path, default_isocenter_mm=grid.centre_world)
    require_views(views, [view_name], str(geometry_path))
    volume = torch.from_numpy(data)[None, None]
    if mode == "polychromatic" and units != "hu":
        raise InputError(f"{volume_path}: the polychromatic mode needs a volume in HU")
    generator = torch.Generator().manual_seed(seed)
    try:
        if units == "hu":
            image = render_ct_radiograph(
                volume,
                views[view_name],
                grid,
                mode,
                num_samples,
                photons,
                generator,
                kvp,
                aluminium_mm,
                mu_water_per_mm,
            )
        else:
            image = render_drr(volume, views[view_name], grid, mode, num_samples, photons, generator)
    except ValueError as error:
        raise InputError(f"{geometry_path}: views.{view_name}: {error}") from None
    image = image[0, 0].numpy()
    write_image(out_path, image)
    if preview is not None:
        write_preview_png(preview, image)
    return image


def write_carm_geometry(
    out_path: Path, ap_lao_rao_deg: float, lat_lao_rao_deg: float, image_shape: tuple[int, int], pixel_spacing_mm: float
) -> None:
    """Write an AP + LAT C-arm geometry file at the paper's distances, isocentre left to the volume."""
    _check_output_suffix(Path(out_path), (".json",))
    views = biplanar_pair(ap_lao_rao_deg, lat_lao_rao_deg, image_shape, (pixel_spacing_mm, pixel_spacing_mm))
    write_geometry(out_path, views)
