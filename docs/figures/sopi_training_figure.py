"""Draw SOPI's training curves (docs/img/sopi_training.png) from the runs' ``metrics.csv``.

Left: RTPI's validation errors of its predicted pose (geodesic rotation, deg; displacement of the
CT centre, mm) against the step. Right: the fine registration's validation cosines between
``-dL_N/dtheta`` and the geodesic direction to the true pose, rotation and translation parts
(1: the descent direction points straight at the truth; 0: no better than chance).

Usage::

    python docs/figures/sopi_training_figure.py --rtpi runs/rtpi_lite/metrics.csv \\
        --fine runs/fine_lite/metrics.csv --out docs/img/sopi_training.png
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from biplanar.io.atomic import atomic_path


def read_columns(path: Path) -> dict[str, list[float]]:
    """A ``metrics.csv`` as column name -> values."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise SystemExit(f"{path}: no rows")
    return {name: [float(row[name]) for row in rows] for name in rows[0]}


def draw(rtpi: dict[str, list[float]], fine: dict[str, list[float]], out: Path) -> None:
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    left.plot(rtpi["step"], rtpi["val_rotation_error_deg"], label="rotation (deg)", marker="o", markersize=3)
    left.plot(rtpi["step"], rtpi["val_translation_error_mm"], label="translation (mm)", marker="o", markersize=3)
    left.set(title="RTPI: validation error of the initial pose", xlabel="step", ylim=(0, None))
    right.plot(fine["step"], fine["val_cos_rotation"], label="rotation", marker="o", markersize=3)
    right.plot(fine["step"], fine["val_cos_translation"], label="translation", marker="o", markersize=3)
    right.axhline(0.0, color="grey", linewidth=0.8)
    right.set(title="fine: validation cos(-dL_N/dθ, geodesic)", xlabel="step", ylim=(-0.2, 1.0))
    for axes in (left, right):
        axes.legend()
        axes.grid(alpha=0.3)
    with atomic_path(out) as temporary:
        figure.savefig(temporary, dpi=120, format="png")
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtpi", type=Path, required=True, help="RTPI run's metrics.csv")
    parser.add_argument("--fine", type=Path, required=True, help="fine run's metrics.csv")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    draw(read_columns(args.rtpi), read_columns(args.fine), args.out)


if __name__ == "__main__":
    main()
