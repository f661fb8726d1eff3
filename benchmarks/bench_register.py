"""``biplanar register`` end to end from the command line: wall clock and where the time goes.

Usage::

    python benchmarks/bench_register.py [--repeats 5] [--baseline SRC] [--refine N] [--lat-angle DEG] [--out FILE]

Prints a markdown section (the one in ``docs/benchmarks.md``, "Registration end to end") to
stdout, or writes it to ``--out``. One held-out lite case (phantom, grid scene, line integrals,
true masks; dataset seed 7 of ``data/lite_heldout``'s recipe, simulated here) is registered by the
bundled lite model ``--repeats`` times, each a fresh ``biplanar register`` process: its wall clock
(Python and torch start-up, imports, reading, the network, writing every output) and the stages of
its ``report.json`` ``timings_s`` (``load``: model, atlas and inputs; ``network``; ``refine``: the
``--refine N`` test-time iterations, register's own choice by default: none for the orthogonal
pair, 25 with ``--lat-angle`` more than 22.5 deg from 90; ``writing``: volumes, the carried mesh, overlays,
masks, report; ``total``), and the Dice of its ``warped_labels.nii.gz`` against the case's true
labels (computed here, untimed). Medians; torch's default threads. The targets (issue 19): <= 3 s
per case from the command line; with ``--refine``, Dice >= 0.96 in <= 10 s. ``--baseline SRC`` (a
``src`` folder of another checkout, e.g. ``git worktree add /tmp/old <commit>`` then
``/tmp/old/src``) runs that code's ``register`` alternately with this one's on the same case, for a
side-by-side row.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import publish

from biplanar.data.atlas import FEMUR_LABEL
from biplanar.data.clinical import write_view_files
from biplanar.data.masks import femur_masks
from biplanar.data.simulate import SimulationConfig, render_radiographs, simulate_case, subject_seed, write_case
from biplanar.evaluation.metrics import dice
from biplanar.geometry.presets import AP_LAO_RAO_DEG, LAT_LAO_RAO_DEG, biplanar_pair
from biplanar.io.volumes import read_volume

STAGES = ("load", "network", "refine", "writing", "total")
HELD_OUT_SEED = 7


def write_held_out_case(folder: Path, lat_angle_deg: float) -> None:
    """The held-out case (module doc) into ``folder``, its LAT view at ``lat_angle_deg`` LAO/RAO."""
    config = SimulationConfig(preset="lite", shapes="phantom", scene="grid")
    case = simulate_case(subject_seed(HELD_OUT_SEED, 0), config)
    write_case(folder, case)
    if lat_angle_deg != LAT_LAO_RAO_DEG:  # rendered again, at the turned pair
        views = biplanar_pair(
            AP_LAO_RAO_DEG, lat_angle_deg, config.image_shape, config.pixel_spacing_mm, case.grid.centre_world
        )
        images = render_radiographs(case.ct_hu, case.grid, views, config)
        write_view_files(folder, views, images, femur_masks(case.labels, case.grid, views))


def run_once(case: Path, out: Path, source: Path | None, refine: int | None) -> tuple[float, dict[str, float]]:
    """Wall seconds of one ``biplanar register`` process (of the package in ``source``, default
    the installed one) and its ``timings_s`` with the Dice against the true labels as ``dice``."""
    command = [sys.executable, "-m", "biplanar", "register", "--geometry", str(case / "geometry.json")]
    command += ["--ap", str(case / "AP.npy"), "--lat", str(case / "LAT.npy"), "--out", str(out)]
    command += ["--ap-mask", str(case / "AP_mask.npy"), "--lat-mask", str(case / "LAT_mask.npy")]
    command += [] if refine is None else ["--refine", str(refine)]
    start = time.perf_counter()
    environment = dict(os.environ, **({} if source is None else {"PYTHONPATH": str(source)}))
    subprocess.run(command, check=True, capture_output=True, env=environment)
    wall = time.perf_counter() - start
    # Scored here, untimed (register's --truth-labels would add surface distances to its time).
    warped, _ = read_volume(out / "warped_labels.nii.gz")
    truth, _ = read_volume(case / "labels.nii.gz")
    score = dice(np.round(warped) == FEMUR_LABEL, np.round(truth) == FEMUR_LABEL)
    return wall, {"refine": 0.0, **json.loads((out / "report.json").read_text())["timings_s"], "dice": score}


def row(label: str, runs: list[tuple[float, dict[str, float]]]) -> str:
    """One table row: median wall (min-max), the median of each stage and the Dice."""
    walls = [wall for wall, _ in runs]
    stages = " | ".join(f"{statistics.median(timings[stage] for _, timings in runs):.2f}" for stage in STAGES)
    dice = statistics.median(timings["dice"] for _, timings in runs)
    return f"| {label} | {statistics.median(walls):.2f} ({min(walls):.2f}-{max(walls):.2f}) | {stages} | {dice:.4f} |"


def report(repeats: int, baseline: Path | None, refine: int | None, lat_angle_deg: float) -> str:
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        write_held_out_case(root / "case", lat_angle_deg)
        load_before = os.getloadavg()
        sources = {"this checkout": None, **({} if baseline is None else {f"baseline `{baseline}`": baseline})}
        runs: dict[str, list] = {label: [] for label in sources}
        for index in range(repeats):
            for label, source in sources.items():
                out = root / f"out_{index}_{list(sources).index(label)}"
                runs[label].append(run_once(root / "case", out, source, refine))
        load_after = os.getloadavg()
    return "\n".join(
        [
            f"Command: `python benchmarks/bench_register.py --repeats {repeats}"
            f"{'' if baseline is None else f' --baseline {baseline}'}{'' if refine is None else f' --refine {refine}'}"
            f"{'' if lat_angle_deg == LAT_LAO_RAO_DEG else f' --lat-angle {lat_angle_deg:g}'}`, "
            f"{datetime.date.today()}; "
            f"{platform.machine()}, {os.cpu_count()} logical CPUs, CPU only. Load average (1, 5, 15 min) "
            f"{', '.join(f'{value:.1f}' for value in load_before)} before and "
            f"{', '.join(f'{value:.1f}' for value in load_after)} after.",
            "",
            "| code | command-line wall s (median, min-max) | load s | network s | refine s | writing s "
            "| total s (report.json) | Dice |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            *(row(label, label_runs) for label, label_runs in runs.items()),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="the src folder of another checkout, run alternately")
    parser.add_argument("--refine", type=int, help="register --refine N (default: register's own choice)")
    parser.add_argument("--lat-angle", type=float, default=LAT_LAO_RAO_DEG, help="the LAT view's LAO/RAO angle, deg")
    parser.add_argument("--out", type=Path)
    arguments = parser.parse_args()
    publish(
        report(arguments.repeats, arguments.baseline, arguments.refine, arguments.lat_angle), arguments.out, echo=True
    )


if __name__ == "__main__":
    main()
