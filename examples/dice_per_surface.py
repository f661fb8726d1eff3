"""How much Dice a surface error costs on femurs of different girth: surface per volume inside the grid.

Dice compares volumes, the surface distances compare surfaces. For a registered femur whose surface
lies a mean distance ``d`` (mm, the ASSD) from the true one, the two differ by about ``d S`` of volume
(``S`` the surface area inside the grid), so Dice is about ``1 - d S / (2 V)`` (``V`` the femur's
volume inside the grid). A slender femur has more surface per volume, so the same ASSD costs it more
Dice. This script reads ``S`` (marching cubes of the true label map, :func:`biplanar.io.mesh.label_surface`,
its faces on the grid's boundary left out) and ``V`` of held-out shape-model femurs (the subjects of
``examples/shape_extremes.py``: dataset seed 9090, as drawn and with one mode weight at +-3 sd) and
prints, per variant, ``S / (2 V)`` and the Dice that a given ASSD leaves::

    python examples/dice_per_surface.py --n 10 [--assd-mm 0.79]

(about 1 min for 10 subjects on this project's 2-core CPU; ``--assd-mm``: the ASSD to turn into
Dice, default 0.79 mm, the bundled model's on those femurs as drawn, docs/results.md).
"""

from __future__ import annotations

import argparse

import numpy as np
from shape_extremes import CONFIG, FAMILIES, HELD_OUT_SEED

from biplanar.data.atlas import FEMUR_LABEL
from biplanar.data.simulate import case_subject, simulate_case, subject_seed
from biplanar.io.mesh import label_surface


def surface_and_volume(labels: np.ndarray, grid) -> tuple[float, float]:
    """Area (mm^2) of the femur's surface strictly inside the grid and its volume (mm^3) on the grid."""
    mesh = label_surface(labels, grid, FEMUR_LABEL)
    triangles = mesh.vertices[mesh.faces]  # (F, 3, 3) world mm
    areas = 0.5 * np.linalg.norm(np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]), axis=1)
    # Faces that close the femur where the grid cuts it (its distal face) are not registered surface.
    to_voxels, spacing = np.linalg.inv(grid.affine), np.asarray(grid.spacing_mm)
    indices = triangles @ to_voxels[:3, :3].T + to_voxels[:3, 3]  # (F, 3, 3) voxel indices (i, j, k)
    shape = np.asarray(grid.shape) - 1
    on_boundary = np.any(np.all((indices <= 0.5) | (indices >= shape - 0.5), axis=1), axis=1)
    volume = float((labels == FEMUR_LABEL).sum() * np.prod(spacing))
    return float(areas[~on_boundary].sum()), volume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="held-out subjects")
    parser.add_argument("--assd-mm", type=float, default=0.79, help="the ASSD to turn into Dice")
    arguments = parser.parse_args()
    variants = FAMILIES["edges"]
    ratios: dict[str, list[float]] = {variant: [] for variant in variants}
    for index in range(arguments.n):
        seed = subject_seed(HELD_OUT_SEED, index)
        drawn = case_subject(seed, CONFIG)
        for variant, change in variants.items():
            subject = simulate_case(seed, CONFIG, change(drawn, seed)).subject
            area, volume = surface_and_volume(np.asarray(subject.labels), subject.grid)
            ratios[variant].append(area / (2.0 * volume))
    header = f"| {arguments.n} held-out SSM subjects (seed {HELD_OUT_SEED}) | S / (2 V) (1/mm) |"
    print(f"{header} Dice at ASSD {arguments.assd_mm:g} mm |")
    print("|---|---:|---:|")
    for variant, values in ratios.items():
        ratio = np.array(values)
        print(f"| {variant} | {ratio.mean():.4f} +- {ratio.std():.4f} | {1.0 - arguments.assd_mm * ratio.mean():.3f} |")


if __name__ == "__main__":
    main()
