"""Dice of the femur segmentation network on the radiographs of a simulated dataset (issue 15).

Segments both views of every subject of ``--split`` (default: ``all``) with ``--model`` (default:
the bundled ``segmentation_lite``), prints mean / std / min / median Dice over all radiographs and
over the first ``--first`` subjects' both views, and writes the per-radiograph table to ``--csv``::

    python examples/evaluate_segmentation.py --data data/seg_heldout --first 20 --csv results/seg_heldout.csv

``--transform`` changes the line-integral radiographs first (a robustness check; :data:`TRANSFORMS`);
``--working-shape 112 80`` runs the bundled network on radiographs of another preset at its own shape.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import scipy.ndimage
import torch

from biplanar.evaluation.segmentation import dice_summary, evaluate_segmentation, write_segmentation_scores


def _percentile_range(images: np.ndarray) -> np.ndarray:
    """``(N, 1, 1)`` 99th minus 1st percentile of each image."""
    low, high = np.percentile(images, [1.0, 99.0], axis=(1, 2))
    return (high - low)[:, None, None]


# Name -> what it does to the (N, rows, cols) line integrals (deterministic).
TRANSFORMS = {
    "none": lambda x: x,
    "scaled": lambda x: 3.0 * x + 1.0,  # a positive affine map: the normalisation removes it
    "inverted": lambda x: -x,  # polarity
    "transmission": lambda x: np.exp(-x),  # transmitted intensity I / I0: inverted and non-linear
    "gamma2": lambda x: x**2,
    "blur1.5": lambda x: scipy.ndimage.gaussian_filter(x, sigma=(0, 1.5, 1.5)),
    "noise5": lambda x: x + 0.05 * _percentile_range(x) * np.random.default_rng(0).standard_normal(x.shape),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a biplanar simulate folder")
    parser.add_argument("--model", type=Path, help="a segmentation checkpoint (default: the bundled one)")
    parser.add_argument("--split", default="all", help="train, val, test or all")
    parser.add_argument("--first", type=int, help="also summarise the first N subjects (2 N radiographs)")
    parser.add_argument("--csv", type=Path, help="write the per-radiograph Dice here")
    parser.add_argument("--transform", choices=sorted(TRANSFORMS), default="none", help="change the radiographs first")
    parser.add_argument(
        "--working-shape", type=int, nargs=2, metavar=("ROWS", "COLS"), help="run the network at this shape"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    shape = None if args.working_shape is None else (args.working_shape[0], args.working_shape[1])
    rows = evaluate_segmentation(
        args.model, args.data, args.split, transform=TRANSFORMS[args.transform], working_shape=shape
    )
    subjects = sorted({row["subject_id"] for row in rows})
    groups = {f"all {len(subjects)} subjects": rows}
    if args.first is not None:
        first = set(subjects[: args.first])
        groups[f"first {len(first)} subjects"] = [row for row in rows if row["subject_id"] in first]
    print("| radiographs | of | mean Dice | std | min | median |")
    print("|---:|---|---:|---:|---:|---:|")
    for name, group in groups.items():
        summary = dice_summary(group)
        print(
            f"| {summary['n']:.0f} | {name} | {summary['mean']:.4f} | {summary['std']:.4f} | "
            f"{summary['min']:.4f} | {summary['median']:.4f} |"
        )
    if args.csv is not None:
        write_segmentation_scores(args.csv, rows)
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
