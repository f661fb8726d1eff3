"""What ``register`` reads: the geometry's two views, the radiographs and their masks, the atlas
the model registers and, optionally, the true labels that score the result."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from biplanar.data.atlas import FEMUR_LABEL, load_atlas
from biplanar.errors import InputError
from biplanar.geometry.presets import VIEW_NAMES
from biplanar.geometry.projection import ProjectionView
from biplanar.io.geometry_file import read_geometry, require_views
from biplanar.io.images import read_image
from biplanar.io.volumes import read_volume
from biplanar.physics.attenuation import hu_to_mu


def read_views(
    geometry_path: Path, default_isocenter_mm: np.ndarray, model_image_shape: tuple[int, int]
) -> dict[str, ProjectionView]:
    """The AP and LAT views of the geometry file, checked against the model's detector shape."""
    views = read_geometry(geometry_path, default_isocenter_mm)
    require_views(views, list(VIEW_NAMES), str(geometry_path))
    extra = sorted(set(views) - set(VIEW_NAMES))
    if extra:
        raise InputError(f"{geometry_path}: views: register takes exactly AP and LAT, got also {', '.join(extra)}")
    for name in VIEW_NAMES:
        if views[name].image_shape != tuple(model_image_shape):
            raise InputError(
                f"{geometry_path}: views.{name}.image_shape {list(views[name].image_shape)} "
                f"differs from the model's {list(model_image_shape)}"
            )
    return views


def _read_shaped(path: Path, shape: tuple[int, int], view: str) -> np.ndarray:
    image = read_image(path)
    if image.shape != shape:
        raise InputError(
            f"{path}: image shape {list(image.shape)} differs from the geometry's "
            f"views.{view}.image_shape {list(shape)}"
        )
    return image


def read_radiographs(
    image_paths: dict[str, Path], mask_paths: dict[str, Path | None], views: dict[str, ProjectionView]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The radiographs and the network's inputs (radiograph x (mask > 0), or the radiograph without
    masks), each view name -> ``(rows, cols)`` float32."""
    given = [name for name, path in mask_paths.items() if path is not None]
    if len(given) == 1:
        raise InputError(f"{mask_paths[given[0]]}: a mask for {given[0]} only; give both AP and LAT masks or none")
    images = {name: _read_shaped(path, views[name].image_shape, name) for name, path in image_paths.items()}
    if not given:
        print(
            "warning: no AP/LAT femur masks given: the radiographs are used unmasked "
            "(the network was trained on masked radiographs)",
            file=sys.stderr,
            flush=True,
        )
        return images, images
    return images, {
        name: images[name] * (_read_shaped(mask_paths[name], views[name].image_shape, name) > 0) for name in VIEW_NAMES
    }


def load_model_atlas(atlas_dir: Path | None, network):
    """The atlas to register: the model's own, or ``atlas_dir`` on the same grid (then the network's
    atlas buffers are replaced by it)."""

    atlas = load_atlas(network.config.geometry.grid_preset, atlas_dir)
    grid = network.grid
    if atlas.grid.shape != grid.shape or not np.allclose(atlas.grid.affine, grid.affine, atol=1e-4):
        raise InputError(
            f"{atlas_dir}: atlas grid {atlas.grid.shape} differs from the model's atlas grid "
            f"{grid.shape} (or its affine)"
        )
    if atlas_dir is not None:
        device = network.atlas_mu.device
        network.atlas_mu.copy_(hu_to_mu(torch.from_numpy(atlas.ct_hu).float())[None, None].to(device))
        network.atlas_labels.copy_(torch.from_numpy(atlas.labels > 0).float()[None, None].to(device))
    return atlas


def read_truth(truth_path: Path | None, atlas) -> np.ndarray | None:
    """The true femur ``(I, J, K)`` bool on the atlas grid, or ``None`` without ``truth_path``."""
    if truth_path is None:
        return None
    truth, grid = read_volume(truth_path)
    if grid.shape != atlas.grid.shape or not np.allclose(grid.affine, atlas.grid.affine, atol=1e-4):
        raise InputError(
            f"{truth_path}: grid {grid.shape} differs from the atlas grid {atlas.grid.shape} (or its affine)"
        )
    return np.round(truth) == FEMUR_LABEL
