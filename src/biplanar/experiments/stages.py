"""The names of the experiment stages and of the files a stage writes, and the record of a stage run
(shared by the runner and the report)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STAGE_FILE = "stage.json"
EXPERIMENT_FILE = "experiment.json"
CASES_FILE = "cases.csv"
TEST_SPLIT = "test"
DATA_STAGE, OPTIMISATION_STAGE = "data", "eval_optimisation"
FIG3_STAGE, FIG4_STAGE = "fig3_angle_error", "fig4_geometry_grid"
POSE_STAGE, POSE_SOPI_STAGE = "pose_accuracy", "pose_sopi"


@dataclass
class StageRecord:
    """One stage of a run: its name, its ``stage.json`` ``info``, its wall time (s), whether this run did it."""

    name: str
    info: dict[str, Any]
    seconds: float
    ran: bool
