"""Where a registration's neck-shaft angle error comes from: the carried neck, the carried shaft, and
how far the atlas pulls the angle towards its own.

For every subject of a split of simulated datasets, the model registers the atlas (affine + local,
as ``biplanar evaluate`` runs it) and the atlas's landmarks are carried as ``biplanar register``
reports them (:func:`biplanar.evaluation.hip.hip_report`). The error of the neck-shaft angle
(measured - true) is split into

- ``neck``: the carried neck axis against the femur's true shaft axis;
- ``shaft``: the femur's true neck axis against the carried shaft axis;

and the measured angles are regressed on the true ones: slope 1 follows the femur, slope 0 reads the
atlas's angle whatever the femur. ``label neck`` is the floor of the neck part: the same neck
measurement (:func:`~biplanar.data.femur_ssm.neck_axis_from_surface`, about the true head centre)
on the surface of the femur's own label map on the atlas grid (what the registration is trained
to match), against the true shaft axis. Usage::

    python examples/nsa_error_sources.py --model src/biplanar/resources/models/lite/model.pt \\
        --data data/cpu_ssm_line --data data/cpu_ssm_clinical --split val

prints a Markdown table (deg; mean +- sd over the subjects).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from biplanar.data.atlas import FEMUR_LABEL, SURFACE_SMOOTHING_VOX, load_atlas
from biplanar.data.datasets import SimulatedDataset
from biplanar.data.femur_ssm import SsmFemurParameters, neck_axis_from_surface, triangle_centroids_areas
from biplanar.evaluation.evaluate import network_inputs, run_stages
from biplanar.evaluation.hip import hip_measurements, hip_report
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.io.json_files import read_json
from biplanar.io.mesh import label_surface
from biplanar.training.checkpoints import load_model


def angle_between_deg(first: np.ndarray, second: np.ndarray) -> float:
    """Angle (deg) between two ``(3,)`` directions."""
    cosine = first @ second / (np.linalg.norm(first) * np.linalg.norm(second))
    return math.degrees(math.acos(float(np.clip(cosine, -1.0, 1.0))))


def label_neck_axis(labels: np.ndarray, grid: VolumeGrid, subject: dict) -> np.ndarray:
    """Unit neck axis measured on the surface of a subject's ``(I, J, K)`` label map on ``grid``
    (smoothed as the atlas's surface is), about its true head centre and radius."""
    landmarks = subject["landmarks"]
    surface = label_surface((labels > 0).astype(np.int16), grid, FEMUR_LABEL, SURFACE_SMOOTHING_VOX)
    centroids, areas = triangle_centroids_areas(np.asarray(surface.vertices), np.asarray(surface.faces))
    return neck_axis_from_surface(
        centroids, np.asarray(landmarks["head_centre_mm"]), float(landmarks["head_radius_mm"]), areas
    )


def true_neck_shaft_angle_deg(femur: dict) -> float:
    """A subject's true neck-shaft angle (deg): a shape-model femur's measured again from its mode
    weights by the current definitions (a dataset stores the ones of the day it was made), a
    phantom's from its parameters."""
    if "mode_weights" not in femur:
        return float(femur["neck_shaft_angle_deg"])
    weights = tuple(float(weight) for weight in femur["mode_weights"])
    return SsmFemurParameters(weights).solid().measurements()["neck_shaft_angle_deg"]


def subject_errors(carried: dict, subject: dict, label_neck: np.ndarray) -> tuple[float, ...]:
    """``(true NSA, measured NSA, neck part, shaft part, label neck)`` (deg) of one subject: the
    carried landmarks and the ``(3,)`` label-surface neck axis against ``subject.json``'s
    landmarks and femur parameters. The shaft part pairs the stored true neck axis with the stored
    angle (both of the dataset's day); the rest use :func:`true_neck_shaft_angle_deg`."""
    true_neck, true_shaft = (np.asarray(subject["landmarks"][key]) for key in ("neck_axis", "shaft_axis"))
    stored = float(subject["parameters"]["femur"]["neck_shaft_angle_deg"])
    truth = true_neck_shaft_angle_deg(subject["parameters"]["femur"])
    measured = float(hip_measurements(carried)["neck_shaft_angle_deg"])

    def neck_error(neck: np.ndarray) -> float:
        return 180.0 - angle_between_deg(neck, true_shaft) - truth

    shaft_part = 180.0 - angle_between_deg(true_neck, np.asarray(carried["shaft_axis"])) - stored
    return truth, measured, neck_error(np.asarray(carried["neck_axis"])), shaft_part, neck_error(label_neck)


def registered_subjects(network, config, folders: list[str], split: str) -> Iterator[tuple[dict, dict, Tensor]]:
    """``(sample, subject.json, displacement)`` of every subject of ``split`` in ``folders``, registered
    by ``network`` (affine + local, as ``biplanar evaluate`` runs it; the displacement ``(1, 3, I, J, K)``
    mm on the atlas grid)."""
    for folder in folders:
        dataset = SimulatedDataset(Path(folder), split, masked=True)
        for index in range(len(dataset)):
            sample = dataset[index]
            radiographs, views = network_inputs(sample, torch.device("cpu"))
            displacement = run_stages(network, config, radiographs, views)["affine+local"].displacement
            yield sample, read_json(dataset.root / "subjects" / sample["subject_id"] / "subject.json"), displacement
        print(f"{folder}: {len(dataset)} subjects", flush=True)


def collect(model: str, folders: list[str], split: str) -> tuple[np.ndarray, float]:
    """``(N, 5)`` :func:`subject_errors` rows of every subject of ``split`` in ``folders``, and the
    atlas's own neck-shaft angle (deg; its landmarks carried by the identity)."""
    network, config = load_model(model, torch.device("cpu"))
    atlas = load_atlas(config.geometry.grid_preset)
    identity = hip_report(atlas, torch.zeros(1, 3, *atlas.grid.shape))
    rows = []
    for sample, subject, displacement in registered_subjects(network, config, folders, split):
        label_neck = label_neck_axis(sample["labels"].numpy().squeeze(), atlas.grid, subject)
        rows.append(subject_errors(hip_report(atlas, displacement)["landmarks"], subject, label_neck))
    return np.array(rows), float(identity["neck_shaft_angle_deg"])


def table(rows: np.ndarray, atlas_nsa_deg: float) -> str:
    """The Markdown summary of :func:`collect`'s rows."""
    truth, measured, neck_part, shaft_part, label_neck = rows.T
    error = measured - truth
    slope = float(np.polyfit(truth, measured, 1)[0])

    def cell(values: np.ndarray) -> str:
        return f"{values.mean():+.2f} ± {values.std(ddof=1):.2f}"

    return "\n".join(
        [
            f"{len(rows)} femurs; true NSA {truth.mean():.1f} ± {truth.std(ddof=1):.1f} deg, measured "
            f"{measured.mean():.1f} ± {measured.std(ddof=1):.1f}, the atlas's {atlas_nsa_deg:.1f}",
            "",
            "| NSA error | abs. | neck part | shaft part | slope measured/true | correlation | label neck |",
            "|---|---|---|---|---|---|---|",
            f"| {cell(error)} | {np.abs(error).mean():.2f} | {cell(neck_part)} | {cell(shaft_part)} | "
            f"{slope:.2f} | {np.corrcoef(truth, measured)[0, 1]:.2f} | {cell(label_neck)} |",
        ]
    )


def split_study_arguments(doc: str) -> argparse.Namespace:
    """The command line of a study over a split of simulated datasets (this script's and its
    siblings'): ``--model``, ``--data`` (repeatable) and ``--split``; ``doc``: the script's docstring."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--model", required=True, help="registration checkpoint")
    parser.add_argument("--data", action="append", required=True, help="simulated dataset folder (repeatable)")
    parser.add_argument("--split", default="val", help="train, val, test or all (default val)")
    return parser.parse_args()


def main() -> None:
    arguments = split_study_arguments(__doc__)
    print(table(*collect(arguments.model, arguments.data, arguments.split)))


if __name__ == "__main__":
    main()
