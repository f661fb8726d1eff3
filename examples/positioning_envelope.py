"""How far the leg's pose and the C-arm's tilt may go beyond what the bundled model was trained on.

The simulator poses each femur within +-10 deg of flexion, abduction and rotation about its head
and +-3 mm of translation, and tilts no view cranio-caudally (:mod:`biplanar.data.phantom`,
:mod:`biplanar.data.simulate`). Each held-out subject (default dataset seed 4848, the simulator's
defaults: phantom or shape-model femur, whole-body scene, orthogonal views on the model's detector,
true masks) is rendered again with one change at a time and registered through the public Python
API (:func:`biplanar.register`):

- the femur (with pelvis and soft tissue) translated 8-12 mm from its drawn pose;
- one pose angle set to 15-20 deg (the other two as drawn);
- the AP or the LAT view tilted 10-20 deg cranio-caudally (``cranio_caudal_deg``).

Usage::

    python examples/positioning_envelope.py --n 5 --out runs/positioning_envelope

prints a Markdown table (per change: mean +- sd and min Dice, its mean difference to the drawn
pose, how many were flagged by the quality block) and writes ``cases.csv`` and ``table.md``.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
from held_out_study import Registration, dice_cells, run_held_out_study

from biplanar.data.clinical import write_view_files
from biplanar.data.masks import femur_masks
from biplanar.data.scene import render_scene
from biplanar.data.simulate import SimulationConfig, render_radiographs, simulate_case, subject_seed
from biplanar.geometry.projection import CarmPose, ProjectionView
from biplanar.io.volumes import write_volume

HELD_OUT_SEED = 4848  # a dataset seed no training set used
TRANSLATIONS_MM = {
    "translated x +8 mm": (8, 0, 0),
    "translated y +8 mm": (0, 8, 0),
    "translated z +8 mm": (0, 0, 8),
    "translated z -12 mm": (0, 0, -12),
    "translated (-10, 10, -10) mm": (-10, 10, -10),
}
ANGLES_DEG = {
    "flexion 20 deg": {"flexion_deg": 20.0},
    "abduction 20 deg": {"abduction_deg": 20.0},
    "adduction 15 deg": {"abduction_deg": -15.0},
    "external rotation 20 deg": {"external_rotation_deg": 20.0},
    "internal rotation 20 deg": {"external_rotation_deg": -20.0},
}
TILTS_DEG = {
    "AP tilted 10 deg": (10.0, 0.0),
    "AP tilted -10 deg": (-10.0, 0.0),
    "AP tilted 20 deg": (20.0, 0.0),
    "LAT tilted 10 deg": (0.0, 10.0),
    "LAT tilted -15 deg": (0.0, -15.0),
    "both tilted 15 deg": (15.0, 15.0),
}
CHANGES = ("as drawn", *TRANSLATIONS_MM, *ANGLES_DEG, *TILTS_DEG)


def changed(case, change: str, config: SimulationConfig):
    """The case's spec and views with ``change`` (one of :data:`CHANGES`)."""
    spec, pose, grid = case.subject.spec, case.subject.spec.pose, case.grid
    if change in TRANSLATIONS_MM:
        pose = dataclasses.replace(pose, translation_mm=tuple(np.add(pose.translation_mm, TRANSLATIONS_MM[change])))
    elif change in ANGLES_DEG:
        pose = dataclasses.replace(pose, **ANGLES_DEG[change])
    views = case.views
    if change in TILTS_DEG:
        views = {
            name: ProjectionView.from_carm(
                CarmPose(angle, tilt, 925.0, 1000.0, config.pixel_spacing_mm, tuple(grid.centre_world)),
                config.image_shape,
                name=name,
            )
            for (name, angle), tilt in zip((("AP", 0.0), ("LAT", 90.0)), TILTS_DEG[change])
        }
    return dataclasses.replace(spec, pose=pose), views


def run_case(index: int, work: Path, config: SimulationConfig, registration: Registration) -> list[dict]:
    """Every change of held-out case ``index``: one row each."""
    case = simulate_case(subject_seed(HELD_OUT_SEED, index), config)
    rows = []
    for change in CHANGES:
        spec, views = changed(case, change, config)
        rendered = render_scene(spec, case.grid, views)
        images = render_radiographs(rendered.ct_hu, rendered.scene.grid, views, config)
        folder = work / f"case_{index:03d}" / f"change_{CHANGES.index(change):02d}"
        write_volume(folder / "labels.nii.gz", rendered.subject.labels, case.grid)
        write_view_files(folder, views, images, femur_masks(rendered.subject.labels, case.grid, views))
        report = registration.register(folder, folder / "labels.nii.gz")
        rows.append({"case": index, "change": change, "dice": report["dice"], "flagged": report["quality"]["flag"]})
        print(f"case {index} {change}: Dice {report['dice']:.3f}", flush=True)
    shutil.rmtree(work / f"case_{index:03d}")
    return rows


def table(rows: list[dict], n: int) -> str:
    """The Markdown table: one line per change."""
    drawn = np.array([row["dice"] for row in rows if row["change"] == CHANGES[0]])
    lines = [
        f"| change ({n} held-out subjects, seed {HELD_OUT_SEED}, true masks) | Dice | min Dice | "
        "Dice - as drawn | flagged |",
        "|---|---|---|---|---|",
    ]
    for change in CHANGES:
        chosen = [row for row in rows if row["change"] == change]
        lines.append(f"| {change} | {dice_cells(chosen, drawn)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    run_held_out_study(__doc__.splitlines()[0], 5, run_case, table)


if __name__ == "__main__":
    main()
