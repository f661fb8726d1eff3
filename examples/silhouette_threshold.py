"""Calibrate the quality block's silhouette check on registrations that studies have already scored.

``report.json``'s ``quality`` flags a registration when the lowest per-view projection NCC is below
0.79 (``examples/quality_threshold.py``) or the lowest per-view silhouette Dice (the registered
femur's outline against the mask the network used,
:func:`biplanar.registration.outputs.projection_checks`) is below
:data:`~biplanar.registration.outputs.QUALITY_MIN_SILHOUETTE_DICE`. This script reads the
``cases.csv`` of studies that record ``dice``, ``lowest_projection_ncc`` and
``lowest_silhouette_dice`` per registration (``examples/heldout_table.py``,
``examples/shape_extremes.py``, ``examples/quality_threshold.py``). A registration has failed when
its Dice is below 0.90 (as in ``examples/quality_threshold.py``). For silhouette thresholds from
0.90 to 0.99 it prints the false-alarm rate (good registrations flagged) and the miss rate
(failures not flagged) of the flag with both checks, and the rule's threshold: the largest on the
grid whose false-alarm rate is at most 1 %; with ``--validate``, that threshold's rates on other
studies' registrations (other subjects, other failures). Usage::

    python examples/silhouette_threshold.py --cases runs/heldout/cases.csv runs/shape_extremes/cases.csv \\
        --validate runs/quality_threshold/cases.csv --out runs/silhouette_threshold
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from biplanar.io.atomic import atomic_write_text
from biplanar.registration.outputs import QUALITY_MIN_PROJECTION_NCC

FAILED_DICE = 0.90  # examples/quality_threshold.py's
MOST_FALSE_ALARMS = 0.01  # the rule: the largest threshold flagging at most 1 % of good registrations
THRESHOLDS = np.round(np.arange(0.90, 0.9901, 0.005), 3)


def read_rows(paths: list[Path]) -> list[dict]:
    """Every registration of the studies: ``study`` (file's folder), ``group``, ``dice``, both checks."""
    rows = []
    for path in paths:
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                group = " / ".join(row[key] for key in ("registration", "route", "variant", "model") if key in row)
                rows.append(
                    {
                        "study": path.parent.name,
                        "group": group,
                        "dice": float(row["dice"]),
                        "ncc": float(row["lowest_projection_ncc"]),
                        "silhouette": float(row["lowest_silhouette_dice"]),
                    }
                )
    return rows


def rates(rows: list[dict], threshold: float) -> tuple[float, float]:
    """``(false-alarm rate, miss rate)`` of flagging NCC < 0.79 or silhouette Dice < ``threshold``."""
    flagged = np.array([row["ncc"] < QUALITY_MIN_PROJECTION_NCC or row["silhouette"] < threshold for row in rows])
    failed = np.array([row["dice"] < FAILED_DICE for row in rows])
    false_alarms = float(flagged[~failed].mean()) if (~failed).any() else 0.0
    misses = float((~flagged[failed]).mean()) if failed.any() else 0.0
    return false_alarms, misses


def report(rows: list[dict], validation: list[dict]) -> str:
    """Markdown: the rates per threshold, the rule's threshold, and the failures with their values."""
    failed = [row for row in rows if row["dice"] < FAILED_DICE]
    good = [row for row in rows if row["dice"] >= FAILED_DICE]
    lines = [
        f"{len(rows)} registrations, {len(failed)} failed (Dice < {FAILED_DICE}); flag: lowest projection NCC < "
        f"{QUALITY_MIN_PROJECTION_NCC} or lowest silhouette Dice < threshold",
        "",
        "| silhouette threshold | false alarms (good flagged) | misses (failures not flagged) |",
        "|---:|---:|---:|",
    ]
    for threshold in THRESHOLDS:
        false_alarm, miss = rates(rows, float(threshold))
        lines.append(f"| {threshold:.3f} | {100 * false_alarm:.1f} % | {100 * miss:.0f} % |")
    allowed = [float(t) for t in THRESHOLDS if rates(rows, float(t))[0] <= MOST_FALSE_ALARMS]
    chosen = max(allowed) if allowed else None
    if chosen is not None:
        false_alarm, miss = rates(rows, chosen)
        lines.append(
            f"\nthe largest threshold with at most {100 * MOST_FALSE_ALARMS:.0f} % false alarms: {chosen:.3f} "
            f"({100 * false_alarm:.1f} % false alarms, {100 * miss:.0f} % misses; NCC alone misses "
            f"{100 * rates(rows, 0.0)[1]:.0f} %)"
        )
    if chosen is not None and validation:
        false_alarm, miss = rates(validation, chosen)
        failures = sum(row["dice"] < FAILED_DICE for row in validation)
        lines.append(
            f"\non the {len(validation)} validation registrations ({failures} failed) at {chosen:.3f}: "
            f"{100 * false_alarm:.1f} % false alarms, {100 * miss:.0f} % misses (NCC alone: "
            f"{100 * rates(validation, 0.0)[0]:.1f} %, {100 * rates(validation, 0.0)[1]:.0f} %)"
        )
    silhouettes = np.array([row["silhouette"] for row in good])
    lines.append(
        f"\ngood registrations' lowest silhouette Dice: median {np.median(silhouettes):.3f}, "
        f"1st percentile {np.percentile(silhouettes, 1):.3f}, min {silhouettes.min():.3f}"
    )
    lines += ["", "| failure | Dice | lowest projection NCC | lowest silhouette Dice |", "|---|---:|---:|---:|"]
    for row in sorted(failed, key=lambda row: row["dice"]):
        lines.append(
            f"| {row['study']}: {row['group']} | {row['dice']:.3f} | {row['ncc']:.3f} | {row['silhouette']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=Path, nargs="+", required=True, help="studies' cases.csv files")
    parser.add_argument("--validate", type=Path, nargs="*", default=[], help="other studies' cases.csv files")
    parser.add_argument("--out", type=Path, required=True, help="folder for rates.md")
    arguments = parser.parse_args()
    text = report(read_rows(arguments.cases), read_rows(arguments.validate))
    atomic_write_text(arguments.out / "rates.md", text)
    print(text)


if __name__ == "__main__":
    main()
