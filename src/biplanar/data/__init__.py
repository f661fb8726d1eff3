"""Data: the synthetic femur phantom population and its grids.

The names below are loaded on first use (PEP 562): importing a submodule (``biplanar.data.atlas``,
which ``register`` needs) does not import the phantom generator (``biplanar.data.phantom`` and
SciPy's special functions, 0.2-0.3 s).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names and types for type checkers; at run time __getattr__ loads them
    from biplanar.data.femur_shape import FemurParameters, FemurShape
    from biplanar.data.grid_presets import GRID_PRESETS, grid_preset
    from biplanar.data.pelvis_shape import PelvisParameters
    from biplanar.data.phantom import (
        HEAD_HEIGHT_MM,
        FemurLandmarks,
        Pose,
        Subject,
        SubjectSpec,
        TissueParameters,
        make_atlas,
        make_subject,
        render_subject,
    )

# Name -> the submodule defining it.
_DEFINED_IN = {
    "FemurParameters": "femur_shape",
    "FemurShape": "femur_shape",
    "GRID_PRESETS": "grid_presets",
    "grid_preset": "grid_presets",
    "PelvisParameters": "pelvis_shape",
    **dict.fromkeys(
        (
            "HEAD_HEIGHT_MM",
            "FemurLandmarks",
            "Pose",
            "Subject",
            "SubjectSpec",
            "TissueParameters",
            "make_atlas",
            "make_subject",
            "render_subject",
        ),
        "phantom",
    ),
}

__all__ = [
    "GRID_PRESETS",
    "HEAD_HEIGHT_MM",
    "FemurLandmarks",
    "FemurParameters",
    "FemurShape",
    "PelvisParameters",
    "Pose",
    "Subject",
    "SubjectSpec",
    "TissueParameters",
    "grid_preset",
    "make_atlas",
    "make_subject",
    "render_subject",
]


def __getattr__(name: str) -> Any:
    """The names of :data:`__all__`, imported from their submodule when first asked for."""
    if name in _DEFINED_IN:
        module = importlib.import_module(f"biplanar.data.{_DEFINED_IN[name]}")  # lazy: start-up time of register
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
