"""Calibrate ``register``'s quality flag: the projection NCC of good and of failed registrations.

``report.json``'s ``quality`` block flags a registration whose lowest per-view projection NCC (the
DRR of the registered atlas femur against the network's input, radiograph x mask, on the model's
detector) is below a threshold. This script measures that NCC on held-out phantoms (a dataset seed
no training used, default 5050) through the public API, for

- good registrations: (a) true masks, (b) segmented masks;
- failures a user can make: (1) a left femur registered as a right one (no ``--side left``),
  (2) the AP and LAT files swapped, (3) a LAT view whose stated angle is 10 degrees off,
  (4) the wrong femur in the views (a right femur's radiographs with ``--side left``);

and prints, for a range of thresholds, the false-alarm rate (registrations with Dice >= 0.90 that are
flagged) and the miss rate (Dice < 0.90 not flagged), and the threshold that maximises the balanced
accuracy. A failure is judged by its Dice, not by how it was made: a wrong input that the network
absorbs is no failure. Usage::

    python examples/quality_threshold.py --n 8 --out runs/quality_threshold
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

import biplanar
from biplanar.data.clinical import write_view_files
from biplanar.data.masks import femur_masks
from biplanar.data.simulate import SimulationConfig, render_radiographs, simulate_case, subject_seed
from biplanar.evaluation.evaluate import rows_to_csv
from biplanar.geometry.presets import biplanar_pair
from biplanar.io.atomic import atomic_write_text
from biplanar.io.volumes import write_volume
from biplanar.registration.outputs import QUALITY_SUMMARY_KEYS

CALIBRATION_SEED = 5050  # a dataset seed no training set used (the routes table uses 4040)
FAILED_DICE = 0.90  # a registration below this Dice has failed (what the flag should catch)
GOOD = ("true masks", "segmented masks")
SEGMENTATION_MODEL: Path | None = None  # --segmentation-model (default: the bundled one)
FAILURES = ("left as right", "AP and LAT swapped", "LAT stated 10 deg off", "right as left")


def registration(out: Path, folder: Path, truth: Path, masks: bool = True, swap: bool = False, **options) -> dict:
    """One registration's quality summary (lowest per-view projection NCC and silhouette Dice, flag)
    and its Dice."""
    ap, lat = (folder / "LAT.npy", folder / "AP.npy") if swap else (folder / "AP.npy", folder / "LAT.npy")
    if masks:
        options.update(ap_mask=folder / "AP_mask.npy", lat_mask=folder / "LAT_mask.npy")
        if swap:
            options.update(ap_mask=folder / "LAT_mask.npy", lat_mask=folder / "AP_mask.npy")
    report = biplanar.register(
        folder / "geometry.json",
        ap,
        lat,
        out,
        truth_labels=truth,
        progress=False,
        segmentation_model=SEGMENTATION_MODEL,
        **options,
    ).report
    return {**{key: report["quality"][key] for key in QUALITY_SUMMARY_KEYS}, "dice": report["dice"]}


def run_case(index: int, work: Path, config: SimulationConfig) -> list[dict]:
    """The good and failed registrations of calibration case ``index``."""
    case = simulate_case(subject_seed(CALIBRATION_SEED, index), config)
    grid, centre = case.grid, case.grid.centre_world
    folder = work / f"case_{index:03d}"
    write_view_files(folder / "right", case.views, case.radiographs, case.masks)
    left_ct, left_labels = np.ascontiguousarray(case.ct_hu[::-1]), np.ascontiguousarray(case.labels[::-1])
    left_views = biplanar_pair(0.0, -90.0, config.image_shape, config.pixel_spacing_mm, centre)
    write_view_files(
        folder / "left",
        left_views,
        render_radiographs(left_ct, grid, left_views, config),
        femur_masks(left_labels, grid, left_views),
    )
    off = biplanar_pair(0.0, 100.0, config.image_shape, config.pixel_spacing_mm, centre)
    write_view_files(folder / "off", off, case.radiographs, case.masks)  # images of 90 deg, stated 100 deg
    right, left = folder / "labels.nii.gz", folder / "labels_left.nii.gz"
    write_volume(right, case.labels, grid)
    write_volume(left, left_labels, grid)
    runs = {
        "true masks": lambda out: registration(out, folder / "right", right),
        "segmented masks": lambda out: registration(out, folder / "right", right, masks=False),
        "left as right": lambda out: registration(out, folder / "left", left, masks=False),
        "AP and LAT swapped": lambda out: registration(out, folder / "right", right, swap=True),
        "LAT stated 10 deg off": lambda out: registration(out, folder / "off", right),
        "right as left": lambda out: registration(out, folder / "right", right, masks=False, side="left"),
    }
    rows = []
    for name, run in runs.items():
        result = run(folder / "out" / name.replace(" ", "_"))
        rows.append({"case": index, "registration": name, "failed": result["dice"] < FAILED_DICE, **result})
        print(
            f"case {index} {name}: lowest projection NCC {result['lowest_projection_ncc']:.3f}, "
            f"silhouette Dice {result['lowest_silhouette_dice']:.3f}, Dice {result['dice']:.3f}",
            flush=True,
        )
    shutil.rmtree(folder / "out")
    return rows


def rates(rows: list[dict], threshold: float) -> tuple[float, float]:
    """``(false-alarm rate, miss rate)`` of flagging NCC < ``threshold``."""
    good = np.array([row["lowest_projection_ncc"] for row in rows if not row["failed"]])
    bad = np.array([row["lowest_projection_ncc"] for row in rows if row["failed"]])
    return float(np.mean(good < threshold)), float(np.mean(bad >= threshold))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="held-out phantoms")
    parser.add_argument("--out", type=Path, required=True, help="folder for cases.csv, rates.md and the inputs")
    parser.add_argument("--segmentation-model", type=Path, default=None, help="default: the bundled one")
    arguments = parser.parse_args()
    global SEGMENTATION_MODEL
    SEGMENTATION_MODEL = arguments.segmentation_model
    config = SimulationConfig(preset="lite", geometry="orthogonal")
    rows = [row for index in range(arguments.n) for row in run_case(index, arguments.out / "inputs", config)]
    atomic_write_text(arguments.out / "cases.csv", rows_to_csv(rows))
    thresholds = np.round(np.arange(0.50, 0.951, 0.01), 2)
    balanced = np.array([1.0 - sum(rates(rows, threshold)) / 2.0 for threshold in thresholds])
    # The middle of the thresholds of best balanced accuracy: as far from both groups as the data allow.
    best = float(np.median(thresholds[balanced == balanced.max()]))
    failed = sum(row["failed"] for row in rows)
    lines = [
        f"{len(rows)} registrations, {failed} failed (Dice < {FAILED_DICE}); flag: lowest projection NCC < threshold",
        "",
        "| threshold | false alarms (good flagged) | misses (failures not flagged) |",
        "|---|---|---|",
    ]
    for threshold in thresholds[::5]:
        false_alarm, miss = rates(rows, float(threshold))
        lines.append(f"| {threshold:.2f} | {100 * false_alarm:.0f} % | {100 * miss:.0f} % |")
    false_alarm, miss = rates(rows, best)
    lines.append(
        f"\nbest balanced accuracy (middle of its range) at {best:.2f}: "
        f"{100 * false_alarm:.0f} % false alarms, {100 * miss:.0f} % misses"
    )
    for name in GOOD + FAILURES:
        values = [row["lowest_projection_ncc"] for row in rows if row["registration"] == name]
        lines.append(
            f"- {name}: lowest projection NCC {np.mean(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"
        )
    text = "\n".join(lines) + "\n"
    (arguments.out / "rates.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
