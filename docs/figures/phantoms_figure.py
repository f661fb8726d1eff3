"""Draw simulated cases (docs/img/phantoms.png): a coronal CT slice and the AP and LAT radiographs
with the femur mask's contour, one row per subject.

Everything comes from :func:`biplanar.data.simulate.simulate_case`; the subjects are the first
ones of a dataset made with ``simulate_dataset(..., seed=--seed)`` (case seeds
``subject_seed(seed, i)``).

Display: the CT slice is the coronal plane through the femoral head centre, seen from the front
(patient's right on the left, superior up), window -200 to 1600 HU. Radiographs are shown as
stored (row 0 at the top); the AP view's columns run from the patient's right to left and the LAT
view's from anterior to posterior (CONTRACT section 2), windowed to the 2nd-99.9th percentiles
of the pixels whose rays cross the volume. The yellow line is the 0.5 contour of the femur mask.

Usage::

    python docs/figures/phantoms_figure.py --out docs/img/phantoms.png [--preset lite] [--count 5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from biplanar.data.simulate import (
    SimulatedCase,
    SimulationConfig,
    simulate_case,
    subject_id,
    subject_seed,
)

CT_WINDOW_HU = (-200.0, 1600.0)
# Radiograph window: percentiles of the pixels whose rays cross the volume (above a fraction of
# the maximum), so that the detector margins outside the field of view do not set the black.
BODY_FRACTION_OF_MAX = 0.5
RADIOGRAPH_PERCENTILES = (2.0, 99.9)
MASK_COLOUR = "yellow"


def draw_coronal(axis: plt.Axes, case: SimulatedCase) -> None:
    """The coronal slice (fixed j) through the head centre, world mm, patient's right at left."""
    grid = case.grid
    head_vox = np.linalg.solve(grid.affine, [*case.subject.landmarks.head_centre_mm, 1.0])[:3]
    j = round(float(head_vox[1]))
    corners = grid.corners_world(pad_vox=0.5)  # voxel box edges, world mm
    # ct[:, j, :] is (I, K) = (x, z); transposed to (z, x) rows for imshow with origin "lower".
    axis.imshow(
        case.ct_hu[:, j, :].T,
        origin="lower",
        cmap="gray",
        vmin=CT_WINDOW_HU[0],
        vmax=CT_WINDOW_HU[1],
        extent=(corners[:, 0].min(), corners[:, 0].max(), corners[:, 2].min(), corners[:, 2].max()),
    )
    axis.invert_xaxis()  # +x (patient's right) on the viewer's left, as in the AP radiograph
    axis.set_xlabel("x (mm)")
    axis.set_ylabel("z (mm)")


def draw_radiograph(axis: plt.Axes, image: np.ndarray, mask: np.ndarray) -> None:
    """A radiograph (row 0 at the top) with the contour of its femur mask."""
    low, high = np.percentile(image[image > BODY_FRACTION_OF_MAX * image.max()], RADIOGRAPH_PERCENTILES)
    axis.imshow(image, cmap="gray", vmin=low, vmax=high)
    axis.contour(mask, levels=[0.5], colors=MASK_COLOUR, linewidths=0.8)
    axis.set_xticks([])
    axis.set_yticks([])


def describe(case: SimulatedCase, index: int) -> str:
    """Row label: id and a few of the parameters that vary."""
    femur, pose = case.subject.spec.femur.to_dict(), case.subject.spec.pose
    shape = "shape model" if "mode_weights" in femur else "phantom"
    return (
        f"{subject_id(index)} ({shape})\nhead r {femur['head_radius_mm']:.1f} mm, "
        f"NSA {femur['neck_shaft_angle_deg']:.0f}°\nanteversion {femur['anteversion_deg']:.0f}°, "
        f"flexion {pose.flexion_deg:+.1f}°"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img/phantoms.png"))
    parser.add_argument("--preset", default="lite", help="grid and detector preset")
    parser.add_argument("--count", type=int, default=5, help="subjects (rows)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    args = parser.parse_args()
    config = SimulationConfig(preset=args.preset)
    figure, axes = plt.subplots(args.count, 3, figsize=(7.2, 3.5 * args.count))
    for index, row in enumerate(np.atleast_2d(axes)):
        case = simulate_case(subject_seed(args.seed, index), config)
        draw_coronal(row[0], case)
        row[0].set_title(describe(case, index), fontsize=9)
        for axis, view in zip(row[1:], ("AP", "LAT"), strict=True):
            draw_radiograph(axis, case.radiographs[view], case.masks[view])
            axis.set_title(f"{view} ({'R | L' if view == 'AP' else 'A | P'})", fontsize=9)
    figure.suptitle(
        f"Simulated cases ({args.preset} preset, dataset seed {args.seed}):\n"
        "coronal CT through the head centre; AP and LAT line integrals with the femur "
        "mask",
        fontsize=10,
    )
    figure.tight_layout(rect=(0.0, 0.0, 1.0, 0.985))  # room for the suptitle
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
