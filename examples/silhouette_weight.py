"""Choose the weight of the refinement's silhouette term on validation subjects.

``register --refine`` (and ``register`` by itself on a flagged result) refines the network's
transform by test-time optimisation; its objective's silhouette term
(:data:`biplanar.optimisation.intensity_registration.SILHOUETTE_WEIGHT`) fits the registered
femur's outline to the femur masks. This script renders validation shape-model subjects (dataset
seed 2026, not the held-out seed 9090 of ``examples/heldout_table.py`` and
``examples/femur_alone.py``) three ways (``examples/femur_alone.py``'s renderings: whole body,
femur alone in air, uniform femur alone), registers each with the bundled model and ``--refine 50``
at every weight given, with the true masks (or ``--no-masks``: the bundled segmentation network's),
and prints the mean Dice per weight and rendering. ``--iterations`` and ``--[no-]tissue-fit``
(:data:`~biplanar.optimisation.intensity_registration.TISSUE_FIT`, on by default as in ``register``)
try the refinement's other settings. Usage::

    python examples/silhouette_weight.py --n 4 --weights 0 3 10 30 100 --out runs/silhouette_weight \\
        [--iterations 50] [--no-tissue-fit]

(about 20 s per subject, rendering and weight on this project's 2-core CPU); writes ``cases.csv``
and ``table.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

import numpy as np
from femur_alone import CONFIG, RENDERINGS

import biplanar
from biplanar.data.clinical import write_view_files
from biplanar.data.simulate import simulate_case, subject_seed
from biplanar.evaluation.evaluate import write_study
from biplanar.io.volumes import write_volume
from biplanar.optimisation import intensity_registration

VALIDATION_SEED = 2026
STUDIED = ("whole body", "femur alone", "femur alone, uniform")
ITERATIONS = 50  # register's FLAGGED_REFINE_ITERATIONS; --iterations tries others


def run_subject(
    index: int, work: Path, weights: list[float], masks: bool, iterations: int, tissue_fit: bool
) -> list[dict]:
    """Every studied rendering and weight of validation subject ``index``: one row each."""
    rows = []
    for rendering in STUDIED:
        case = simulate_case(subject_seed(VALIDATION_SEED, index), dataclasses.replace(CONFIG, **RENDERINGS[rendering]))
        folder = work / f"case_{index:03d}_{STUDIED.index(rendering)}"
        write_volume(folder / "labels.nii.gz", case.labels, case.grid)
        write_view_files(folder, case.views, case.radiographs, case.masks)
        mask_files = {"ap_mask": folder / "AP_mask.npy", "lat_mask": folder / "LAT_mask.npy"} if masks else {}
        for weight in weights:
            intensity_registration.SILHOUETTE_WEIGHT = weight  # what register --refine reads
            intensity_registration.TISSUE_FIT = tissue_fit
            report = biplanar.register(
                folder / "geometry.json",
                folder / "AP.npy",
                folder / "LAT.npy",
                folder / f"out_{weight:g}",
                truth_labels=folder / "labels.nii.gz",
                refine=iterations,
                progress=False,
                **mask_files,
            ).report
            rows.append({"case": index, "rendering": rendering, "weight": weight, "dice": report["dice"]})
            print(f"case {index} {rendering} weight {weight:g}: Dice {report['dice']:.3f}", flush=True)
        shutil.rmtree(folder)
    return rows


def table(rows: list[dict], n: int, masks: bool, iterations: int, tissue_fit: bool) -> str:
    """Markdown: one row per weight, mean Dice per rendering."""
    lines = [
        f"| silhouette weight ({n} validation subjects, seed {VALIDATION_SEED}, {'true' if masks else 'segmented'} "
        f"masks, --refine {iterations}{', tissue fit' if tissue_fit else ''}) | " + " | ".join(STUDIED) + " |",
        "|---:|" + "---:|" * len(STUDIED),
    ]
    for weight in dict.fromkeys(row["weight"] for row in rows):
        chosen = [row for row in rows if row["weight"] == weight]
        means = [np.mean([row["dice"] for row in chosen if row["rendering"] == name]) for name in STUDIED]
        lines.append(f"| {weight:g} | " + " | ".join(f"{value:.3f}" for value in means) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4, help="validation subjects")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 3.0, 10.0, 30.0, 100.0])
    parser.add_argument("--no-masks", action="store_true", help="segment the masks instead of the true ones")
    parser.add_argument("--out", type=Path, required=True, help="folder for cases.csv and table.md")
    parser.add_argument("--iterations", type=int, default=ITERATIONS, help="refinement iterations")
    parser.add_argument(
        "--tissue-fit",
        action=argparse.BooleanOptionalAction,
        default=intensity_registration.TISSUE_FIT,
        help="fit femur + rest DRRs (tissue_fit_ncc; default: register's)",
    )
    arguments = parser.parse_args()
    work = arguments.out / "work"
    masks = not arguments.no_masks
    rows = [
        row
        for index in range(arguments.n)
        for row in run_subject(index, work, arguments.weights, masks, arguments.iterations, arguments.tissue_fit)
    ]
    shutil.rmtree(work, ignore_errors=True)
    write_study(arguments.out, rows, table(rows, arguments.n, masks, arguments.iterations, arguments.tissue_fit))


if __name__ == "__main__":
    main()
