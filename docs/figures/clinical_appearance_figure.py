"""Draw a clinical-mode radiograph next to the line integral of the same case (docs/img/clinical_appearance.png).

One simulated subject (subject ``--index`` of a dataset of seed ``--seed``, ``simulate_case`` in mode
``clinical``), AP on the top row, LAT below. Columns: the line integral of the same CT and views
(mode ``line_integral``); the clinical-mode image with the appearance drawn for this case (as
``biplanar simulate --mode clinical`` writes it); the same CT and views with a second appearance
drawn from ``--other-seed`` (:meth:`ClinicalAppearance.draw`), to show the spread of the draws.

Display: the line integral windowed to its 2nd-99.9th percentiles; the clinical images as displayed
(their own 12-bit values, 0 black to 4095 white, i.e. ``MONOCHROME2``; the DICOM of a
``MONOCHROME1`` case stores ``4095 - value``). Row 0 at the top; the AP view's columns run from the
patient's right to left, the LAT view's from anterior to posterior (CONTRACT section 2).

Usage::

    python docs/figures/clinical_appearance_figure.py --out docs/img/clinical_appearance.png [--preset paper]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from biplanar.data.simulate import SimulationConfig, render_radiographs, simulate_case, subject_id, subject_seed
from biplanar.physics.clinical_appearance import ClinicalAppearance

LINE_INTEGRAL_PERCENTILES = (2.0, 99.9)


def describe(appearance: ClinicalAppearance) -> str:
    """Column title: the drawn parameters that change the look most."""
    return (
        f"{appearance.kvp:.0f} kV, SPR {appearance.scatter_to_primary:.1f}, "
        f"{appearance.detector_kerma_ugy:.1f} µGy\nedge gain {appearance.edge_gain:.1f}, "
        f"latitude gain {appearance.latitude_gain:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img/clinical_appearance.png"))
    parser.add_argument("--preset", default="paper", help="grid and detector preset")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument("--index", type=int, default=1, help="subject index in the dataset")
    parser.add_argument("--other-seed", type=int, default=3, help="seed of the second appearance drawn")
    args = parser.parse_args()
    clinical = SimulationConfig(preset=args.preset, mode="clinical")
    case = simulate_case(subject_seed(args.seed, args.index), clinical)
    line_integrals = render_radiographs(case.ct_hu, case.grid, case.views, SimulationConfig(preset=args.preset))
    other = ClinicalAppearance.draw(np.random.default_rng(args.other_seed))
    other_images = render_radiographs(case.ct_hu, case.grid, case.views, clinical, args.other_seed, other)
    assert case.appearance is not None  # mode clinical draws one
    columns = (
        ("line integral", line_integrals, None),
        (f"clinical mode (this case)\n{describe(case.appearance)}", case.radiographs, (0.0, 4095.0)),
        (f"clinical, another draw\n{describe(other)}", other_images, (0.0, 4095.0)),
    )
    figure, axes = plt.subplots(2, 3, figsize=(9.0, 8.4))
    for row, view in zip(axes, ("AP", "LAT"), strict=True):
        for axis, (title, images, window) in zip(row, columns, strict=True):
            image = images[view]
            low, high = window or np.percentile(image, LINE_INTEGRAL_PERCENTILES)
            axis.imshow(image, cmap="gray", vmin=low, vmax=high)
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title(f"{view}: {title}" if view == "AP" else view, fontsize=8)
    figure.suptitle(
        f"{subject_id(args.index)} of dataset seed {args.seed} ({args.preset} preset): the line integral and "
        "clinical-mode images\n(polychromatic, scatter, noise, detector blur, log, unsharp masking, "
        "windowing, 12 bits)",
        fontsize=9,
    )
    figure.tight_layout(rect=(0.0, 0.0, 1.0, 0.97))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
