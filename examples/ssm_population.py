"""The shape-model femurs' hip measurements next to the phantom's and published morphometry.

Draws ``--n`` femurs from the bundled real-subject shape model exactly as ``simulate --shapes ssm``
does (mode weights ``N(0, 1)`` truncated at 3 sd, :meth:`SsmFemurParameters.sample`), measures each
(head radius, neck-shaft angle, femoral offset, anteversion against the posterior condylar axis;
definitions in :mod:`biplanar.data.femur_ssm`), does the same for the model's 26 training femurs
and for ``--n`` phantom femurs (``FemurParameters.sample``), and prints a Markdown table of mean,
standard deviation and range. Usage::

    python examples/ssm_population.py --n 200 --seed 0
"""

from __future__ import annotations

import argparse

import numpy as np

from biplanar.data.femur_shape import FemurParameters
from biplanar.data.femur_ssm import SsmFemurParameters, femur_shape_model, training_mode_weights

MEASUREMENTS = ("head_radius_mm", "neck_shaft_angle_deg", "femoral_offset_mm", "anteversion_deg")
# The model's 26 training femurs' weights, from the npz the model ships with.


def summary(rows: list[dict[str, float]]) -> list[str]:
    """``mean +- sd (min to max)`` of each measurement over ``rows``."""
    cells = []
    for key in MEASUREMENTS:
        values = np.array([row[key] for row in rows])
        cells.append(f"{values.mean():.1f} +- {values.std(ddof=1):.1f} ({values.min():.1f} to {values.max():.1f})")
    return cells


def training_femurs() -> list[dict[str, float]]:
    """The measurements of the shape model's 26 training femurs (their own mode weights)."""
    return [
        SsmFemurParameters(tuple(float(w) for w in weights)).solid().measurements()
        for weights in training_mode_weights()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    drawn = [SsmFemurParameters.sample(rng).solid().measurements() for _ in range(args.n)]
    phantom = []
    for _ in range(args.n):
        params = FemurParameters.sample(rng)
        phantom.append({key: float(getattr(params, key)) for key in MEASUREMENTS})
    print(f"shape model: {len(femur_shape_model().sd)} modes; {args.n} draws, seed {args.seed}\n")
    print("| population | head radius (mm) | neck-shaft angle (deg) | femoral offset (mm) | anteversion (deg) |")
    print("|---|---|---|---|---|")
    for name, rows in (
        ("shape model, its 26 training femurs", training_femurs()),
        (f"shape model, {args.n} draws (`simulate --shapes ssm`)", drawn),
        (f"parametric phantom, {args.n} draws (`--shapes phantom`)", phantom),
    ):
        print(f"| {name} | " + " | ".join(summary(rows)) + " |")


if __name__ == "__main__":
    main()
