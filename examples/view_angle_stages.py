"""Where an oblique pair loses Dice: the network's affine stage, or its local stage.

``examples/view_angles.py`` scores ``register``'s result at view pairs away from AP / lateral.
This study runs the bundled network (or ``--model``) on the same held-out subjects (dataset seed
4949, whole-body scenes, the model's detector, true masks) at a subset of those pairs and scores
both of its outputs against the true labels: the atlas labels after the affine stage
(``affine_labels``) and after the local stage (``warped_labels``), each thresholded at 0.5 on the
atlas grid. The inputs are prepared as ``register`` prepares them
(:func:`biplanar.registration.inputs.read_inputs`); no test-time refinement.

Usage::

    python examples/view_angle_stages.py --n 5 --out runs/view_angle_stages

prints a Markdown table (per pair: mean Dice of each stage and its difference to the orthogonal
pair) and writes ``cases.csv`` and ``table.md``.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import numpy as np
import torch
from held_out_study import Registration, run_held_out_study
from view_angles import HELD_OUT_SEED, write_pair

from biplanar.data.atlas import FEMUR_LABEL
from biplanar.data.simulate import SimulationConfig, simulate_case, subject_seed
from biplanar.evaluation.metrics import dice
from biplanar.geometry.presets import VIEW_NAMES
from biplanar.registration.inputs import read_inputs
from biplanar.registration.pipeline import model_detector
from biplanar.training.checkpoints import bundled_model_path, load_model

# (AP, LAT) LAO/RAO in degrees: the orthogonal pair, near-orthogonal pairs turned either way, and
# both views turned 30 deg either way.
PAIRS_DEG = ((0, 90), (10, 100), (-10, 80), (15, 90), (-15, 90), (0, 105), (0, 75), (30, 120), (-30, 60))


def stage_dice(folder: Path, network, config, truth: np.ndarray) -> tuple[float, float]:
    """Dice of the affine and the local stage's labels for the pair written in ``folder``."""
    views = {name: folder / f"{name}.npy" for name in VIEW_NAMES}
    masks = {name: folder / f"{name}_mask.npy" for name in VIEW_NAMES}
    inputs = read_inputs(views, masks, folder / "geometry.json", model_detector(network, config), None)
    network_views, images = inputs.network_views(), inputs.network_inputs()
    radiographs = torch.stack([torch.from_numpy(images[name]) for name in VIEW_NAMES])[None]
    with torch.no_grad():
        output = network.eval()(radiographs, [(network_views["AP"], network_views["LAT"])])
    stages = (output.affine_labels, output.warped_labels)
    return tuple(dice(labels[0, 0].numpy() > 0.5, truth) for labels in stages)


@functools.cache
def loaded_model(path: Path | None):
    """The network and config of checkpoint ``path`` (``None``: the bundled one), loaded once."""
    return load_model(path or bundled_model_path(), "cpu")


def run_case(index: int, work: Path, config: SimulationConfig, registration: Registration) -> list[dict]:
    """Every pair of held-out case ``index``: one row each."""
    network, model_config = loaded_model(registration.model)
    case = simulate_case(subject_seed(HELD_OUT_SEED, index), config)
    truth = case.labels == FEMUR_LABEL
    rows = []
    for ap_angle, lat_angle in PAIRS_DEG:
        folder = work / f"case_{index:03d}_{ap_angle}_{lat_angle}"
        write_pair(case, config, ap_angle, lat_angle, folder)
        affine, local = stage_dice(folder, network, model_config, truth)
        shutil.rmtree(folder)
        pair = f"{ap_angle} / {lat_angle}"
        rows.append({"case": index, "pair": pair, "affine_dice": affine, "local_dice": local})
        print(f"case {index} {pair}: affine {affine:.3f}, local {local:.3f}", flush=True)
    return rows


def table(rows: list[dict], n: int) -> str:
    """The Markdown table: one line per pair."""

    def mean(pair: str, key: str) -> float:
        return float(np.mean([row[key] for row in rows if row["pair"] == pair]))

    lines = [
        f"| AP / LAT LAO-RAO (deg), {n} held-out subjects (seed {HELD_OUT_SEED}), true masks | affine stage Dice | "
        "minus orthogonal | local stage Dice | minus orthogonal |",
        "|---|---|---|---|---|",
    ]
    for ap_angle, lat_angle in PAIRS_DEG:
        pair = f"{ap_angle} / {lat_angle}"
        stages = ("affine_dice", "local_dice")
        cells = [f"{mean(pair, key):.3f} | {mean(pair, key) - mean('0 / 90', key):+.3f}" for key in stages]
        lines.append(f"| {pair} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    run_held_out_study(__doc__.splitlines()[0], 5, run_case, table)


if __name__ == "__main__":
    main()
