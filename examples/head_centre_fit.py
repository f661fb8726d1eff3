"""Which carried points of the atlas's head sphere give the registered femur's head centre.

``biplanar register`` fits the head centre to the atlas's head-sphere points carried through the
registration (:func:`biplanar.evaluation.hip.carry_landmarks`). For every subject of a split of
simulated datasets, the model registers the atlas (affine + local, as ``biplanar evaluate`` runs
it) and the head centre is fitted twice: to the whole carried sphere, and to its articular side
only (the points on the head's side of the neck, ``HEAD_SIDE_OF_NECK``, as the shape model fits
its heads; what ``register`` uses), each against the subject's true head centre. Usage::

    python examples/head_centre_fit.py --model src/biplanar/resources/models/lite/model.pt \\
        --data data/cpu_ssm_line4 --data data/cpu_ssm_clinical4 --split val

prints a Markdown table (mm; signed error per world axis and the mean distance).
"""

from __future__ import annotations

import numpy as np
import torch
from nsa_error_sources import registered_subjects, split_study_arguments

from biplanar.data.atlas import load_atlas
from biplanar.data.femur_ssm import HEAD_SIDE_OF_NECK
from biplanar.evaluation.hip import SPHERE_POINTS, fibonacci_sphere, invert_points, subject_hip_truth
from biplanar.geometry.fitting import fit_sphere
from biplanar.training.checkpoints import load_model


def head_sphere_points(landmarks: dict) -> tuple[np.ndarray, np.ndarray]:
    """The atlas's ``(N, 3)`` head-sphere points (world mm) and the ``(N,)`` mask of its articular side."""
    centre, radius = np.asarray(landmarks["head_centre_mm"]), float(landmarks["head_radius_mm"])
    offsets = radius * fibonacci_sphere(SPHERE_POINTS)
    return centre + offsets, offsets @ np.asarray(landmarks["neck_axis"]) > HEAD_SIDE_OF_NECK * radius


def collect(model: str, folders: list[str], split: str) -> dict[str, np.ndarray]:
    """Fit -> ``(N, 3)`` signed head-centre errors (fitted - true, world mm) of every subject."""
    network, config = load_model(model, torch.device("cpu"))
    atlas = load_atlas(config.geometry.grid_preset)
    sphere, articular = head_sphere_points(atlas.landmarks)
    errors: dict[str, list[np.ndarray]] = {"whole sphere": [], "articular side (register)": []}
    for _, subject, displacement in registered_subjects(network, config, folders, split):
        carried, _ = invert_points(displacement.detach().double(), atlas.grid, sphere)
        truth = np.asarray(subject_hip_truth(subject)["head_centre_mm"])
        for name, kept in zip(errors, (np.ones(len(sphere), bool), articular)):
            errors[name].append(fit_sphere(carried[kept])[0] - truth)
    return {name: np.array(rows) for name, rows in errors.items()}


def table(errors: dict[str, np.ndarray]) -> str:
    """Markdown: one row per fit."""
    lines = ["| head centre fitted to | error x (mm) | error y | error z | distance (mm) |", "|---|---|---|---|---|"]
    for name, rows in errors.items():
        cells = [f"{rows[:, axis].mean():+.2f} ± {rows[:, axis].std(ddof=1):.2f}" for axis in range(3)]
        distance = np.linalg.norm(rows, axis=1)
        lines.append(f"| {name} ({len(rows)} femurs) | " + " | ".join(cells) + f" | {distance.mean():.2f} |")
    return "\n".join(lines)


def main() -> None:
    arguments = split_study_arguments(__doc__)
    print(table(collect(arguments.model, arguments.data, arguments.split)))


if __name__ == "__main__":
    main()
