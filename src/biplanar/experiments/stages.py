"""The names of the experiment stages and of the files a stage writes (shared by the runner and the report)."""

from __future__ import annotations

STAGE_FILE = "stage.json"
EXPERIMENT_FILE = "experiment.json"
CASES_FILE = "cases.csv"
TEST_SPLIT = "test"
DATA_STAGE, OPTIMISATION_STAGE = "data", "eval_optimisation"
FIG3_STAGE, FIG4_STAGE = "fig3_angle_error", "fig4_geometry_grid"
POSE_STAGE, POSE_SOPI_STAGE = "pose_accuracy", "pose_sopi"
