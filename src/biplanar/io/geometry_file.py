"""Reading, validating and writing ``geometry.json`` (``docs/contract.md`` section 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from biplanar.errors import InputError, shown
from biplanar.geometry.projection import CarmPose, ProjectionView
from biplanar.io.json_files import read_json, write_json

AGREEMENT_TOLERANCE = 1e-6  # relative, between a view's matrix and its C-arm (CONTRACT section 2)

_CARM_FIELDS = {
    "lao_rao_deg": float,
    "cranio_caudal_deg": float,
    "source_isocenter_mm": float,
    "source_detector_mm": float,
}


def _numbers(value: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond float64
        raise InputError(f"{where}: expected numbers of shape {shape}") from None
    if array.shape != shape or not np.all(np.isfinite(array)):
        raise InputError(f"{where}: expected finite numbers of shape {shape}, got {shown(value)}")
    return array


def _parse_carm(carm: Any, where: str) -> CarmPose:
    if not isinstance(carm, dict):
        raise InputError(f"{where}: expected an object")
    unknown = set(carm) - set(_CARM_FIELDS) - {"isocenter_mm", "pixel_spacing_mm"}
    if unknown:
        raise InputError(f"{where}: unknown field(s) {sorted(unknown)}")
    values: dict[str, Any] = {}
    for key in _CARM_FIELDS:
        if key in carm:
            values[key] = float(_numbers(carm[key], (), f"{where}.{key}"))
    if "pixel_spacing_mm" in carm:
        spacing = _numbers(carm["pixel_spacing_mm"], (2,), f"{where}.pixel_spacing_mm")
        values["pixel_spacing_mm"] = tuple(spacing)
    if carm.get("isocenter_mm") is not None:
        values["isocenter_mm"] = tuple(_numbers(carm["isocenter_mm"], (3,), f"{where}.isocenter_mm"))
    return CarmPose(**values)


def _parse_view(name: str, spec: Any, where: str, default_isocenter_mm: np.ndarray | None) -> ProjectionView:
    if not isinstance(spec, dict):
        raise InputError(f"{where}: expected an object")
    if "image_shape" not in spec:
        raise InputError(f"{where}.image_shape: missing")
    shape = _numbers(spec["image_shape"], (2,), f"{where}.image_shape")
    if np.any(shape < 1) or np.any(shape != np.round(shape)):
        raise InputError(f"{where}.image_shape: expected two positive integers, got {shown(spec['image_shape'])}")
    image_shape = (int(shape[0]), int(shape[1]))
    if "projection_matrix" not in spec and "carm" not in spec:
        raise InputError(f"{where}: needs 'projection_matrix' or 'carm'")
    views = []
    try:
        if "projection_matrix" in spec:
            matrix = _numbers(spec["projection_matrix"], (3, 4), f"{where}.projection_matrix")
            views.append(ProjectionView(matrix, image_shape, name))
        if "carm" in spec:
            carm = _parse_carm(spec["carm"], f"{where}.carm")
            views.append(ProjectionView.from_carm(carm, image_shape, default_isocenter_mm, name))
    except ValueError as error:
        raise InputError(f"{where}: {error}") from None
    if len(views) == 2:
        from_matrix, from_carm = views
        # Both are normalised to ||P[2, :3]|| = 1, so agreeing "up to scale" means equal up to sign.
        scale = np.linalg.norm(from_carm.matrix)
        if np.linalg.norm(from_matrix.matrix - from_carm.matrix) > AGREEMENT_TOLERANCE * scale:
            raise InputError(f"{where}: projection_matrix and carm disagree (beyond 1e-6 relative)")
        return ProjectionView(from_carm.matrix, image_shape, name, from_carm.carm)
    return views[0]


def parse_geometry(
    document: Any, source: str = "geometry", default_isocenter_mm: np.ndarray | None = None
) -> dict[str, ProjectionView]:
    """Validate a parsed geometry document into named views.

    Args:
        document: the JSON object.
        source: how errors name the file.
        default_isocenter_mm: ``(3,)`` world mm used where a ``carm`` omits ``isocenter_mm``
            (the centre of the atlas or CT volume).

    Raises:
        InputError: naming the file and field that is wrong.
    """
    if not isinstance(document, dict) or not isinstance(document.get("views"), dict):
        raise InputError(f"{source}: expected an object with a 'views' object")
    if not document["views"]:
        raise InputError(f"{source}: views: no view given")
    return {
        name: _parse_view(name, spec, f"{source}: views.{name}", default_isocenter_mm)
        for name, spec in document["views"].items()
    }


def read_geometry(path: str | Path, default_isocenter_mm: np.ndarray | None = None) -> dict[str, ProjectionView]:
    """Read ``geometry.json``; see :func:`parse_geometry`."""
    return parse_geometry(read_json(path), str(path), default_isocenter_mm)


def require_views(views: dict[str, ProjectionView], names: list[str], source: str) -> None:
    """Raise if any of ``names`` is missing from ``views``."""
    missing = [name for name in names if name not in views]
    if missing:
        raise InputError(f"{source}: views: missing {', '.join(missing)} (has {', '.join(views)})")


def view_to_dict(view: ProjectionView) -> dict[str, Any]:
    """The JSON form of a view: its C-arm when it has one (plus the matrix), else the matrix."""
    spec: dict[str, Any] = {"image_shape": list(view.image_shape)}
    if view.carm is not None:
        carm = view.carm
        spec["carm"] = {
            "lao_rao_deg": carm.lao_rao_deg,
            "cranio_caudal_deg": carm.cranio_caudal_deg,
            "source_isocenter_mm": carm.source_isocenter_mm,
            "source_detector_mm": carm.source_detector_mm,
            "pixel_spacing_mm": list(carm.pixel_spacing_mm),
        }
        if carm.isocenter_mm is not None:
            spec["carm"]["isocenter_mm"] = list(carm.isocenter_mm)
            spec["projection_matrix"] = view.matrix.tolist()
    else:
        spec["projection_matrix"] = view.matrix.tolist()
    return spec


def write_geometry(path: str | Path, views: dict[str, ProjectionView]) -> None:
    """Write views to ``geometry.json`` atomically."""
    document = {"views": {name: view_to_dict(view) for name, view in views.items()}}
    write_json(path, document)
