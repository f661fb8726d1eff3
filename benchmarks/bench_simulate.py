"""Data simulation speed: one paper-size case, and a lite dataset written with several workers.

Usage::

    python benchmarks/bench_simulate.py [--repeats 3] [--n 200] [--workers 2] [--out FILE]

Prints a markdown section (the one in ``docs/benchmarks.md``, "Data simulation") to stdout, or
writes it to ``--out``.

1. Paper size (grid 192 x 128 x 192, detector 224 x 160), in this process with torch's default
   threads: the phantom (:func:`make_subject`), the AP + LAT radiographs
   (:func:`render_radiographs`, line integral, 256 samples per ray), the two femur masks
   (:func:`femur_masks`), :func:`simulate_case` as a whole (target <= 5 s), and writing the
   case's files (:func:`write_case`). Medians over ``--repeats`` seeds, after one warm-up case.
2. A lite dataset (grid 96 x 64 x 96, detector 112 x 80) of ``--n`` subjects written by
   :func:`simulate_dataset` with ``--workers`` processes, wall clock including the workers'
   start. With ``--n`` below 200 the time for 200 is extrapolated linearly and labelled so.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from biplanar.data.masks import femur_masks
from biplanar.data.phantom import make_subject
from biplanar.data.simulate import (
    SimulationConfig,
    case_views,
    render_radiographs,
    simulate_case,
    simulate_dataset,
    write_case,
)

PAPER_TARGET_S = 5.0
DATASET_TARGET_N = 200


def seconds(function: Callable[[], object]) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def wall_and_cpu(function: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and CPU seconds (this process, all its threads) of one call."""
    cpu = time.process_time()
    wall = seconds(function)
    return wall, time.process_time() - cpu


def case_step_times(seed: int, config: SimulationConfig) -> dict[str, tuple[float, float]]:
    """Wall-clock and CPU seconds of each step of case ``seed``."""
    subject = make_subject(seed, config.preset)
    views = case_views(seed, config, subject.grid)
    times = {
        "phantom (make_subject)": wall_and_cpu(lambda: make_subject(seed, config.preset)),
        "AP + LAT radiographs (render_radiographs)": wall_and_cpu(
            lambda: render_radiographs(subject.ct_hu, subject.grid, views, config)
        ),
        "AP + LAT femur masks (femur_masks)": wall_and_cpu(
            lambda: femur_masks(subject.labels, subject.grid, views, config.num_samples)
        ),
        "whole case (simulate_case)": wall_and_cpu(lambda: simulate_case(seed, config)),
    }
    case = simulate_case(seed, config)
    with tempfile.TemporaryDirectory() as folder:
        times["writing its files (write_case)"] = wall_and_cpu(lambda: write_case(Path(folder) / "case", case))
    return times


def paper_case_times(repeats: int) -> dict[str, tuple[float, float]]:
    """Median wall-clock and CPU seconds of each step of a paper-size case, ``repeats`` seeds."""
    config = SimulationConfig(preset="paper")
    simulate_case(0, config)  # warm-up: first-call allocations and kernel selection
    runs = [case_step_times(seed, config) for seed in range(1, repeats + 1)]
    return {name: tuple(statistics.median(run[name][i] for run in runs) for i in (0, 1)) for name in runs[0]}


def dataset_time(n: int, workers: int) -> float:
    """Wall-clock seconds of :func:`simulate_dataset` for ``n`` lite subjects."""
    with tempfile.TemporaryDirectory() as folder:
        return seconds(
            lambda: simulate_dataset(folder, n, 0, SimulationConfig(preset="lite"), workers=workers, progress=False)
        )


def report(paper: dict[str, tuple[float, float]], repeats: int, n: int, workers: int, total_s: float) -> str:
    """The markdown section."""
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), load average {os.getloadavg()[0]:.1f} "
        f"at the end, {datetime.date.today()}"
    )
    lines = [
        "## Data simulation",
        "",
        f"`python benchmarks/bench_simulate.py --repeats {repeats} --n {n} --workers {workers}` on {machine}.",
        "",
        f"One paper-size case (grid 192 x 128 x 192, detector 224 x 160, line integral, 256 "
        f"samples per ray), median over {repeats} seeds, torch's default threads; CPU seconds "
        "add up all threads of the process:",
        "",
        "| step | wall-clock s | CPU s |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {name} | {wall:.2f} | {cpu:.2f} |" for name, (wall, cpu) in paper.items()]
    whole = paper["whole case (simulate_case)"][0]
    lines += [
        "",
        f"Target <= {PAPER_TARGET_S:.0f} s for the whole case: "
        f"{'met' if whole <= PAPER_TARGET_S else 'NOT met'} ({whole:.2f} s).",
        "",
        f"Lite dataset (grid 96 x 64 x 96, detector 112 x 80) with `simulate_dataset`, "
        f"{workers} worker processes, files included:",
        "",
        "| subjects | wall clock | per subject |",
        "| --- | --- | --- |",
        f"| {n} (measured) | {total_s:.1f} s | {total_s / n:.2f} s |",
    ]
    if n < DATASET_TARGET_N:
        lines.append(
            f"| {DATASET_TARGET_N} (extrapolated linearly from {n}) | "
            f"{total_s / n * DATASET_TARGET_N / 60:.1f} min | {total_s / n:.2f} s |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="paper-size seeds to time")
    parser.add_argument("--n", type=int, default=DATASET_TARGET_N, help="lite subjects to write")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--out", type=Path, help="write the markdown here instead of stdout")
    args = parser.parse_args()
    paper = paper_case_times(args.repeats)
    total_s = dataset_time(args.n, args.workers)
    text = report(paper, args.repeats, args.n, args.workers, total_s)
    if args.out is None:
        print(text, end="")
    else:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
