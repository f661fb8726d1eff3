"""The optimisers' candidates: one DRR call per view for a whole CMA-ES generation against one per candidate.

Usage::

    python benchmarks/bench_pose_candidates.py [--levels 6 3] [--candidates 9] [--repeats 30] [--threads 2]

On the real lumbar CT (``biplanar.data.real_ct``) with the pose study's AP and LAT views, at each
pyramid level of ``--levels`` (mm): the mean similarity (GC) of ``--candidates`` poses drawn around
a true pose, computed the way :meth:`biplanar.pose.baselines.PoseProblem.objective` does now (one
``ProST(view, grid)(volume, poses)`` call per view for all candidates: the slice walk walks the
rays of all poses at once) and the way it did before (one call per candidate). Round-robin, medians
of ``--repeats`` after a warm-up; the largest relative difference between the two DRR stacks.
Prints a markdown table for ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import platform
from collections.abc import Callable

import torch
from harness import round_robin_medians

from biplanar.evaluation.pose_accuracy import DATASETS, load_ct, views_for
from biplanar.geometry.transforms import rigid_matrix
from biplanar.pose.baselines import OptimisationConfig, PoseProblem
from biplanar.pose.estimate import render_drrs


def one_call_per_candidate(level, poses: torch.Tensor) -> dict[str, torch.Tensor]:
    """The DRRs ``(N, 1, h, w)`` per view, one projector call per pose (the code before)."""
    return {
        name: torch.cat([projector(level.volume, pose[None]) for pose in poses])
        for name, projector in level.projectors.items()
    }


def one_call_per_view(level, poses: torch.Tensor) -> dict[str, torch.Tensor]:
    """The DRRs ``(N, 1, h, w)`` per view, one projector call for all poses (the code now)."""
    return {name: projector(level.volume, poses) for name, projector in level.projectors.items()}


def similarity_of(variant: Callable, problem: PoseProblem, level, poses: torch.Tensor) -> torch.Tensor:
    """The mean similarity of ``poses`` rendered by ``variant`` (one timed step)."""
    return mean_similarity(problem, level, variant(level, poses))


def mean_similarity(problem: PoseProblem, level, drrs: dict[str, torch.Tensor]) -> torch.Tensor:
    values = [
        problem.similarity_fn(level.radiographs[name].expand_as(stack), stack, level.masks[name])
        for name, stack in drrs.items()
    ]
    return torch.stack(values).mean(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=float, nargs="+", default=[6.0, 3.0])
    parser.add_argument("--candidates", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = DATASETS["lumbar"]
    volume, grid = load_ct(dataset, 0)
    views = views_for(dataset, grid)
    centre = torch.as_tensor(grid.centre_world, dtype=torch.float64)
    truth = rigid_matrix(torch.tensor([0.05, -0.03, 0.08, 4.0, -6.0, 3.0], dtype=torch.float64), centre)
    radiographs = render_drrs(volume, grid, views, truth)
    generator = torch.Generator().manual_seed(0)
    steps = torch.tensor([0.035, 0.035, 0.035, 4.0, 4.0, 4.0], dtype=torch.float64)  # 2 deg, 4 mm
    draws = torch.randn(args.candidates, 6, generator=generator, dtype=torch.float64) * steps
    poses = (rigid_matrix(draws, centre) @ truth).float()
    print(
        f"Command: `python benchmarks/bench_pose_candidates.py --levels {' '.join(f'{v:g}' for v in args.levels)} "
        f"--candidates {args.candidates} --repeats {args.repeats} --threads {args.threads}`, "
        f"{datetime.date.today()}; torch {torch.__version__}, {args.threads} thread(s), {platform.machine()}.\n"
    )
    columns = ["level (mm)", "detector per view", "CT voxels", "one call per candidate (ms)"]
    columns += ["one call per view (ms)", "speed-up", "max relative difference"]
    print("| " + " | ".join(columns) + " |")
    print("|---:|---|---|---:|---:|---:|---:|")
    for size in args.levels:
        problem = PoseProblem(volume, grid, radiographs, views, None, OptimisationConfig(levels_mm=(size,)))
        level = problem.levels[0]
        variants = {"each": one_call_per_candidate, "all": one_call_per_view}
        with torch.no_grad():
            steps = {
                name: functools.partial(similarity_of, variant, problem, level, poses)
                for name, variant in variants.items()
            }
            seconds = round_robin_medians(steps, args.repeats)
            each, together = one_call_per_candidate(level, poses), one_call_per_view(level, poses)
        difference = max(float((each[n] - together[n]).abs().max() / each[n].abs().max()) for n in each)
        shape = next(iter(level.projectors.values())).image_shape
        median = {name: 1000 * value for name, value in seconds.items()}
        print(
            f"| {size:g} | {shape[0]} x {shape[1]} | {' x '.join(map(str, level.volume.shape[2:]))} | "
            f"{median['each']:.1f} | {median['all']:.1f} | {median['each'] / median['all']:.1f}x | {difference:.1e} |"
        )


if __name__ == "__main__":
    main()
