"""Which bundled network ``register`` picks for each kind of radiograph: the bone-in-air rule, measured.

``register`` without ``--model`` runs the bundled ``lite`` network, or ``lite_alone`` when both
radiographs show a bone in air (:mod:`biplanar.registration.bone_in_air`: the line integral just
outside the femur mask against the femur's own). This script simulates subjects of one dataset seed (default 2026,
validation subjects no training set used) in every scene (``body``: the patient; ``grid``: the CT box
alone; ``femur``: the femur's voxels alone in air), with a textured and a uniform femur, as line
integrals (arrays and the geometry file) and in clinical mode (the two DICOM files alone), reads
each the way ``register`` does (true masks, and masks from the bundled segmentation network) and
prints, per rendering and route, the range of the two views' surround levels and how many subjects
went to ``lite_alone``. Usage::

    python examples/bone_in_air.py --n 5 --seed 2026 --out runs/bone_in_air

Writes ``cases.csv`` and ``table.md`` into ``--out`` (about 10 s per subject and rendering on this
project's 2-core CPU).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from biplanar.data.simulate import SimulationConfig, simulate_case, subject_seed, write_case
from biplanar.evaluation.evaluate import write_study
from biplanar.geometry.presets import VIEW_NAMES
from biplanar.registration.bone_in_air import BONE_IN_AIR_MODEL, choose_bundled_model
from biplanar.registration.inputs import read_inputs
from biplanar.registration.pipeline import model_detector, segmenter
from biplanar.training.checkpoints import bundled_model_path, load_model

VALIDATION_SEED = 2026
SCENES = ("body", "grid", "femur")
MODES = ("line_integral", "clinical")


def renderings() -> dict[str, SimulationConfig]:
    """Rendering name -> its simulation config (lite preset, orthogonal views, mixed shapes)."""
    configs = {}
    for scene in SCENES:
        for uniform in (False, True):
            for mode in MODES:
                name = f"{scene}{', uniform femur' if uniform else ''}, {mode.replace('_', '-')}"
                configs[name] = SimulationConfig(geometry="orthogonal", scene=scene, uniform_femur=uniform, mode=mode)
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5, help="subjects per rendering")
    parser.add_argument("--seed", type=int, default=VALIDATION_SEED, help="dataset seed")
    parser.add_argument("--out", type=Path, required=True, help="folder for cases.csv and table.md")
    arguments = parser.parse_args()
    network, config = load_model(bundled_model_path(), "cpu")
    detector, segment_image = model_detector(network, config), segmenter(None, "cpu")
    work, rows = arguments.out / "work", []
    for rendering, simulation in renderings().items():
        for index in range(arguments.n):
            case = simulate_case(subject_seed(arguments.seed, index), simulation)
            folder = work / f"{len(rows):04d}"
            write_case(folder, case)
            clinical = simulation.mode == "clinical"
            images = {name: folder / f"{name}.{'dcm' if clinical else 'npy'}" for name in VIEW_NAMES}
            for route in ("masks", "segmented"):
                masks = {name: folder / f"{name}_mask.npy" if route == "masks" else None for name in VIEW_NAMES}
                geometry = None if clinical else folder / "geometry.json"
                inputs = read_inputs(images, masks, geometry, detector, segment_image)
                choice = choose_bundled_model(inputs.radiographs(), inputs.femur_masks())
                rows.append(
                    {"rendering": rendering, "route": route, "case": index, "model": choice["model"]}
                    | {f"surround_level_{name}": value for name, value in choice["surround_level"].items()}
                )
            print(f"{rendering} {index}: {rows[-2]['model']} / {rows[-1]['model']}", flush=True)
            shutil.rmtree(folder)
    shutil.rmtree(work, ignore_errors=True)
    write_study(arguments.out, rows, table(rows, arguments.n, arguments.seed))


def table(rows: list[dict], n: int, seed: int) -> str:
    """Markdown: per rendering and route, the surround levels' range over both views and the choice."""
    lines = [
        f"| {n} subjects (seed {seed}) | masks | surround level, min-max over AP and LAT | to {BONE_IN_AIR_MODEL} |",
        "|---|---|---:|---:|",
    ]
    for rendering in dict.fromkeys(row["rendering"] for row in rows):
        for route in ("masks", "segmented"):
            chosen = [row for row in rows if (row["rendering"], row["route"]) == (rendering, route)]
            levels = [row[f"surround_level_{name}"] for row in chosen for name in VIEW_NAMES]
            alone = sum(row["model"] == BONE_IN_AIR_MODEL for row in chosen)
            span = f"{min(levels):.2f}-{max(levels):.2f}"
            lines.append(f"| {rendering} | {route} | {span} | {alone}/{len(chosen)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
