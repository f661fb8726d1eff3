"""Where a registration's anteversion error comes from: the carried neck, and the reference it is read
against (the condylar axis carried through the field, or the patient's neutral leg).

Anteversion is the neck's angle about the shaft against the posterior condylar axis
(:mod:`biplanar.evaluation.hip`). The grid and the radiographs show no condyles, and the diaphysis is
near a cylinder, so the field's turn about the shaft below the neck is whatever makes the neck fit.
For every subject of a split of simulated datasets, the model registers the atlas (affine + local, as
``biplanar evaluate`` runs it) and the anteversion error (measured - true, deg) is read five ways:

- ``neutral leg (reported)``: the carried neck and shaft against the atlas's condylar axis, the
  patient's medial-lateral axis with the leg in neutral rotation (what ``register`` reports);
- ``carried condylar axis``: the same neck and shaft against the atlas's condylar axis carried
  through the field from the shaft 60 mm below the lesser trochanter, 10 mm long (what ``register``
  reported before 2026-12-06);
- ``neck only``: the carried neck against the femur's true shaft and condylar axes: the part the
  registration is responsible for;
- ``true neck, neutral leg``: the femur's true neck and shaft against the neutral leg: the floor of
  the reported reading, set by the leg's unknown turn about its shaft (``Pose``: +-10 deg);
- ``population mean``: no measurement, each femur given the subjects' mean anteversion.

Usage::

    python examples/anteversion_reference.py --model src/biplanar/resources/models/lite/model.pt \\
        --data data/cpu_ssm_line4 --data data/cpu_ssm_clinical4 --split val

prints a Markdown table (deg): mean +- sd of the signed error, mean absolute error, and the slope and
correlation of the reading against the truth.
"""

from __future__ import annotations

import numpy as np
import torch
from nsa_error_sources import registered_subjects, split_study_arguments

from biplanar.data.atlas import load_atlas
from biplanar.evaluation.hip import hip_report, invert_points, version_deg, with_condylar_axis
from biplanar.training.checkpoints import load_model

# The carried reference before 2026-12-06: from the shaft this far below the lesser trochanter, this long.
CONDYLAR_LEVEL_BELOW_LT_MM, CONDYLAR_ARM_MM = 60.0, 10.0
READINGS = ("neutral leg (reported)", "carried condylar axis", "neck only", "true neck, neutral leg", "population mean")


def carried_condylar_axis(atlas_landmarks: dict, displacement, grid) -> np.ndarray:
    """``(3,)`` the atlas's condylar axis carried through the ``(1, 3, I, J, K)`` pull displacement
    (mm) as two points: a point of its shaft axis below the lesser trochanter and one 10 mm lateral."""
    shaft, point = np.asarray(atlas_landmarks["shaft_axis"]), np.asarray(atlas_landmarks["shaft_axis_point_mm"])
    lt_depth = (point - np.asarray(atlas_landmarks["lesser_trochanter_tip_mm"])) @ shaft
    base = point - (lt_depth + CONDYLAR_LEVEL_BELOW_LT_MM) * shaft
    arm = base + CONDYLAR_ARM_MM * np.asarray(atlas_landmarks["condylar_axis"])
    carried, _ = invert_points(displacement.detach().to(torch.float64), grid, np.stack([base, arm]))
    return carried[1] - carried[0]


def subject_readings(carried: dict, carried_reference: np.ndarray, subject: dict) -> list[float]:
    """The true anteversion and the first four :data:`READINGS` (deg) of one subject."""
    truth = with_condylar_axis(subject["landmarks"], subject["pose"])
    neutral = np.asarray(carried["condylar_axis"])  # the atlas's, not carried
    neck, shaft = np.asarray(carried["neck_axis"]), np.asarray(carried["shaft_axis"])
    true_neck, true_shaft = np.asarray(truth["neck_axis"]), np.asarray(truth["shaft_axis"])
    return [
        float(subject["parameters"]["femur"]["anteversion_deg"]),
        version_deg(neck, shaft, neutral),
        version_deg(neck, shaft, carried_reference),
        version_deg(neck, true_shaft, np.asarray(truth["condylar_axis"])),
        version_deg(true_neck, true_shaft, neutral),
    ]


def collect(model: str, folders: list[str], split: str) -> np.ndarray:
    """``(N, 6)``: each subject's true anteversion and its five :data:`READINGS` (deg)."""
    network, config = load_model(model, torch.device("cpu"))
    atlas = load_atlas(config.geometry.grid_preset)
    landmarks = with_condylar_axis(atlas.landmarks)
    rows = []
    for _, subject, displacement in registered_subjects(network, config, folders, split):
        reference = carried_condylar_axis(landmarks, displacement, atlas.grid)
        rows.append(subject_readings(hip_report(atlas, displacement)["landmarks"], reference, subject))
    rows_array = np.array(rows)
    return np.column_stack([rows_array, np.full(len(rows_array), rows_array[:, 0].mean())])


def table(rows: np.ndarray) -> str:
    """The Markdown summary of :func:`collect`'s rows."""
    truth = rows[:, 0]
    lines = [
        f"{len(rows)} femurs; true anteversion {truth.mean():.1f} ± {truth.std(ddof=1):.1f} deg",
        "",
        "| anteversion read as | error (deg) | abs. error (deg) | slope reading/true | correlation |",
        "|---|---|---|---|---|",
    ]
    for name, reading in zip(READINGS, rows[:, 1:].T):
        error = reading - truth
        spread = np.std(reading) > 0
        slope = f"{np.polyfit(truth, reading, 1)[0]:.2f}" if spread else "0"
        correlation = f"{np.corrcoef(truth, reading)[0, 1]:.2f}" if spread else "-"
        lines.append(
            f"| {name} | {error.mean():+.2f} ± {error.std(ddof=1):.2f} | {np.abs(error).mean():.2f} | "
            f"{slope} | {correlation} |"
        )
    return "\n".join(lines)


def main() -> None:
    arguments = split_study_arguments(__doc__)
    print(table(collect(arguments.model, arguments.data, arguments.split)))


if __name__ == "__main__":
    main()
