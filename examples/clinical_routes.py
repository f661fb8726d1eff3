"""The input routes of ``biplanar register`` on held-out subjects, side by side (issue 15's table).

Each case is a phantom of a dataset seed never used in training (default 4040), registered through
the public Python API (:func:`biplanar.register`, what ``biplanar register`` calls) five ways:

- (a) ``plain``: line integrals on the model's detector (112 x 80 at 1.86 mm), geometry file, true masks;
- (b) ``no masks``: the same without masks (the bundled 2D segmentation network makes them);
- (c) ``448x320``: rendered on a 448 x 320 detector at 0.6 mm, geometry file, true masks of that detector;
- (d) ``DICOM``: two DICOM files only: transmission counts (``LIN``, ``MONOCHROME1``), the 448 x 320
  detector at 0.6 mm, the geometry in the tags (View Position, distances, Imager Pixel Spacing),
  no geometry file, no masks;
- (e) ``left``: the phantom mirrored into a left femur, its LAT taken with the source on the
  patient's right (View Position ``LL``, lao_rao -90), geometry file, true masks, ``--side left``;
- (e') ``left, source lateral``: the same left femur with the LAT source on the patient's left
  (lao_rao +90, View Position ``RL``): mirrored, a view from the femur's lateral side, the other side
  than the network learnt (shown to it reversed: :mod:`biplanar.geometry.facing`);
- (f) ``right, source lateral``: the right femur's LAT with the source on the patient's right
  (lao_rao -90, ``LL``), its whole-body scene, geometry file, true masks;
- (g) ``PA``: the right femur's AP taken from behind (lao_rao 180), its whole-body scene, geometry
  file, true masks.

Usage::

    python examples/clinical_routes.py --n 10 --out runs/clinical_routes

prints a Markdown table (mean +- sd Dice and ASSD per route, its difference to (a)) and writes
``cases.csv`` and ``table.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

import biplanar
from biplanar.data.clinical import clinic_views, write_clinical_dicoms, write_view_files
from biplanar.data.masks import femur_masks
from biplanar.data.scene import render_scene
from biplanar.data.simulate import SimulationConfig, render_radiographs, simulate_case, subject_seed
from biplanar.evaluation.evaluate import write_study
from biplanar.geometry.presets import biplanar_pair
from biplanar.io.volumes import write_volume

HELD_OUT_SEED = 4040  # a dataset seed no training set used
ROUTES = (
    "a plain",
    "b no masks",
    "c 448x320",
    "d DICOM",
    "e left",
    "e' left, source lateral",
    "f right, source lateral",
    "g PA",
)


def register(out: Path, folder: Path, truth: Path, masks: bool = True, dicom: bool = False, **options) -> dict:
    """One registration through the public API; its report."""
    if dicom:
        files = {"geometry": None, "ap": folder / "AP.dcm", "lat": folder / "LAT.dcm"}
    else:
        files = {"geometry": folder / "geometry.json", "ap": folder / "AP.npy", "lat": folder / "LAT.npy"}
    if masks:
        options.update(ap_mask=folder / "AP_mask.npy", lat_mask=folder / "LAT_mask.npy")
    result = biplanar.register(out=out, truth_labels=truth, progress=False, **files, **options)
    return result.report


def run_case(index: int, work: Path, config: SimulationConfig, segmentation_model: Path | None) -> list[dict]:
    """All routes of held-out case ``index``: one row per route."""
    case = simulate_case(subject_seed(HELD_OUT_SEED, index), config)
    grid, centre = case.grid, case.grid.centre_world
    folder = work / f"case_{index:03d}"
    write_volume(folder / "labels.nii.gz", case.labels, grid)
    left_labels = np.ascontiguousarray(case.labels[::-1])  # the mirror through the grid's centre plane
    write_volume(folder / "labels_left.nii.gz", left_labels, grid)
    write_view_files(folder / "model_detector", case.views, case.radiographs, case.masks)
    large = clinic_views(grid)
    scene = render_scene(case.subject.spec, grid, large)  # the whole-body scene, as simulate renders it
    large_images = render_radiographs(scene.ct_hu, scene.scene.grid, large, config)
    write_view_files(folder / "large", large, large_images, femur_masks(case.labels, grid, large))
    write_clinical_dicoms(folder / "dicom", case.ct_hu, grid, "right", config, spec=case.subject.spec)
    left_ct = np.ascontiguousarray(case.ct_hu[::-1])
    for lat_angle, name in ((-90.0, "left"), (90.0, "left_source_lateral")):
        views = biplanar_pair(0.0, lat_angle, config.image_shape, config.pixel_spacing_mm, centre)
        images = render_radiographs(left_ct, grid, views, config)
        write_view_files(folder / name, views, images, femur_masks(left_labels, grid, views))
    for ap_angle, lat_angle, name in ((0.0, -90.0, "right_source_lateral"), (180.0, 90.0, "pa")):
        views = biplanar_pair(ap_angle, lat_angle, config.image_shape, config.pixel_spacing_mm, centre)
        scene = render_scene(case.subject.spec, grid, views)
        images = render_radiographs(scene.ct_hu, scene.scene.grid, views, config)
        write_view_files(folder / name, views, images, femur_masks(case.labels, grid, views))
    truth, truth_left = folder / "labels.nii.gz", folder / "labels_left.nii.gz"
    runs = {
        "a plain": lambda out: register(out, folder / "model_detector", truth),
        "b no masks": lambda out: register(
            out, folder / "model_detector", truth, masks=False, segmentation_model=segmentation_model
        ),
        "c 448x320": lambda out: register(out, folder / "large", truth),
        "d DICOM": lambda out: register(
            out, folder / "dicom", truth, masks=False, dicom=True, segmentation_model=segmentation_model
        ),
        "e left": lambda out: register(out, folder / "left", truth_left, side="left"),
        "e' left, source lateral": lambda out: register(out, folder / "left_source_lateral", truth_left, side="left"),
        "f right, source lateral": lambda out: register(out, folder / "right_source_lateral", truth),
        "g PA": lambda out: register(out, folder / "pa", truth),
    }
    rows = []
    for route, run in runs.items():
        report = run(folder / "out" / route.split()[0])
        rows.append(
            {
                "case": index,
                "route": route,
                "dice": report["dice"],
                "assd_mm": report["assd_mm"],
                "hd95_mm": report["hd95_mm"],
                "time_s": report["timings_s"]["total"],
            }
        )
        print(f"case {index} {route}: Dice {report['dice']:.3f}, ASSD {report['assd_mm']:.2f} mm", flush=True)
    shutil.rmtree(folder / "out")
    return rows


def table(rows: list[dict], n: int) -> str:
    """The Markdown table: per route mean +- sd of Dice and ASSD, and the Dice difference to (a)."""
    plain = np.array([row["dice"] for row in rows if row["route"] == ROUTES[0]])
    lines = [
        f"| route ({n} held-out subjects, dataset seed {HELD_OUT_SEED}) | Dice | Dice - (a) | ASSD (mm) | time (s) |",
        "|---|---|---|---|---|",
    ]
    for route in ROUTES:
        dice = np.array([row["dice"] for row in rows if row["route"] == route])
        assd = np.array([row["assd_mm"] for row in rows if row["route"] == route])
        times = np.array([row["time_s"] for row in rows if row["route"] == route])
        lines.append(
            f"| {route} | {dice.mean():.3f} +- {dice.std():.3f} | {(dice - plain).mean():+.3f} | "
            f"{assd.mean():.2f} +- {assd.std():.2f} | {times.mean():.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="held-out subjects")
    parser.add_argument("--out", type=Path, required=True, help="folder for cases.csv, table.md and the inputs")
    parser.add_argument("--segmentation-model", type=Path, default=None, help="default: the bundled one")
    arguments = parser.parse_args()
    config = SimulationConfig(preset="lite", geometry="orthogonal")
    rows = [
        row
        for index in range(arguments.n)
        for row in run_case(index, arguments.out / "inputs", config, arguments.segmentation_model)
    ]
    write_study(arguments.out, rows, table(rows, arguments.n))


if __name__ == "__main__":
    main()
