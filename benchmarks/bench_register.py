"""``biplanar register`` end to end from the command line: wall clock and where the time goes.

Usage::

    python benchmarks/bench_register.py [--repeats 5] [--baseline SRC] [--out FILE]

Prints a markdown section (the one in ``docs/benchmarks.md``, "Registration end to end") to
stdout, or writes it to ``--out``. One held-out lite case (phantom, grid scene, line integrals,
true masks; dataset seed 7 of ``data/lite_heldout``'s recipe, simulated here) is registered by the
bundled lite model ``--repeats`` times, each a fresh ``biplanar register`` process: its wall clock
(Python and torch start-up, imports, reading, the network, writing every output) and the stages of
its ``report.json`` ``timings_s`` (``load``: model, atlas and inputs; ``network``; ``writing``:
volumes, the carried mesh, overlays, masks, report; ``total``). Medians; torch's default threads.
The target (issue 19): <= 3 s per case from the command line. ``--baseline SRC`` (a ``src`` folder
of another checkout, e.g. ``git worktree add /tmp/old <commit>`` then ``/tmp/old/src``) runs that
code's ``register`` alternately with this one's on the same case, for a side-by-side row.
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

from harness import publish

from biplanar.data.simulate import SimulationConfig, simulate_case, subject_seed, write_case

STAGES = ("load", "network", "writing", "total")
HELD_OUT_SEED = 7


def run_once(case: Path, out: Path, source: Path | None) -> tuple[float, dict[str, float]]:
    """Wall seconds of one ``biplanar register`` process (of the package in ``source``, default
    the installed one) and its ``timings_s``."""
    command = [sys.executable, "-m", "biplanar", "register", "--geometry", str(case / "geometry.json")]
    command += ["--ap", str(case / "AP.npy"), "--lat", str(case / "LAT.npy"), "--out", str(out)]
    command += ["--ap-mask", str(case / "AP_mask.npy"), "--lat-mask", str(case / "LAT_mask.npy")]
    start = time.perf_counter()
    environment = dict(os.environ, **({} if source is None else {"PYTHONPATH": str(source)}))
    subprocess.run(command, check=True, capture_output=True, env=environment)
    wall = time.perf_counter() - start
    return wall, json.loads((out / "report.json").read_text())["timings_s"]


def row(label: str, runs: list[tuple[float, dict[str, float]]]) -> str:
    """One table row: median wall (min-max) and the median of each stage."""
    walls = [wall for wall, _ in runs]
    stages = " | ".join(f"{statistics.median(timings[stage] for _, timings in runs):.2f}" for stage in STAGES)
    return f"| {label} | {statistics.median(walls):.2f} ({min(walls):.2f}-{max(walls):.2f}) | {stages} |"


def report(repeats: int, baseline: Path | None) -> str:
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        config = SimulationConfig(preset="lite", shapes="phantom", scene="grid")
        write_case(root / "case", simulate_case(subject_seed(HELD_OUT_SEED, 0), config))
        load_before = os.getloadavg()
        sources = {"this checkout": None, **({} if baseline is None else {f"baseline `{baseline}`": baseline})}
        runs: dict[str, list] = {label: [] for label in sources}
        for index in range(repeats):
            for label, source in sources.items():
                out = root / f"out_{index}_{list(sources).index(label)}"
                runs[label].append(run_once(root / "case", out, source))
        load_after = os.getloadavg()
    return "\n".join(
        [
            f"Command: `python benchmarks/bench_register.py --repeats {repeats}"
            f"{'' if baseline is None else f' --baseline {baseline}'}`, {datetime.date.today()}; "
            f"{platform.machine()}, {os.cpu_count()} logical CPUs, CPU only. Load average (1, 5, 15 min) "
            f"{', '.join(f'{value:.1f}' for value in load_before)} before and "
            f"{', '.join(f'{value:.1f}' for value in load_after)} after.",
            "",
            "| code | command-line wall s (median, min-max) | load s | network s | writing s | total s (report.json) |",
            "|---|---:|---:|---:|---:|---:|",
            *(row(label, label_runs) for label, label_runs in runs.items()),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="the src folder of another checkout, run alternately")
    parser.add_argument("--out", type=Path)
    arguments = parser.parse_args()
    publish(report(arguments.repeats, arguments.baseline), arguments.out, echo=True)


if __name__ == "__main__":
    main()
