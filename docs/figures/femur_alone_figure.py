"""Draw one subject's AP and LAT radiographs rendered four ways (docs/img/femur_alone.png).

``biplanar simulate --scene femur`` renders the femur's voxels alone, in air; ``--uniform-femur``
gives the femur one CT number (docs/data.md, "Femurs as an outside projector renders them"). Each
column is one rendering of the same subject and views; top row AP, bottom row LAT; each image is
radiograph x true mask divided by its maximum, what the registration network is fed with masks
(:func:`biplanar.models.network.normalise_radiographs`), on one 0 to 1 scale.

The case is subject ``--index`` of a dataset of seed ``--seed`` (``--shapes ssm``, ``lite``,
orthogonal views, line integrals). Usage::

    python docs/figures/femur_alone_figure.py --out docs/img/femur_alone.png [--seed 9090] [--index 0]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from biplanar.data.simulate import SimulationConfig, simulate_case, subject_seed
from biplanar.geometry.presets import VIEW_NAMES

CONFIG = SimulationConfig(preset="lite", geometry="orthogonal", shapes="ssm")
RENDERINGS = {  # examples/femur_alone.py's
    "whole body": {},
    "whole body, uniform femur": {"uniform_femur": True},
    "femur alone": {"scene": "femur"},
    "femur alone, uniform": {"scene": "femur", "uniform_femur": True},
}


def masked_radiographs(seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Rendering -> view name -> ``(rows, cols)`` radiograph x true mask divided by its maximum."""
    images = {}
    for rendering, changes in RENDERINGS.items():
        case = simulate_case(seed, dataclasses.replace(CONFIG, **changes))
        masked = {name: case.radiographs[name] * case.masks[name] for name in VIEW_NAMES}
        images[rendering] = {name: image / image.max() for name, image in masked.items()}
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--seed", type=int, default=9090, help="dataset seed (default: the held-out tables')")
    parser.add_argument("--index", type=int, default=0, help="subject index in that dataset")
    args = parser.parse_args()
    images = masked_radiographs(subject_seed(args.seed, args.index))
    figure, axes = plt.subplots(len(VIEW_NAMES), len(RENDERINGS), figsize=(2.6 * len(RENDERINGS), 7.0))
    for column, (rendering, views) in enumerate(images.items()):
        for row, name in enumerate(VIEW_NAMES):
            axes[row, column].imshow(views[name], cmap="gray", vmin=0.0, vmax=1.0)
            axes[row, column].set_title(f"{rendering}\n{name}" if row == 0 else name, fontsize=9)
            axes[row, column].axis("off")
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
