"""The names of the Python API's functions, one list for :mod:`biplanar.api` and the package.

Both export exactly these (``__all__``); the list lives apart from :mod:`biplanar.api` so that
``import biplanar`` can name them without importing the API. It imports nothing.
"""

API_NAMES = (
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
    "train",
    "train_baseline",
    "train_pose",
    "write_atlas",
    "write_geometry",
)
