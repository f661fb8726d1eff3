"""Calibrate ``pose``'s quality flag: the gradient correlation of right and of failed pose estimates.

``pose.json``'s ``quality`` block flags a pose whose lowest per-view gradient correlation (GC; the
radiograph against the full-resolution DRR of the CT at the pose) is below
:data:`biplanar.pose.estimate.QUALITY_MIN_GC`. ``biplanar evaluate-pose`` records that value for
every estimate (``gc`` in ``cases.csv``). This script reads one or more such ``cases.csv`` files
and prints, for a range of thresholds, the false-alarm rate (successful estimates flagged) and the
miss rate (failures not flagged), over every method's estimates (the ``initial`` rows, which no
method produced, are left out), and the thresholds of best balanced accuracy. Success is SOPI's
criterion (rotation < 3 deg and translation < 3 mm). Usage (the calibration of 2026-12-06, held-out
seed 5, clinic-processed radiographs)::

    biplanar evaluate-pose --out runs/pose_quality_clinical --n 10 --seed 5 \\
        --methods opt-gc,opt-ncc,opt-ngi,sopi,sopi+opt --appearance clinical \\
        --rtpi lumbar=src/biplanar/resources/models/sopi_lumbar/rtpi.pt \\
        --fine lumbar=src/biplanar/resources/models/sopi_lumbar/fine.pt \\
        --rtpi femur=src/biplanar/resources/models/sopi_lite/rtpi.pt \\
        --fine femur=src/biplanar/resources/models/sopi_lite/fine.pt
    python examples/pose_quality_threshold.py runs/pose_quality_clinical/cases.csv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from biplanar.evaluation.pose_accuracy import INITIAL
from biplanar.pose.estimate import QUALITY_MIN_GC


def read_estimates(paths: list[Path]) -> list[dict[str, str]]:
    """The rows of ``cases.csv`` files that are some method's estimate (no ``initial``, no error)."""
    rows = []
    for path in paths:
        with path.open(newline="") as handle:
            rows += [row for row in csv.DictReader(handle) if row["method"] != INITIAL and not row["error"]]
    return rows


def rates(rows: list[dict[str, str]], threshold: float) -> tuple[float, float]:
    """``(false-alarm rate, miss rate)`` of flagging GC < ``threshold``."""
    gc = np.array([float(row["gc"]) for row in rows])
    success = np.array([float(row["success"]) == 1.0 for row in rows])
    return float(np.mean(gc[success] < threshold)), float(np.mean(gc[~success] >= threshold))


def group_lines(rows: list[dict[str, str]]) -> list[str]:
    """Per dataset, range and outcome: count and GC range."""
    lines = ["| dataset, range | outcome | estimates | GC min | GC median | GC max |", "|---|---|---:|---:|---:|---:|"]
    for key in dict.fromkeys((row["dataset"], row["range"]) for row in rows):
        for outcome, wanted in (("success", 1.0), ("failure", 0.0)):
            values = [
                float(r["gc"]) for r in rows if (r["dataset"], r["range"]) == key and float(r["success"]) == wanted
            ]
            if values:
                low, middle, high = np.min(values), np.median(values), np.max(values)
                lines.append(
                    f"| {key[0]}, {key[1]} | {outcome} | {len(values)} | {low:.3f} | {middle:.3f} | {high:.3f} |"
                )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", type=Path, nargs="+", help="cases.csv files of biplanar evaluate-pose")
    args = parser.parse_args()
    rows = read_estimates(args.cases)
    failures = sum(float(row["success"]) == 0.0 for row in rows)
    thresholds = np.round(np.arange(0.60, 0.951, 0.01), 2)
    balanced = np.array([1.0 - sum(rates(rows, float(threshold))) / 2.0 for threshold in thresholds])
    best = thresholds[balanced == balanced.max()]
    lines = [
        f"{len(rows)} estimates, {failures} failures (rotation >= 3 deg or translation >= 3 mm); "
        f"flag: lowest per-view GC < threshold",
        "",
        *group_lines(rows),
        "",
        "| threshold | false alarms (successes flagged) | misses (failures not flagged) |",
        "|---|---:|---:|",
    ]
    for threshold in sorted({*thresholds[::5].tolist(), QUALITY_MIN_GC}):
        false_alarm, miss = rates(rows, float(threshold))
        lines.append(f"| {threshold:.2f} | {100 * false_alarm:.1f} % | {100 * miss:.1f} % |")
    lines += [
        "",
        f"best balanced accuracy {balanced.max():.3f} at thresholds {best.min():.2f} to {best.max():.2f}; "
        f"the package's threshold: {QUALITY_MIN_GC:.2f}",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
