"""Draw a subject's scene (docs/img/scene.png): the body around the registration grid, and its
radiographs with and without it.

Top: a coronal and an axial slice of the scene (``simulate --scene body``, the default) through
the right femoral head centre, the registration grid's box in red. Bottom: the AP and LAT line
integrals of the same case projected from the registration grid alone (``--scene grid``, soft
tissue ending at the box) and from the scene.

Everything comes from :mod:`biplanar.data.simulate` and :mod:`biplanar.data.scene`; the case is
subject ``--index`` of a dataset of seed ``--seed`` (case seed ``subject_seed(seed, index)``).

Display: slices seen from the front (coronal: patient's right on the left, superior up) and from
below (axial: patient's right on the left, anterior up), window -1000 to 1600 HU. Radiographs as
stored (row 0 at the top; AP columns from the patient's right to left, LAT from anterior to
posterior), each windowed to its own 0.5th to 99.9th percentile.

Usage::

    python docs/figures/scene_figure.py --out docs/img/scene.png [--preset lite] [--seed 0] [--index 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from biplanar.data.grid_presets import grid_preset
from biplanar.data.phantom import SubjectSpec
from biplanar.data.scene import render_scene
from biplanar.data.simulate import SimulationConfig, case_femur_shape, case_views, simulate_case, subject_seed

CT_WINDOW_HU = (-1000.0, 1600.0)
RADIOGRAPH_PERCENTILES = (0.5, 99.9)
BOX_COLOUR = "red"


def draw_slice(axis: plt.Axes, image: np.ndarray, extent: np.ndarray, box: np.ndarray, labels: tuple[str, str]) -> None:
    """``image`` ``(first, second)`` world axes, drawn with the first horizontal (flipped: +x on the
    viewer's left) and the second up; ``extent`` and ``box`` ``(2, 2)`` = (low, high) x (first, second), mm."""
    # (first, second) transposed to (second, first) rows for imshow with origin "lower".
    axis.imshow(
        image.T,
        origin="lower",
        cmap="gray",
        vmin=CT_WINDOW_HU[0],
        vmax=CT_WINDOW_HU[1],
        extent=(extent[0, 0], extent[1, 0], extent[0, 1], extent[1, 1]),
    )
    size = box[1] - box[0]
    axis.add_patch(Rectangle(tuple(box[0]), size[0], size[1], fill=False, edgecolor=BOX_COLOUR, linewidth=1.0))
    axis.invert_xaxis()  # +x (patient's right) on the viewer's left
    axis.set_xlabel(labels[0])
    axis.set_ylabel(labels[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img/scene.png"))
    parser.add_argument("--preset", default="lite", help="grid and detector preset")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument("--index", type=int, default=0, help="subject index in the dataset")
    args = parser.parse_args()
    seed = subject_seed(args.seed, args.index)
    configs = {scene: SimulationConfig(preset=args.preset, scene=scene) for scene in ("grid", "body")}
    grid = grid_preset(args.preset)
    spec = SubjectSpec.sample(seed, case_femur_shape(seed, configs["body"].shapes))
    rendered = render_scene(spec, grid, case_views(seed, configs["body"], grid))
    cases = {scene: simulate_case(seed, config) for scene, config in configs.items()}

    scene_grid = rendered.scene.grid
    head_vox = np.linalg.solve(scene_grid.affine, [*rendered.subject.landmarks.head_centre_mm, 1.0])[:3]
    j, k = (round(float(v)) for v in head_vox[1:])
    scene_box = scene_grid.corners_world(pad_vox=0.5)
    grid_box = grid.corners_world(pad_vox=0.5)
    bounds = lambda corners, axes: np.stack([corners[:, axes].min(0), corners[:, axes].max(0)])  # noqa: E731

    figure = plt.figure(figsize=(9.0, 7.6))
    layout = figure.add_gridspec(2, 4, height_ratios=(1.0, 1.05))
    coronal, axial = figure.add_subplot(layout[0, :2]), figure.add_subplot(layout[0, 2:])
    # ct[:, j, :] is (I, K) = (x, z); ct[:, :, k] is (I, J) = (x, y).
    draw_slice(
        coronal, rendered.ct_hu[:, j, :], bounds(scene_box, [0, 2]), bounds(grid_box, [0, 2]), ("x (mm)", "z (mm)")
    )
    draw_slice(
        axial, rendered.ct_hu[:, :, k], bounds(scene_box, [0, 1]), bounds(grid_box, [0, 1]), ("x (mm)", "y (mm)")
    )
    coronal.set_title("scene, coronal through the head centre", fontsize=9)
    axial.set_title("scene, axial through the head centre", fontsize=9)
    for column, (view, (scene, case)) in enumerate((v, c) for v in ("AP", "LAT") for c in cases.items()):
        axis = figure.add_subplot(layout[1, column])
        low, high = np.percentile(case.radiographs[view], RADIOGRAPH_PERCENTILES)
        axis.imshow(case.radiographs[view], cmap="gray", vmin=low, vmax=high)
        axis.set_title(f"{view}, --scene {scene}", fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
    shape = " x ".join(map(str, scene_grid.shape))
    figure.suptitle(
        f"The scene of a {args.preset} subject ({shape} voxels, registration grid in red) and its line integrals",
        fontsize=10,
    )
    figure.tight_layout(rect=(0.0, 0.0, 1.0, 0.97))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
