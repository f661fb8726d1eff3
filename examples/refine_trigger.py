"""Choose the silhouette Dice below which ``register`` refines a result the quality block does not flag.

``register`` without ``--refine`` refines the network's result when its lowest per-view silhouette
Dice (the registered femur's outline against the mask) is below
:data:`~biplanar.registration.pipeline.REFINE_BELOW_SILHOUETTE_DICE`. This script reads two runs of
``examples/shape_extremes.py`` on the same validation subjects, one with ``--refine 0`` (the
network alone: its Dice and silhouette Dice) and one with ``--refine 50`` (every registration
refined), and prints, per candidate threshold and route, how many registrations the rule would
refine and the mean change in Dice it would bring. Usage::

    python examples/shape_extremes.py --n 8 --seed 2026 --refine 0 --out runs/trigger_val_r0
    python examples/shape_extremes.py --n 8 --seed 2026 --refine 50 --out runs/trigger_val_r50
    python examples/refine_trigger.py --network runs/trigger_val_r0 --refined runs/trigger_val_r50

(about 5 and 10 min for the two studies on this project's 2-core CPU; this script takes a second).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

THRESHOLDS = (0.965, 0.97, 0.975, 0.98, 0.985, 0.99, 1.01)  # 0.965: the quality flag's; 1.01: every one
KEY = ("case", "variant", "route")


def read_cases(folder: Path) -> dict[tuple[str, ...], dict[str, str]]:
    """A shape-extremes study's ``cases.csv``, by (case, variant, route)."""
    with (folder / "cases.csv").open() as handle:
        return {tuple(row[name] for name in KEY): row for row in csv.DictReader(handle)}


def table(network: dict, refined: dict) -> str:
    """Markdown: per route and threshold, the registrations refined and the mean change in Dice."""
    lines = [
        "| route | refine below silhouette Dice | refined | mean Dice change, all | among the refined | worst change |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for route in dict.fromkeys(key[2] for key in network):
        keys = [key for key in network if key[2] == route]
        silhouette = np.array([float(network[key]["lowest_silhouette_dice"]) for key in keys])
        change = np.array([float(refined[key]["dice"]) - float(network[key]["dice"]) for key in keys])
        for threshold in THRESHOLDS:
            chosen = silhouette < threshold
            kept = np.where(chosen, change, 0.0)
            among = f"{change[chosen].mean():+.4f}" if chosen.any() else "-"
            lines.append(
                f"| {route} | {threshold:g} | {chosen.sum()}/{len(keys)} | {kept.mean():+.4f} | {among} | "
                f"{kept.min():+.3f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", type=Path, required=True, help="shape_extremes.py --refine 0 output folder")
    parser.add_argument("--refined", type=Path, required=True, help="shape_extremes.py --refine 50 output folder")
    arguments = parser.parse_args()
    network, refined = read_cases(arguments.network), read_cases(arguments.refined)
    if network.keys() != refined.keys():
        raise SystemExit(f"{arguments.refined}: not the same registrations as {arguments.network}")
    print(table(network, refined), end="")


if __name__ == "__main__":
    main()
