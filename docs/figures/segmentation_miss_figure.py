"""Draw where the bundled segmentation network misreads a stout femur (docs/img/segmentation_miss.png).

The shape-extremes study (``examples/shape_extremes.py``) renders held-out subject ``--index`` of
seed 9090 with a shape-model mode weight set (default: mode 2 at -3 sd, a stout femur). Without
masks its registration fails (Dice 0.645) because the bundled segmentation network's masks are
wrong. This figure shows both line-integral radiographs with the network's mask against the true
one: green, femur the network missed; red, what it marked that is not this femur. The title gives
each view's 2-D Dice. Usage::

    python docs/figures/segmentation_miss_figure.py --out docs/img/segmentation_miss.png \\
        [--index 4] [--mode 2] [--sd -3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from biplanar.data.simulate import case_subject, simulate_case, subject_seed
from biplanar.geometry.presets import VIEW_NAMES
from biplanar.models.segmentation import mask_dice, segment
from biplanar.training.segmentation_model import load_segmentation_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import shape_extremes  # the study's subjects and variants

MISSED, EXTRA = (0.1, 0.85, 0.1), (0.9, 0.1, 0.1)


def overlay(image: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """``(rows, cols, 3)`` RGB: the radiograph in grey, missed femur green, extra mask red."""
    grey = (image - image.min()) / max(float(np.ptp(image)), 1e-6)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgb[truth & ~predicted] = MISSED
    rgb[predicted & ~truth] = EXTRA
    return rgb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--index", type=int, default=4, help="held-out subject of seed 9090")
    parser.add_argument("--mode", type=int, default=2, help="shape-model mode, from 1")
    parser.add_argument("--sd", type=float, default=-3.0, help="its weight, standard deviations")
    arguments = parser.parse_args()
    seed = subject_seed(shape_extremes.HELD_OUT_SEED, arguments.index)
    spec = shape_extremes.variant_spec(case_subject(seed, shape_extremes.CONFIG), (arguments.mode - 1, arguments.sd))
    case = simulate_case(seed, shape_extremes.CONFIG, spec)
    network = load_segmentation_model(None, "cpu")[0]
    figure, axes = plt.subplots(1, 2, figsize=(7.5, 5.2))
    for axis, view in zip(axes, VIEW_NAMES):
        truth, predicted = case.masks[view] > 0, segment(network, case.radiographs[view])
        dice = float(mask_dice(predicted[None], truth[None])[0])
        axis.imshow(overlay(case.radiographs[view], truth, predicted), interpolation="nearest")
        axis.set_title(f"{view}: 2-D Dice {dice:.2f}")
        axis.axis("off")
    figure.suptitle(
        f"held-out subject {arguments.index} (seed {shape_extremes.HELD_OUT_SEED}), mode {arguments.mode} at "
        f"{arguments.sd:+g} sd: green missed, red marked but not this femur",
        fontsize=9,
    )
    figure.tight_layout()
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(arguments.out, dpi=110)
    print(f"wrote {arguments.out}")


if __name__ == "__main__":
    main()
