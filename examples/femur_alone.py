"""Registration models on radiographs of a femur rendered the way an outside projector might: alone in
air, or as a voxelised mesh of one density.

A projector given a femur drawn from another shape model has only its surface: the simplest CT it
can make is the voxelised femur, of one density, in air. This script renders held-out shape-model
subjects (the held-out table's dataset seed 9090, orthogonal views, line integrals) four ways
(:class:`~biplanar.data.simulate.SimulationConfig`'s ``scene`` and ``uniform_femur``):

- ``whole body``: the patient around the grid, as ``biplanar simulate`` makes by default;
- ``whole body, uniform femur``: the same with the femur at one CT number (300-1500 HU per subject);
- ``femur alone``: only the femur's voxels of the CT, in air (no soft tissue, no pelvis);
- ``femur alone, uniform``: the voxelised femur of one density in air;

and registers each by every model given, with the true masks and without masks (the model's
segmentation network). Two more renderings, only when named in ``--renderings``: ``femur alone,
clinical`` and ``femur alone, uniform, clinical``, the same femurs in ``--mode clinical`` (a clinic's
processed image), registered from their two DICOM files alone (route ``DICOM only``). Per
registration: Dice, ASSD, the head centre's error and whether ``register``'s quality block flagged
it. Usage::

    python examples/femur_alone.py --n 10 --model v11=src/biplanar/resources/models/lite/model.pt \\
        --model new=runs/lite_s12/best.pt,runs/seg_s12/model.pt --out runs/femur_alone

(``NAME=CHECKPOINT[,SEGMENTATION_CHECKPOINT]`` as in ``examples/heldout_table.py``; ``bundled`` for
``register``'s own choice of network; ``--seed 2026`` for validation subjects; ``--renderings`` a
subset, e.g. ``"femur alone" "femur alone, uniform"``) prints a Markdown
table (mean +- sd over the subjects) and writes ``cases.csv`` and ``table.md`` into ``--out``
(about 1 min per subject and model on this project's 2-core CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

import numpy as np
from heldout_table import add_model_option, named_models

import biplanar
from biplanar.data.simulate import SimulationConfig, simulate_case, subject_seed, write_case
from biplanar.evaluation.evaluate import write_study
from biplanar.evaluation.hip import hip_errors
from biplanar.registration.outputs import QUALITY_SUMMARY_KEYS

HELD_OUT_SEED = 9090  # examples/heldout_table.py's
CONFIG = SimulationConfig(preset="lite", geometry="orthogonal", shapes="ssm")
RENDERINGS = {
    "whole body": {},
    "whole body, uniform femur": {"uniform_femur": True},
    "femur alone": {"scene": "femur"},
    "femur alone, uniform": {"scene": "femur", "uniform_femur": True},
    "femur alone, clinical": {"scene": "femur", "mode": "clinical"},
    "femur alone, uniform, clinical": {"scene": "femur", "uniform_femur": True, "mode": "clinical"},
}
DEFAULT_RENDERINGS = list(RENDERINGS)[:4]  # line integrals
ROUTES = ("masks", "no masks")
CLINICAL_ROUTES = ("DICOM only",)


def register_arguments(folder: Path, route: str) -> dict:
    """``biplanar.register``'s inputs of one route: arrays with the geometry file (true masks or
    none), or the two DICOM files alone."""
    if route == "DICOM only":
        return {"geometry": None, "ap": folder / "AP.dcm", "lat": folder / "LAT.dcm"}
    arrays = {"geometry": folder / "geometry.json", "ap": folder / "AP.npy", "lat": folder / "LAT.npy"}
    masks = {"ap_mask": folder / "AP_mask.npy", "lat_mask": folder / "LAT_mask.npy"} if route == "masks" else {}
    return arrays | masks


def run_subject(
    index: int, work: Path, models: dict[str, tuple[Path | None, Path | None]], renderings: list[str], dataset_seed: int
) -> list[dict]:
    """Every rendering (of ``renderings``), route and model of subject ``index`` of ``dataset_seed``: one row each."""
    seed = subject_seed(dataset_seed, index)
    rows = []
    for rendering in renderings:
        changes = RENDERINGS[rendering]
        config = dataclasses.replace(CONFIG, **changes)
        case = simulate_case(seed, config)
        folder = work / f"case_{index:03d}" / str(list(RENDERINGS).index(rendering))
        write_case(folder, case)  # the labels, the arrays, their masks and geometry, and a clinical case's DICOMs
        subject = case.record()  # subject.json's document: the hip truth
        routes = CLINICAL_ROUTES if config.mode == "clinical" else ROUTES
        for route_index, route in enumerate(routes):
            for name, (model, segmentation) in models.items():
                report = biplanar.register(
                    **register_arguments(folder, route),
                    out=folder / f"out_{route_index}_{name}",
                    truth_labels=folder / "labels.nii.gz",
                    model=model,
                    segmentation_model=segmentation,
                    progress=False,
                ).report
                row = {"case": index, "rendering": rendering, "route": route, "model": name}
                row |= {key: report[key] for key in ("dice", "assd_mm", "hd95_mm")}
                row["head_centre_error_mm"] = hip_errors(report["hip"], subject)["head_centre_error_mm"]
                row |= {key: report["quality"][key] for key in QUALITY_SUMMARY_KEYS}
                rows.append(row)
                print(f"case {index} {rendering} {route} {name}: Dice {report['dice']:.3f}", flush=True)
        shutil.rmtree(folder)
    return rows


def table(rows: list[dict], n: int, dataset_seed: int) -> str:
    """Markdown: one row per rendering, route and model; Dice, ASSD, head centre (mean +- sd), flagged."""
    lines = [
        f"| {n} SSM subjects (seed {dataset_seed}) | route | model | Dice | ASSD (mm) | head centre (mm) | flagged |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for rendering in dict.fromkeys(row["rendering"] for row in rows):
        for route in dict.fromkeys(row["route"] for row in rows if row["rendering"] == rendering):
            for model in dict.fromkeys(row["model"] for row in rows):
                chosen = [r for r in rows if (r["rendering"], r["route"], r["model"]) == (rendering, route, model)]
                cells = []
                for key, style in (("dice", "{:.3f}"), ("assd_mm", "{:.2f}"), ("head_centre_error_mm", "{:.2f}")):
                    values = np.array([row[key] for row in chosen])
                    cells.append(f"{style.format(values.mean())} +- {style.format(values.std())}")
                cells.append(f"{sum(row['flag'] for row in chosen)}/{len(chosen)}")
                lines.append(f"| {rendering} | {route} | {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="held-out subjects")
    add_model_option(parser)
    parser.add_argument("--out", type=Path, required=True, help="folder for cases.csv and table.md")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="dataset seed (2026: validation subjects)")
    parser.add_argument("--renderings", nargs="+", choices=list(RENDERINGS), default=DEFAULT_RENDERINGS)
    arguments = parser.parse_args()
    models = named_models(arguments.model)
    work = arguments.out / "work"
    rows = [
        row
        for index in range(arguments.n)
        for row in run_subject(index, work, models, arguments.renderings, arguments.seed)
    ]
    shutil.rmtree(work, ignore_errors=True)
    write_study(arguments.out, rows, table(rows, arguments.n, arguments.seed))


if __name__ == "__main__":
    main()
