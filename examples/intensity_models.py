"""Does the bundled model depend on this project's HU-to-attenuation curve? Held-out shape-model
femurs rendered with another renderer's curve.

An outside check renders its radiographs with its own projector, and a projector's first choice
is how CT numbers become attenuation. This script takes held-out shape-model cases (the seed of
``examples/heldout_table.py``, whole-body scenes, orthogonal views), renders their line integrals
from the same scene CT three ways, and registers each with the bundled model, with the true
masks and without masks (the bundled segmentation network):

- ``biplanar``: :func:`biplanar.physics.attenuation.hu_to_mu`, what the training data used;
- ``DiffDRR x1``, ``DiffDRR x2.5`` and ``DiffDRR x4``: DiffDRR's ``transform_hu_to_density`` (air
  set to the softest tissue, bone above 350 HU multiplied by ``bone_attenuation_multiplier``, then
  scaled to [0, 1]), with multipliers 1, 2.5 and 4.

It needs DiffDRR (``pip install --no-deps diffdrr==0.6.1`` plus the ``bench`` extra). For 10 cases
on a 2-core CPU about 5 min with ``--refine 0`` and 20 min with ``register``'s own refinements::

    python examples/intensity_models.py --n 10 --out runs/intensity_models [--model CKPT] [--scene femur]

``--scene femur`` renders each femur alone in air instead (the femur's voxels of the CT, as
``biplanar simulate --scene femur``), the CT an outside projector given only a femur would have.

``--model`` registers with another checkpoint than the bundled one; ``--refine N`` every registration
with ``N`` test-time iterations (``auto``, the default: ``register``'s own choice); ``--seed 2026``
the validation subjects, for choosing a setting, which the held-out seed must not see.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch
from held_out_study import refine_iterations

import biplanar
from biplanar.data.clinical import write_view_files
from biplanar.data.scene import render_scene
from biplanar.data.simulate import SimulationConfig, femur_alone_hu, simulate_case, subject_seed
from biplanar.evaluation.evaluate import write_study
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.io.volumes import write_volume
from biplanar.physics.drr import render_drr
from biplanar.registration.outputs import QUALITY_SUMMARY_KEYS

HELD_OUT_SEED = 9090  # examples/heldout_table.py's
DIFFDRR_MULTIPLIERS = {"DiffDRR x1": 1.0, "DiffDRR x2.5": 2.5, "DiffDRR x4": 4.0}
ROUTES = ("masks", "no masks")


def projected_ct(case) -> tuple[np.ndarray, VolumeGrid]:
    """The HU the case's radiographs project and their grid: the whole-body scene, or for the
    ``femur`` scene the femur's voxels alone, in air, on the atlas grid."""
    if case.scene is not None:
        rendered = render_scene(case.subject.spec, case.grid, case.views)
        return rendered.ct_hu, rendered.scene.grid
    return femur_alone_hu(case.ct_hu, case.labels), case.grid


def diffdrr_line_integrals(case, multiplier: float) -> dict[str, np.ndarray]:
    """Line integrals of what the case projects (:func:`projected_ct`) through DiffDRR's HU-to-density curve."""
    from diffdrr.data import transform_hu_to_density

    (ct_hu, grid), views = projected_ct(case), case.views
    hu = torch.from_numpy(np.asarray(ct_hu, dtype=np.float32))[None, None]
    density = transform_hu_to_density(hu.clone(), multiplier)
    with torch.no_grad():
        return {name: render_drr(density, view, grid, "line_integral")[0, 0].numpy() for name, view in views.items()}


def run_case(
    index: int, work: Path, model: Path | None, scene: str, refine: int | None, dataset_seed: int
) -> list[dict]:
    """Every rendering and route of case ``index`` of dataset ``dataset_seed`` in ``scene`` (``body`` or
    ``femur``), registered by ``model`` (default: the bundled one) with ``refine`` (``None``:
    ``register``'s own choice): one row each (Dice, ASSD, the quality block's summary)."""
    config = SimulationConfig(preset="lite", geometry="orthogonal", shapes="ssm", scene=scene)
    case = simulate_case(subject_seed(dataset_seed, index), config)
    folder = work / f"case_{index:03d}"
    write_volume(folder / "labels.nii.gz", case.labels, case.grid)
    renderings = {"biplanar": case.radiographs}
    renderings.update({name: diffdrr_line_integrals(case, value) for name, value in DIFFDRR_MULTIPLIERS.items()})
    rows = []
    for rendering, radiographs in renderings.items():
        inputs = folder / rendering.replace(" ", "_")
        write_view_files(inputs, case.views, radiographs, case.masks)
        for route in ROUTES:
            masks = {"ap_mask": inputs / "AP_mask.npy", "lat_mask": inputs / "LAT_mask.npy"} if route == "masks" else {}
            report = biplanar.register(
                geometry=inputs / "geometry.json",
                ap=inputs / "AP.npy",
                lat=inputs / "LAT.npy",
                out=folder / "out" / f"{inputs.name}_{route.replace(' ', '_')}",
                truth_labels=folder / "labels.nii.gz",
                model=model,
                refine=refine,
                progress=False,
                **masks,
            ).report
            scores = {key: report[key] for key in ("dice", "assd_mm")}
            scores |= {key: report["quality"][key] for key in QUALITY_SUMMARY_KEYS}
            scores["refined"] = report["inputs"]["refine"]["iterations"]
            rows.append({"case": index, "rendering": rendering, "route": route, **scores})
            print(f"case {index} {rendering}, {route}: Dice {report['dice']:.3f}", flush=True)
    shutil.rmtree(folder / "out")
    return rows


def table(rows: list[dict], n: int, dataset_seed: int) -> str:
    """Markdown: one row per rendering and route, mean +- sd of Dice and ASSD, and how many were refined."""
    population = "held-out" if dataset_seed == HELD_OUT_SEED else "validation"
    header = f"| {n} {population} SSM cases (seed {dataset_seed}) | route | Dice | ASSD (mm) | refined |"
    lines = [header, "|---|---|---|---|---:|"]
    for rendering in dict.fromkeys(row["rendering"] for row in rows):
        for route in ROUTES:
            chosen = [row for row in rows if row["rendering"] == rendering and row["route"] == route]
            dice, assd = (np.array([row[key] for row in chosen]) for key in ("dice", "assd_mm"))
            refined = sum(row["refined"] > 0 for row in chosen)
            cells = f"{dice.mean():.3f} +- {dice.std():.3f} | {assd.mean():.2f} +- {assd.std():.2f}"
            cells += f" | {refined}/{len(chosen)}"
            lines.append(f"| {rendering} | {route} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="held-out cases")
    parser.add_argument("--out", type=Path, required=True, help="folder for cases.csv, table.md and the inputs")
    parser.add_argument("--model", type=Path, help="registration checkpoint (default: the bundled model)")
    parser.add_argument("--scene", choices=("body", "femur"), default="body", help="femur: the femur alone in air")
    parser.add_argument(
        "--refine", type=refine_iterations, default=None, help="test-time iterations or auto (default: auto)"
    )
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="dataset seed (2026: validation subjects)")
    arguments = parser.parse_args()
    work = arguments.out / "inputs"
    rows = [
        row
        for index in range(arguments.n)
        for row in run_case(index, work, arguments.model, arguments.scene, arguments.refine, arguments.seed)
    ]
    write_study(arguments.out, rows, table(rows, arguments.n, arguments.seed))


if __name__ == "__main__":
    main()
