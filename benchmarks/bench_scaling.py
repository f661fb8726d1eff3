"""Scaling, measured: ``simulate`` subjects per minute against ``--workers``, and registration
training throughput under ``torchrun --nproc_per_node=N`` (gloo, CPU) against one process.

Usage::

    python benchmarks/bench_scaling.py [--workers 1 2] [--procs 1 2] [--subjects 12] [--out FILE]

Prints a markdown section (the one in ``docs/benchmarks.md``, "Scaling") to stdout, or writes it to
``--out``. Each measurement is one fresh command, timed by wall clock, start-up included:

1. ``biplanar simulate --preset lite --n S --workers W`` (the current defaults: body scene, mixed
   shapes) into a fresh folder, for each ``W``;
2. ``torchrun --standalone --nproc_per_node=N -m biplanar train --config lite --data D --epochs 1``
   (one torch thread per process) on the dataset of step 1, for each ``N``: each process trains
   on its shard (``DistributedDataParallel``, gloo), so an epoch has ``ceil(train / N)`` steps.
   Throughput: training subjects per second over the epoch's wall time (``metrics.csv``'s
   ``wall_s``: the epoch and its validation, without start-up).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def run(command: list[str], threads: int = 1) -> float:
    """Wall seconds of ``command`` (it must succeed)."""
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True, env=environment)
    return time.perf_counter() - started


def simulate_rows(work: Path, subjects: int, workers: list[int]) -> tuple[list[str], Path]:
    """Markdown rows of step 1, and the last dataset written (for step 2)."""
    rows, folder = [], work
    for count in workers:
        folder = work / f"sim_w{count}"
        seconds = run(
            [
                sys.executable,
                "-m",
                "biplanar",
                "simulate",
                "--preset",
                "lite",
                "--n",
                str(subjects),
                "--seed",
                "8080",
                "--out",
                str(folder),
                "--workers",
                str(count),
            ]
        )
        rows.append(f"| {count} | {subjects} | {seconds:.1f} | {60.0 * subjects / seconds:.1f} |")
    return rows, folder


def train_rows(work: Path, data: Path, procs: list[int]) -> list[str]:
    """Markdown rows of step 2."""
    torchrun = str(Path(sys.executable).parent / "torchrun")
    rows = []
    for count in procs:
        out = work / f"train_n{count}"
        total = run(
            [
                torchrun,
                "--standalone",
                f"--nproc_per_node={count}",
                "-m",
                "biplanar",
                "train",
                "--config",
                "lite",
                "--data",
                str(data),
                "--out",
                str(out),
                "--epochs",
                "1",
            ]
        )
        with open(out / "metrics.csv") as handle:
            row = next(csv.DictReader(handle))
        epoch_s, steps = float(row["wall_s"]), int(row["step"])
        subjects = len(json.loads((data / "split.json").read_text())["train"])
        rows.append(f"| {count} | {steps} | {epoch_s:.1f} | {total:.1f} | {subjects / epoch_s:.3f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--subjects", type=int, default=12)
    parser.add_argument("--out", type=Path, help="write the markdown here instead of stdout")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_scaling_"))
    try:
        simulate, data = simulate_rows(work, args.subjects, args.workers)
        training = train_rows(work, data, args.procs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    shown = [f"--workers {' '.join(map(str, args.workers))}", f"--procs {' '.join(map(str, args.procs))}"]
    command = f"python benchmarks/bench_scaling.py {' '.join(shown)} --subjects {args.subjects}"
    lines = [
        "## Scaling",
        "",
        f"`{command}` on {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
        f"{datetime.date.today().isoformat()}.",
        "",
        "| simulate workers | subjects | wall s | subjects / min |",
        "|---:|---:|---:|---:|",
        *simulate,
        "",
        "| torchrun processes | steps in the epoch | epoch wall s | command wall s | training subjects / s |",
        "|---:|---:|---:|---:|---:|",
        *training,
        "",
    ]
    text = "\n".join(lines)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
