"""``sopi+opt``'s refinement from 8 turns: turns one after another against turns in lockstep, CMA-ES at 6 or 12 mm.

Usage::

    python benchmarks/bench_pose_refinement.py [--datasets lumbar femur] [--turns 8] [--repeats 5] [--threads 2]

For each CT of ``--datasets`` (the pose study's, :data:`biplanar.evaluation.pose_accuracy.DATASETS`,
with its AP and LAT views and noise-free DRRs at a known pose), a start 1-2 deg and 2 mm off the
true pose is refined from ``--turns`` turns about the CT's long axis
(:func:`biplanar.pose.baselines.refine_turned`) three ways, round-robin, medians of ``--repeats``
after a warm-up:

- ``each turn alone, CMA-ES 6 mm``: one :func:`~biplanar.pose.baselines.refine_pose` per turn with
  CMA-ES and L-BFGS at 6 mm (the code before 2026-12-06, night);
- ``lockstep, CMA-ES 6 mm``: the turns' CMA-ES generations rendered together, still at 6 mm
  (:data:`~biplanar.pose.baselines.REFINE_CONFIG`);
- ``lockstep, CMA-ES 12 mm``: CMA-ES at 12 mm, L-BFGS at 6 mm (what
  :func:`~biplanar.pose.baselines.refine_config_for` picks for a CT of at least 16 voxels of 12 mm
  along every axis, e.g. the lumbar CT; the femur phantoms keep 6 mm).

Reports each variant's time and the rotation (deg) and translation (mm, of the CT centre) of its
pose from the truth. Prints a markdown table for ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
from dataclasses import replace

import torch
from harness import round_robin_medians

from biplanar.evaluation.pose_accuracy import DATASETS, load_ct, views_for
from biplanar.geometry.se3 import pose_errors
from biplanar.geometry.transforms import rigid_matrix
from biplanar.pose.baselines import COARSE_SEARCH_MM, REFINE_CONFIG, refine_pose, refine_turned
from biplanar.pose.estimate import render_drrs

CMA_AT_6_MM = REFINE_CONFIG
CMA_AT_12_MM = replace(REFINE_CONFIG, levels_mm=(COARSE_SEARCH_MM, *REFINE_CONFIG.levels_mm), cma_levels=1)


def turns_one_after_another(volume, grid, radiographs, views, start, turns: int) -> torch.Tensor:
    """The best turn's ``(4, 4)`` pose, each turn refined by its own :func:`refine_pose` at 6 mm."""
    centre = torch.as_tensor(grid.centre_world, dtype=torch.float64)
    estimates = []
    for index in range(turns):
        turn = rigid_matrix(torch.tensor([0.0, 0.0, 2 * math.pi * index / turns, 0, 0, 0], dtype=torch.float64), centre)
        estimates.append(refine_pose(volume, grid, radiographs, views, start @ turn, CMA_AT_6_MM))
    return max(estimates, key=lambda estimate: estimate.similarity).matrix


def compare(name: str, turns: int, repeats: int) -> None:
    """Print the table's rows of the pose study's CT ``name`` (module doc)."""
    dataset = DATASETS[name]
    volume, grid = load_ct(dataset, 0)
    views = views_for(dataset, grid)
    centre = torch.as_tensor(grid.centre_world, dtype=torch.float64)
    truth = rigid_matrix(torch.tensor([0.05, -0.03, 0.08, 4.0, -6.0, 3.0], dtype=torch.float64), centre)
    radiographs = render_drrs(volume, grid, views, truth)
    start = truth @ rigid_matrix(torch.tensor([0.02, 0.01, 0.03, 2.0, -1.0, 1.5], dtype=torch.float64), centre)
    inputs = (volume, grid, radiographs, views, start)
    variants = {
        "each turn alone, CMA-ES 6 mm": lambda: turns_one_after_another(*inputs, turns),
        "lockstep, CMA-ES 6 mm": lambda: refine_turned(*inputs, turns, CMA_AT_6_MM).best.matrix,
        "lockstep, CMA-ES 12 mm, L-BFGS 6 mm": lambda: refine_turned(*inputs, turns, CMA_AT_12_MM).best.matrix,
    }
    found = {label: variant() for label, variant in variants.items()}  # warm-up
    medians = round_robin_medians(variants, repeats, warmup=0)
    first = next(iter(medians.values()))
    for label, seconds in medians.items():
        rotation_deg, translation_mm = pose_errors(found[label], truth, centre)
        print(
            f"| {name} | {label} | {seconds:.2f} | {seconds / first:.2f} | "
            f"{float(rotation_deg):.3f} | {float(translation_mm):.3f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["lumbar", "femur"], choices=sorted(DATASETS))
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"Command: `python benchmarks/bench_pose_refinement.py --datasets {' '.join(args.datasets)} "
        f"--turns {args.turns} --repeats {args.repeats} --threads {args.threads}`, {datetime.date.today()}; "
        f"torch {torch.__version__}, {args.threads} thread(s), {platform.machine()}.\n"
    )
    print("| CT | variant | time (s) | ratio to the first | rotation from truth (deg) | translation (mm) |")
    print("|---|---|---:|---:|---:|---:|")
    for name in args.datasets:
        compare(name, args.turns, args.repeats)


if __name__ == "__main__":
    main()
