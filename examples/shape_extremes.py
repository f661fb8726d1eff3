"""The bundled model on shape-model femurs at the edges of the population: size and girth at +-3 sd.

A different population of real femurs (another shape model, another cohort) may be larger, smaller,
stouter or more slender than this project's. The simulator draws each mode weight ``N(0, 1)``
truncated at +-3 sd (:mod:`biplanar.data.femur_ssm`), so weights beyond 2.5 sd are about 1 % of what
the model was trained on. Each held-out subject (dataset seed 9090, the held-out table's, shape-model
femurs, orthogonal views, whole-body scene) is rendered as drawn and again with one mode weight set
to -3 or +3: mode 1 is mostly overall size (femur length 493 mm at -3 sd, 391 mm at +3 sd, the shape
model's README), mode 2 mostly girth (volume 704 cm^3 at -3 sd, 326 cm^3 at +3 sd). The views,
appearance and noise are the subject's own (:func:`~biplanar.data.simulate.simulate_case` with
``spec``). Every variant is registered by the bundled model with the true masks and without masks; the
table counts the registrations that ``register``'s quality block flagged.

``--family off-model`` renders each subject as drawn and with its femur moved off the shape model
by 1 and 2 mm root mean square along its normals, a smooth field no combination of the modes makes
(:func:`biplanar.data.femur_ssm.off_model_vertices`): a femur of another cohort lies about 1 mm
(0.25-1.8 mm) from this model's span, so 1 mm is a typical other femur and 2 mm one beyond the
farthest of the 26.

Usage::

    python examples/shape_extremes.py --n 10 --out runs/shape_extremes [--family edges|off-model] [--refine 50] \\
        [--model CHECKPOINT] [--segmentation-model CHECKPOINT] [--seed 2026]

(``--refine N``: every registration with ``N`` iterations of test-time optimisation, as
``biplanar register --refine N``; ``--model``, ``--segmentation-model``: other checkpoints than
the bundled ones; ``--seed``: another dataset seed, e.g. the validation seed 2026 for choosing a
setting, which the held-out seed must not see) prints a Markdown table (mean +- sd over the subjects) and writes
``cases.csv`` and ``table.md`` into ``--out`` (about 8 min for 10 subjects on this project's 2-core
CPU; 20 min with ``--refine 50``).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

import biplanar
from biplanar.data.clinical import write_view_files
from biplanar.data.phantom import SubjectSpec
from biplanar.data.simulate import SimulationConfig, case_subject, simulate_case, subject_seed
from biplanar.evaluation.evaluate import write_study
from biplanar.evaluation.hip import hip_errors
from biplanar.io.volumes import write_volume
from biplanar.registration.outputs import QUALITY_SUMMARY_KEYS

HELD_OUT_SEED = 9090  # the held-out table's dataset seed (examples/heldout_table.py)
CONFIG = SimulationConfig(preset="lite", geometry="orthogonal", shapes="ssm")
ROUTES = ("masks", "no masks")


def with_mode(mode: int, weight: float) -> Callable[[SubjectSpec, int], SubjectSpec]:
    """A variant: the subject's shape-model femur with mode ``mode`` (0-based) at ``weight`` sd."""

    def change(spec: SubjectSpec, seed: int) -> SubjectSpec:
        weights = list(spec.femur.mode_weights)
        weights[mode] = weight
        return dataclasses.replace(spec, femur=dataclasses.replace(spec.femur, mode_weights=tuple(weights)))

    return change


def off_model(rms_mm: float) -> Callable[[SubjectSpec, int], SubjectSpec]:
    """A variant: the subject's femur moved off the shape model by ``rms_mm`` (the subject's seed)."""

    def change(spec: SubjectSpec, seed: int) -> SubjectSpec:
        femur = dataclasses.replace(spec.femur, off_model_rms_mm=rms_mm, off_model_seed=seed)
        return dataclasses.replace(spec, femur=femur)

    return change


def as_drawn(spec: SubjectSpec, seed: int) -> SubjectSpec:
    """The variant that is the subject itself."""
    return spec


# family -> variant name -> (subject as drawn, its seed) -> the variant's subject
FAMILIES: dict[str, dict[str, Callable[[SubjectSpec, int], SubjectSpec]]] = {
    "edges": {
        "as drawn": as_drawn,
        "mode 1 = -3 sd (long)": with_mode(0, -3.0),
        "mode 1 = +3 sd (short)": with_mode(0, 3.0),
        "mode 2 = -3 sd (stout)": with_mode(1, -3.0),
        "mode 2 = +3 sd (slender)": with_mode(1, 3.0),
    },
    "off-model": {
        "as drawn": as_drawn,
        "off the model by 1 mm rms": off_model(1.0),
        "off the model by 2 mm rms": off_model(2.0),
    },
}


