"""What the benchmark scripts share: one measurement per fresh process, and the command-line entry.

A script defines a ``Job`` dataclass, ``run_job(job) -> dict`` (one measurement, in the worker
process), ``parse_args`` (with ``--worker`` and ``--out``) and ``report(args) -> str``; the parent
runs each job in a fresh interpreter with :func:`spawn_job` so that peak-memory readings start clean.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from biplanar.io.atomic import atomic_write_text


def spawn_job(script: str, job: Any, timeout_s: float | None = None, source: Path | None = None) -> dict:
    """Run ``script --worker <job as JSON>`` in a fresh interpreter; its JSON result, or
    ``{"failed": reason}`` when it fails or runs past ``timeout_s``. ``source``: a ``src`` folder of
    another checkout whose ``biplanar`` the worker imports instead of the installed one (a baseline
    measured side by side, e.g. from ``git worktree add --detach /tmp/old <commit>``)."""
    command = [sys.executable, str(Path(script).resolve()), "--worker", json.dumps(asdict(job))]
    environment = dict(os.environ, **({} if source is None else {"PYTHONPATH": str(source)}))
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False, env=environment
        )
    except subprocess.TimeoutExpired:
        return {"failed": f"over the {timeout_s:.0f} s limit"}
    if completed.returncode != 0:
        tail = completed.stderr.strip().splitlines()[-1:] or [""]
        return {"failed": f"exit code {completed.returncode}: {tail[0]}"}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run_cli(
    parse_args: Callable[[list[str] | None], argparse.Namespace],
    job_type: type,
    run_job: Callable[[Any], dict],
    report: Callable[[argparse.Namespace], str],
    argv: list[str] | None = None,
) -> None:
    """The entry point: a worker runs one job and prints its JSON; otherwise the report is printed
    or written atomically to ``--out``."""
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_job(job_type(**json.loads(args.worker)))))
        return
    publish(report(args), args.out)


def publish(markdown: str, out: Path | None, echo: bool = False) -> None:
    """Print a report, or write it atomically to ``out`` (and print it too with ``echo``)."""
    if out is None or echo:
        print(markdown)
    if out is not None:
        atomic_write_text(out, markdown + "\n")


def round_robin_medians(steps: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall seconds of each step: ``warmup`` untimed rounds, then ``repeats`` timed rounds of
    one run of each step in turn, so that load from other processes falls on all steps alike."""
    for _ in range(warmup):
        for run in steps.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, run in steps.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
