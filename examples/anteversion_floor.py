"""How well a proximal femur tells its anteversion: the error left with the femur known exactly.

A shape-model femur's anteversion is its neck's angle against its own posterior condylar axis
(:mod:`biplanar.data.femur_ssm`), which is how issue 16 scores it. The registration grid and the
radiographs show only the proximal femur, and the simulator turns the leg about its shaft
(``Pose.sample``: external rotation uniform in +-10 deg, as patients lie). This script takes the
femurs and poses exactly as ``biplanar simulate --shapes ssm`` draws them and measures, with the
proximal femur known exactly (a perfect registration):

- ``population mean``: no measurement, every femur given the sample's mean anteversion;
- ``neck, leg neutral``: the posed neck's version against the unposed frame's condylar axis, what a
  measurement on the proximal femur alone reads when it takes the leg to lie in neutral rotation;
- ``neck and proximal shaft, leg neutral``: the same, with the shaft axis that ``register`` measures
  (the diaphysis 35-85 mm below the lesser trochanter, :mod:`biplanar.evaluation.hip`) in place of
  the shape model's whole-diaphysis axis: the floor of what ``register`` reports (the proximal
  shaft leans with the femur's anterior bow);
- ``neck, leg neutral, best linear``: the truth regressed on the neutral-leg reading (leave-one-out
  least squares), the best any linear use of it can do.

Usage::

    python examples/anteversion_floor.py --n 200 --seed 5151

prints a Markdown table: mean absolute error, mean and sd of the signed error, and 95th percentile
of each (deg).
"""

from __future__ import annotations

import argparse

import numpy as np

from biplanar.data.femur_shape import canonical_rotation
from biplanar.data.phantom import SubjectSpec
from biplanar.data.simulate import subject_seed
from biplanar.evaluation.hip import carry_landmarks, version_deg
from biplanar.geometry.volume_grid import VolumeGrid


def proximal_shaft_axis(solid) -> np.ndarray:
    """``(3,)`` femur-frame shaft axis of a shape-model ``solid`` as ``register`` measures it on a
    surface (:func:`~biplanar.evaluation.hip.carry_landmarks` with no displacement)."""
    local = solid.landmarks()
    landmarks = {
        "head_centre_mm": local.head_centre,
        "head_radius_mm": solid.head_radius_mm,
        "neck_axis": local.neck_axis,
        "shaft_axis_point_mm": local.shaft_axis_point,
        "shaft_axis": local.shaft_axis,
        "greater_trochanter_tip_mm": local.greater_trochanter_tip,
        "lesser_trochanter_tip_mm": local.lesser_trochanter_tip,
        "condylar_axis": np.array([1.0, 0.0, 0.0]),
    }
    still = np.zeros((3, 2, 2, 2))  # no displacement: the landmarks measured where they are
    carried = carry_landmarks(landmarks, still, VolumeGrid((2, 2, 2), np.eye(4)), solid.vertices_local, solid.faces)
    return np.asarray(carried["shaft_axis"])


def true_and_neutral_versions(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(n,)`` true anteversions and ``(n,)`` neutral-leg readings (deg) of ``n`` simulated femurs,
    against the whole-diaphysis axis and against the proximal shaft axis."""
    truth, neutral, proximal = np.empty(n), np.empty(n), np.empty(n)
    neutral_lateral = canonical_rotation()[:, 0]
    for index in range(n):
        spec = SubjectSpec.sample(subject_seed(seed, index), "ssm")
        solid = spec.femur.solid()
        to_world = spec.femur_rotation()
        neck = to_world @ solid.neck_axis
        truth[index] = solid.measurements()["anteversion_deg"]
        neutral[index] = version_deg(neck, to_world[:, 2], neutral_lateral)
        proximal[index] = version_deg(neck, to_world @ proximal_shaft_axis(solid), neutral_lateral)
    return truth, neutral, proximal


def leave_one_out_linear(reading: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``(n,)`` predictions of ``truth`` from ``reading``: each by a line fitted to the other ``n - 1``."""
    predictions = np.empty_like(truth)
    for index in range(len(truth)):
        others = np.arange(len(truth)) != index
        slope, intercept = np.polyfit(reading[others], truth[others], 1)
        predictions[index] = slope * reading[index] + intercept
    return predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="femurs")
    parser.add_argument("--seed", type=int, default=5151, help="dataset seed (subject i: subject_seed(seed, i))")
    arguments = parser.parse_args()
    truth, neutral, proximal = true_and_neutral_versions(arguments.seed, arguments.n)
    estimates = {
        "population mean": np.full_like(truth, truth.mean()),
        "neck, leg neutral": neutral,
        "neck and proximal shaft, leg neutral": proximal,
        "neck, leg neutral, best linear": leave_one_out_linear(neutral, truth),
    }
    population = f"anteversion {truth.mean():.1f} +- {truth.std():.1f} deg"
    print(f"{arguments.n} shape-model femurs (seed {arguments.seed}), {population}")
    print("| estimate | mean abs. error (deg) | mean (deg) | sd (deg) | 95th percentile abs. (deg) |")
    print("|---|---:|---:|---:|---:|")
    for name, estimate in estimates.items():
        error = estimate - truth
        row = (np.abs(error).mean(), error.mean(), error.std(), np.percentile(np.abs(error), 95))
        print(f"| {name} | " + " | ".join(f"{value:.1f}" for value in row) + " |")


if __name__ == "__main__":
    main()
