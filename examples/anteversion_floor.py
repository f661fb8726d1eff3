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
- ``neck, leg neutral, best linear``: the truth regressed on that reading (leave-one-out least
  squares), the best any linear use of it can do.

Usage::

    python examples/anteversion_floor.py --n 200 --seed 5151

prints a Markdown table: mean absolute error, sd and 95th percentile of each (deg).
"""

from __future__ import annotations

import argparse

import numpy as np

from biplanar.data.femur_shape import canonical_rotation
from biplanar.data.phantom import SubjectSpec
from biplanar.data.simulate import subject_seed
from biplanar.evaluation.hip import version_deg


def true_and_neutral_versions(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(n,)`` true anteversions and ``(n,)`` neutral-leg readings (deg) of ``n`` simulated femurs."""
    truth, neutral = np.empty(n), np.empty(n)
    neutral_lateral = canonical_rotation()[:, 0]
    for index in range(n):
        spec = SubjectSpec.sample(subject_seed(seed, index), "ssm")
        solid = spec.femur.solid()
        to_world = spec.femur_rotation()
        truth[index] = solid.measurements()["anteversion_deg"]
        neutral[index] = version_deg(to_world @ solid.neck_axis, to_world[:, 2], neutral_lateral)
    return truth, neutral


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
    truth, neutral = true_and_neutral_versions(arguments.seed, arguments.n)
    estimates = {
        "population mean": np.full_like(truth, truth.mean()),
        "neck, leg neutral": neutral,
        "neck, leg neutral, best linear": leave_one_out_linear(neutral, truth),
    }
    population = f"anteversion {truth.mean():.1f} +- {truth.std():.1f} deg"
    print(f"{arguments.n} shape-model femurs (seed {arguments.seed}), {population}")
    print("| estimate | mean abs. error (deg) | sd (deg) | 95th percentile abs. (deg) |\n|---|---:|---:|---:|")
    for name, estimate in estimates.items():
        error = estimate - truth
        row = (np.abs(error).mean(), error.std(), np.percentile(np.abs(error), 95))
        print(f"| {name} | " + " | ".join(f"{value:.1f}" for value in row) + " |")


if __name__ == "__main__":
    main()