def run_subject(
    index: int,
    work: Path,
    variants: dict[str, Callable[[SubjectSpec, int], SubjectSpec]],
    refine: int | None,
    model: Path | None,
    segmentation: Path | None,
    dataset_seed: int,
) -> list[dict]:
    """Every variant of subject ``index`` of dataset ``dataset_seed``, registered both ways: one row each."""
    seed = subject_seed(dataset_seed, index)
    drawn = case_subject(seed, CONFIG)
    rows = []
    for number, (variant, change) in enumerate(variants.items()):
        spec = change(drawn, seed)
        case = simulate_case(seed, CONFIG, spec)
        folder = work / f"case_{index:03d}" / str(number)
        write_volume(folder / "labels.nii.gz", case.subject.labels, case.subject.grid)
        write_view_files(folder, case.views, case.radiographs, case.masks)
        head_diameter_mm = 2.0 * spec.femur.solid().head_radius_mm
        for route in ROUTES:
            masks = {"ap_mask": folder / "AP_mask.npy", "lat_mask": folder / "LAT_mask.npy"} if route == "masks" else {}
            report = biplanar.register(
                folder / "geometry.json",
                folder / "AP.npy",
                folder / "LAT.npy",
                folder / f"out_{route.replace(' ', '_')}",
                truth_labels=folder / "labels.nii.gz",
                model=model,
                segmentation_model=segmentation,
                refine=refine,
                progress=False,
                **masks,
            ).report
            row = {"case": index, "variant": variant, "route": route}
            row |= {key: report[key] for key in ("dice", "assd_mm", "hd95_mm")}
            row |= {key: report["quality"][key] for key in QUALITY_SUMMARY_KEYS}
            row |= hip_errors(report["hip"], case.record())
            row["head_diameter_mm"] = head_diameter_mm
            rows.append(row)
            print(f"case {index} {variant} {route}: Dice {report['dice']:.3f}", flush=True)
        shutil.rmtree(folder)
    return rows


def table(rows: list[dict], variants: list[str], n: int, dataset_seed: int) -> str:
    """Markdown: one row per variant; Dice, ASSD (mean +- sd) and the flagged count of each route."""
    head = " | ".join(
        f"Dice, {route} | ASSD (mm), {route} | head centre (mm), {route} | flagged, {route}" for route in ROUTES
    )
    population = "held-out" if dataset_seed == HELD_OUT_SEED else "validation"
    lines = [f"| {n} {population} SSM subjects (seed {dataset_seed}) | head diameter (mm) | {head} |"]
    lines.append("|---|---:" + "|---:" * 4 * len(ROUTES) + "|")
    for variant in variants:
        chosen = [row for row in rows if row["variant"] == variant]
        diameters = np.array([row["head_diameter_mm"] for row in chosen if row["route"] == ROUTES[0]])
        cells = [f"{diameters.mean():.1f} +- {diameters.std():.1f}"]
        for route in ROUTES:
            for key, style in (("dice", "{:.3f}"), ("assd_mm", "{:.2f}"), ("head_centre_error_mm", "{:.2f}")):
                values = np.array([row[key] for row in chosen if row["route"] == route])
                cells.append(f"{style.format(values.mean())} +- {style.format(values.std())}")
            flagged = [row["flag"] for row in chosen if row["route"] == route]
            cells.append(f"{sum(flagged)}/{len(flagged)}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="held-out subjects")
    parser.add_argument("--out", type=Path, required=True, help="folder for cases.csv and table.md")
    parser.add_argument("--refine", type=int, default=None, help="test-time iterations (default: register's choice)")
    parser.add_argument("--model", type=Path, default=None, help="registration checkpoint (default: the bundled one)")
    parser.add_argument("--segmentation-model", type=Path, default=None, help="default: the bundled one")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="dataset seed (default: the held-out one)")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="edges", help="which variants (module doc)")
    arguments = parser.parse_args()
    work = arguments.out / "work"
    variants = FAMILIES[arguments.family]
    rows = [
        row
        for index in range(arguments.n)
        for row in run_subject(
            index, work, variants, arguments.refine, arguments.model, arguments.segmentation_model, arguments.seed
        )
    ]
    shutil.rmtree(arguments.out / "work", ignore_errors=True)
    markdown = table(rows, list(variants), arguments.n, arguments.seed)
    write_study(arguments.out, rows, markdown)


if __name__ == "__main__":
    main()
