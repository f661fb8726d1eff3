"""Held-out accuracy of registration models on phantom and shape-model femurs (issue 16's table).

Each held-out case (a dataset seed no training set used, default 9090) is simulated once per
population and registered through the public API (:func:`biplanar.register`, what
``biplanar register`` calls) by every model given, four ways:

- ``phantom, masks``: a parametric phantom femur; line integrals, geometry file, true masks;
- ``SSM, masks``: a femur drawn from the real-subject shape model (``--shapes ssm``), same route;
- ``SSM, no masks``: the same radiographs without masks (the bundled segmentation network);
- ``SSM clinical, DICOM only``: the same subject rendered in ``--mode clinical`` (a clinic's
  processed image, MONOCHROME1 or 2), two DICOM files with the geometry in their tags, no masks.

Per case: Dice, ASSD, HD95 against the true labels, and the errors of the hip measurements
carried from the atlas (head centre, neck-shaft angle, anteversion) against the femur's own
(:func:`biplanar.evaluation.hip.hip_errors`); ``cases.csv`` also holds the head centre's signed
error along world x, y, z (measured - true, mm) and the signed anteversion error (deg). Usage::

    python examples/heldout_table.py --n 30 --model old=src/biplanar/resources/models/lite/model.pt \\
        --model new=runs/lite_ssm_finetune/best.pt,runs/seg/model.pt --out runs/heldout_table

(``NAME=CHECKPOINT[,SEGMENTATION_CHECKPOINT]``: the segmentation network of the no-mask routes,
default the bundled one; ``--refine N``: every registration with ``N`` iterations of test-time
optimisation, as ``biplanar register --refine N``; ``--refine auto``: ``register``'s own choice,
as without ``--refine``; ``--seed 2026``: the validation subjects, for choosing a setting, which
the held-out seed must not see)

prints a Markdown table (mean +- sd; angles as mean absolute error) and writes ``cases.csv`` and
``table.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from held_out_study import refine_iterations

import biplanar
from biplanar.data.clinical import write_view_files
from biplanar.data.simulate import SimulationConfig, simulate_case, subject_seed, write_case
from biplanar.evaluation.evaluate import write_study
from biplanar.evaluation.hip import hip_errors, subject_hip_truth
from biplanar.io.volumes import write_volume
from biplanar.registration.outputs import QUALITY_SUMMARY_KEYS

HELD_OUT_SEED = 9090  # a dataset seed no training set used
ROUTES = ("phantom, masks", "SSM, masks", "SSM, no masks", "SSM clinical, DICOM only")
COLUMNS = (
    ("dice", "Dice", "{:.3f}"),
    ("assd_mm", "ASSD (mm)", "{:.2f}"),
    ("hd95_mm", "HD95 (mm)", "{:.2f}"),
    ("head_centre_error_mm", "head centre (mm)", "{:.2f}"),
    ("neck_shaft_angle_abs_error_deg", "NSA abs. error (deg)", "{:.1f}"),
    ("anteversion_abs_error_deg", "anteversion abs. error (deg)", "{:.1f}"),
)


def prepare_case(index: int, work: Path, dataset_seed: int) -> tuple[Path, dict[str, dict]]:
    """Write case ``index`` of dataset ``dataset_seed``; returns its folder and each route's register arguments."""
    folder = work / f"case_{index:03d}"
    seed = subject_seed(dataset_seed, index)
    routes = {}
    for shapes in ("phantom", "ssm"):
        case = simulate_case(seed, SimulationConfig(preset="lite", geometry="orthogonal", shapes=shapes))
        write_volume(folder / shapes / "labels.nii.gz", case.labels, case.grid)
        write_view_files(folder / shapes, case.views, case.radiographs, case.masks)
        (folder / shapes / "subject.json").write_text(json.dumps(case.record()))
        arrays = {"geometry": folder / shapes / "geometry.json", "ap": folder / shapes / "AP.npy"}
        arrays["lat"] = folder / shapes / "LAT.npy"
        masks = {"ap_mask": folder / shapes / "AP_mask.npy", "lat_mask": folder / shapes / "LAT_mask.npy"}
        routes[f"{'phantom' if shapes == 'phantom' else 'SSM'}, masks"] = {**arrays, **masks}
    routes["SSM, no masks"] = {**arrays}
    clinical = simulate_case(
        seed, SimulationConfig(preset="lite", geometry="orthogonal", shapes="ssm", mode="clinical")
    )
    write_case(folder / "clinical", clinical)
    dicoms = {"geometry": None, "ap": folder / "clinical" / "AP.dcm", "lat": folder / "clinical" / "LAT.dcm"}
    routes["SSM clinical, DICOM only"] = dicoms
    return folder, routes


