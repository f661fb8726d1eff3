"""``biplanar pose`` from the command line: wall time per case, start-up included, against another checkout.

Usage::

    python benchmarks/bench_pose_cli.py [--methods sopi sopi+opt] [--repeats 3] [--base-src /tmp/base/src]

Writes one case of the pose study (the real lumbar CT, seed 0, ``wide`` range, case 1: its AP and
LAT line-integral DRRs of 128 x 128 pixels at 3 mm and their geometry file) to a temporary folder,
then runs ``python -m biplanar pose ... --method M`` with the bundled ``sopi_lumbar`` networks for
each method, ``--repeats`` times, round-robin with the same commands under ``PYTHONPATH=BASE_SRC``
when ``--base-src`` is given (e.g. a ``git worktree`` of an earlier commit). Reports the process's
wall time and ``pose.json``'s ``timings_s.estimate``, and the first rotation parameter found.
Prints a markdown table for ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from biplanar.data.real_ct import REAL_CT
from biplanar.evaluation import pose_accuracy
from biplanar.io.geometry_file import write_geometry
from biplanar.training.checkpoints import bundled_models_dir

CT = Path(REAL_CT)


def write_case(folder: Path) -> None:
    """The lumbar study's case (seed 0, ``wide``, 1) as ``geometry.json``, ``AP.npy`` and ``LAT.npy``."""
    dataset = pose_accuracy.DATASETS["lumbar"]
    draw = pose_accuracy.standard_draws(0, "lumbar", 2)[1]
    volume, grid = pose_accuracy.load_ct(dataset, 1)
    views = pose_accuracy.views_for(dataset, grid)
    truth = pose_accuracy.pose_from_draw(draw, dataset.ranges["wide"], grid.centre_world)
    write_geometry(folder / "geometry.json", views)
    for name, image in pose_accuracy.render_radiographs(volume, grid, views, truth).items():
        np.save(folder / f"{name}.npy", np.asarray(image, dtype=np.float32))


def run_pose(folder: Path, method: str, source: str | None) -> tuple[float, float, float]:
    """Wall seconds, ``timings_s.estimate`` and the found ``rx`` (deg) of one ``pose`` process."""
    networks = bundled_models_dir() / "sopi_lumbar"
    out = folder / f"out_{method}_{'base' if source else 'this'}"
    command = [sys.executable, "-m", "biplanar", "pose", "--ct", str(CT), "--units", "hu"]
    command += ["--geometry", str(folder / "geometry.json"), "--ap", str(folder / "AP.npy")]
    command += ["--lat", str(folder / "LAT.npy"), "--out", str(out), "--overwrite", "--method", method]
    command += ["--rtpi", str(networks / "rtpi.pt"), "--fine", str(networks / "fine.pt")]
    environment = {**os.environ, **({"PYTHONPATH": source} if source else {})}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=environment, capture_output=True)
    wall = time.perf_counter() - started
    pose = json.loads((out / "pose.json").read_text())
    return wall, pose["timings_s"]["estimate"], pose["params"]["rotation_deg"][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["sopi", "sopi+opt"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--base-src", default=None, help="a checkout's src folder to compare with")
    args = parser.parse_args()
    sources = {"this checkout": None, **({"base": args.base_src} if args.base_src else {})}
    print(
        f"Command: `python benchmarks/bench_pose_cli.py --methods {' '.join(args.methods)} --repeats {args.repeats}"
        f"{' --base-src ' + args.base_src if args.base_src else ''}`, {datetime.date.today()}.\n"
    )
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        write_case(folder)
        results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
        for _ in range(args.repeats):
            for method in args.methods:
                for label, source in sources.items():
                    results.setdefault((method, label), []).append(run_pose(folder, method, source))
    print("| method | code | wall per process (s), median (min-max) | estimate (s), median | rx found (deg) |")
    print("|---|---|---:|---:|---:|")
    for (method, label), runs in results.items():
        walls, estimates = [run[0] for run in runs], [run[1] for run in runs]
        print(
            f"| {method} | {label} | {statistics.median(walls):.2f} ({min(walls):.2f}-{max(walls):.2f}) | "
            f"{statistics.median(estimates):.2f} | {runs[0][2]:.4f} |"
        )


if __name__ == "__main__":
    main()
