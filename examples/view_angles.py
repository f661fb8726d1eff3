"""``biplanar register`` at view angles inside and outside the trained ones, on held-out subjects.

The bundled model was trained on orthogonal pairs (AP at LAO/RAO 0, LAT at 90) and generalized
pairs (each view's LAO/RAO uniform within 30 deg of 0 and of 90). Each held-out subject (default
dataset seed 4949, the simulator's defaults: phantom or shape-model femur, whole-body scene, the
model's detector, true masks) is rendered at each pair below and registered through the public
Python API (:func:`biplanar.register`).

Usage::

    python examples/view_angles.py --n 5 --out runs/view_angles
    python examples/view_angles.py --n 5 --refine auto --out runs/view_angles_auto  # register's default

prints a Markdown table (per pair: mean +- sd and min Dice, its mean difference to the orthogonal
pair, how many were flagged by the quality block, the refinement iterations ``register`` ran) and
writes ``cases.csv`` and ``table.md``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from held_out_study import Registration, dice_cells, run_held_out_study

from biplanar.data.clinical import write_view_files
from biplanar.data.masks import femur_masks
from biplanar.data.scene import render_scene
from biplanar.data.simulate import SimulationConfig, render_radiographs, simulate_case, subject_seed
from biplanar.geometry.presets import biplanar_pair
from biplanar.io.volumes import write_volume

HELD_OUT_SEED = 4949  # a dataset seed no training set used
# (AP, LAT) LAO/RAO in degrees: the orthogonal pair first, then pairs inside the trained ranges,
# then pairs outside them.
PAIRS_DEG = (
    (0, 90),
    (10, 100),
    (-10, 80),
    (15, 90),
    (0, 105),
    (0, 75),
    (-30, 60),
    (30, 120),
    (20, 60),
    (-20, 110),
    (0, 60),
    (0, 120),
    (0, 45),
    (0, 135),
    (-40, 90),
    (40, 90),
)


def write_pair(case, config: SimulationConfig, ap_angle: float, lat_angle: float, folder: Path) -> None:
    """``register``'s array inputs (:func:`~biplanar.data.clinical.write_view_files`) of a simulated
    ``case`` rendered at the (AP, LAT) LAO/RAO pair (deg), into ``folder``."""
    grid = case.grid
    detector = (config.image_shape, config.pixel_spacing_mm)
    views = biplanar_pair(float(ap_angle), float(lat_angle), *detector, grid.centre_world)
    scene = render_scene(case.subject.spec, grid, views)
    images = render_radiographs(scene.ct_hu, scene.scene.grid, views, config)
    write_view_files(folder, views, images, femur_masks(case.labels, grid, views))


def run_case(index: int, work: Path, config: SimulationConfig, registration: Registration) -> list[dict]:
    """Every angle pair of held-out case ``index``: one row each."""
    case = simulate_case(subject_seed(HELD_OUT_SEED, index), config)
    folder = work / f"case_{index:03d}"
    write_volume(folder / "labels.nii.gz", case.labels, case.grid)
    rows = []
    for ap_angle, lat_angle in PAIRS_DEG:
        inputs = folder / f"{ap_angle}_{lat_angle}"
        write_pair(case, config, ap_angle, lat_angle, inputs)
        report = registration.register(inputs, folder / "labels.nii.gz")
        pair = f"{ap_angle} / {lat_angle}"
        flagged, refined = report["quality"]["flag"], report["inputs"]["refine"]["iterations"]
        rows.append({"case": index, "pair": pair, "dice": report["dice"], "flagged": flagged, "refined": refined})
        print(f"case {index} {pair}: Dice {report['dice']:.3f}", flush=True)
    shutil.rmtree(folder)
    return rows


def table(rows: list[dict], n: int) -> str:
    """The Markdown table: one line per angle pair."""
    orthogonal = np.array([row["dice"] for row in rows if row["pair"] == "0 / 90"])
    lines = [
        f"| AP / LAT LAO-RAO (deg), {n} held-out subjects (seed {HELD_OUT_SEED}), true masks | trained | Dice | "
        "min Dice | Dice - orthogonal | flagged | refine iterations |",
        "|---|---|---|---|---|---|---|",
    ]
    for ap_angle, lat_angle in PAIRS_DEG:
        pair = f"{ap_angle} / {lat_angle}"
        trained = "yes" if abs(ap_angle) <= 30 and abs(lat_angle - 90) <= 30 else "no"
        chosen = [row for row in rows if row["pair"] == pair]
        iterations = "/".join(str(count) for count in sorted({row["refined"] for row in chosen}))
        lines.append(f"| {pair} | {trained} | {dice_cells(chosen, orthogonal)} | {iterations} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    run_held_out_study(__doc__.splitlines()[0], 5, run_case, table)


if __name__ == "__main__":
    main()