def run_case(
    index: int,
    work: Path,
    models: dict[str, tuple[Path | None, Path | None]],
    refine: int | None,
    dataset_seed: int = HELD_OUT_SEED,
) -> list[dict]:
    """Every model on every route of case ``index`` of dataset ``dataset_seed``: one row each."""
    folder, routes = prepare_case(index, work, dataset_seed)
    rows = []
    for route, inputs in routes.items():
        population = folder / ("phantom" if route.startswith("phantom") else "ssm")
        subject = json.loads((population / "subject.json").read_text())
        for name, (model, segmentation) in models.items():
            out = folder / "out" / f"{name}_{ROUTES.index(route)}"
            report = biplanar.register(
                out=out,
                truth_labels=population / "labels.nii.gz",
                model=model,
                segmentation_model=segmentation,
                refine=refine,
                progress=False,
                **inputs,
            ).report
            errors = hip_errors(report["hip"], subject)
            offset = np.subtract(report["hip"]["head_centre_mm"], subject_hip_truth(subject)["head_centre_mm"])
            rows.append(
                {
                    "case": index,
                    "route": route,
                    "model": name,
                    **{key: report[key] for key in ("dice", "assd_mm", "hd95_mm")},
                    "head_centre_error_mm": errors["head_centre_error_mm"],
                    **{f"head_centre_error_{axis}_mm": float(value) for axis, value in zip("xyz", offset)},
                    "neck_shaft_angle_abs_error_deg": abs(errors["neck_shaft_angle_error_deg"]),
                    "anteversion_abs_error_deg": abs(errors["anteversion_error_deg"]),
                    "anteversion_error_deg": errors["anteversion_error_deg"],
                    **{key: report["quality"][key] for key in QUALITY_SUMMARY_KEYS},
                }
            )
            print(f"case {index} {route} {name}: Dice {report['dice']:.3f}", flush=True)
    shutil.rmtree(folder / "out")
    return rows


def table(rows: list[dict], n: int, dataset_seed: int = HELD_OUT_SEED) -> str:
    """Markdown: one row per route and model, mean +- sd of each column."""
    header = " | ".join(label for _, label, _ in COLUMNS)
    population = "held-out" if dataset_seed == HELD_OUT_SEED else "validation"
    lines = [f"| {n} {population} cases (seed {dataset_seed}) | model | {header} |", "|---" * (len(COLUMNS) + 2) + "|"]
    for route in ROUTES:
        for model in dict.fromkeys(row["model"] for row in rows):
            chosen = [row for row in rows if row["route"] == route and row["model"] == model]
            cells = []
            for key, _, style in COLUMNS:
                values = np.array([row[key] for row in chosen])
                cells.append(f"{style.format(values.mean())} +- {style.format(values.std())}")
            lines.append(f"| {route} | {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def model_paths(text: str) -> tuple[Path | None, Path | None]:
    """``CHECKPOINT[,SEGMENTATION_CHECKPOINT]`` -> the two paths (``None``: the bundled segmentation).

    ``bundled`` as ``CHECKPOINT``: ``register``'s own choice of bundled network (``None``; ``lite``, or
    ``lite_alone`` for a bone in air, :mod:`biplanar.registration.bone_in_air`).
    """
    model, _, segmentation = text.partition(",")
    return None if model == "bundled" else Path(model), Path(segmentation) if segmentation else None


def add_model_option(parser: argparse.ArgumentParser) -> None:
    """The repeatable ``--model NAME=CHECKPOINT[,SEGMENTATION_CHECKPOINT]`` (read with :func:`named_models`)."""
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        help="NAME=CHECKPOINT[,SEGMENTATION_CHECKPOINT], repeatable (CHECKPOINT bundled: register's own choice)",
    )


def named_models(items: list[str]) -> dict[str, tuple[Path | None, Path | None]]:
    """``--model`` values -> name -> (checkpoint, segmentation checkpoint or ``None``)."""
    return {name: model_paths(paths) for name, paths in (item.split("=", 1) for item in items)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="held-out cases")
    add_model_option(parser)
    parser.add_argument("--out", type=Path, required=True, help="folder for cases.csv, table.md and the inputs")
    parser.add_argument(
        "--refine",
        type=refine_iterations,
        default=0,
        help="test-time optimisation iterations, or auto: register's own choice (default none)",
    )
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="dataset seed (2026: validation subjects)")
    arguments = parser.parse_args()
    models = named_models(arguments.model)
    work = arguments.out / "inputs"
    rows = [
        row for index in range(arguments.n) for row in run_case(index, work, models, arguments.refine, arguments.seed)
    ]
    write_study(arguments.out, rows, table(rows, arguments.n, arguments.seed))


if __name__ == "__main__":
    main()
