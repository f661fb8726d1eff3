"""biplanar: patient-specific 3D bone models from two calibrated radiographs.

The Python API (:mod:`biplanar.api`, ``docs/api.md``) is available from the package itself, one
function per ``biplanar`` command::

    import biplanar

    biplanar.register("geometry.json", "AP.npy", "LAT.npy", "results/case")

The functions are loaded on first use (PEP 562), so ``import biplanar`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the API's names and types for type checkers; at run time __getattr__ loads them
    from biplanar.api import (
        demo_summary_tables,
        drr,
        estimate_pose,
        evaluate,
        evaluate_pose,
        geometry_from_dicom,
        preprocess,
        register,
        run_demo,
        run_experiments,
        segment,
        simulate,
        train,
        train_baseline,
        train_pose,
        write_atlas,
        write_geometry,
    )

__version__ = "0.1.0"

# The API's functions, the one list of them (biplanar.api takes its __all__ from here).
__all__ = [
    "demo_summary_tables",
    "drr",
    "estimate_pose",
    "evaluate",
    "evaluate_pose",
    "geometry_from_dicom",
    "preprocess",
    "register",
    "run_demo",
    "run_experiments",
    "segment",
    "simulate",
    "simulate_from_ct",
    "train",
    "train_baseline",
    "train_pose",
    "write_atlas",
    "write_geometry",
]


def __getattr__(name: str) -> Any:
    """The API's functions (:mod:`biplanar.api`), imported when first asked for."""
    if name in __all__:
        api = importlib.import_module("biplanar.api")  # lazy: `import biplanar` stays light (no torch)
        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
