"""Is a carried ``surface.stl`` right? The field's folds and the inversion's residuals, per patient.

``register`` writes ``surface.stl``, the atlas mesh carried to the patient by solving
``p + u(p) = a`` for each atlas vertex ``a`` (:func:`biplanar.evaluation.hip.invert_points`). A
mesh that crosses itself can come from the field (a fold: a trilinear cell whose Jacobian
determinant is <= 0 at a corner) or from the inversion (a vertex left where ``p + u(p) != a``).
This script registers held-out patients of ``tests/test_clinical_register.py`` (dataset seed
4141, orthogonal views, whole-body scenes, true masks) with each model and reports, per patient:
the field's folds (:func:`biplanar.evaluation.deformation.folding_statistics`), and for the
fixed-point iteration alone and with the Newton steps, the largest residual, the vertices left
more than 1e-3 mm off, the mesh's self-intersections and the time. About 10 s per patient and
model on a 2-core CPU::

    python examples/carry_check.py --patients 1 2 3 --model v9=src/biplanar/resources/models/lite/model.pt
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import biplanar
from biplanar.data.atlas import atlas_surface, load_atlas
from biplanar.data.clinical import write_view_files
from biplanar.data.simulate import SimulationConfig, simulate_case, subject_seed
from biplanar.evaluation.deformation import folding_statistics
from biplanar.evaluation.figures import read_displacement
from biplanar.evaluation.hip import displacement_sampler, invert_points
from biplanar.evaluation.self_intersection import self_intersections

HELD_OUT_SEED = 4141  # tests/test_clinical_register.py's
OFF_MM = 1e-3


def check_patient(index: int, models: dict[str, Path], work: Path) -> list[str]:
    """Register patient ``index`` with every model; one Markdown row per model and inversion."""
    case = simulate_case(subject_seed(HELD_OUT_SEED, index), SimulationConfig(preset="lite", geometry="orthogonal"))
    folder = work / f"patient_{index}"
    write_view_files(folder, case.views, case.radiographs, case.masks)
    surface = atlas_surface(load_atlas("lite", None))
    vertices, faces = np.asarray(surface.vertices), np.asarray(surface.faces)
    rows = []
    for name, model in models.items():
        out = folder / f"out_{name}"
        biplanar.register(
            geometry=folder / "geometry.json",
            ap=folder / "AP.npy",
            lat=folder / "LAT.npy",
            out=out,
            ap_mask=folder / "AP_mask.npy",
            lat_mask=folder / "LAT_mask.npy",
            model=model,
            progress=False,
        )
        displacement = read_displacement(out / "displacement.nii.gz", case.grid)
        field = torch.as_tensor(displacement, dtype=torch.float64)[None]
        sample = displacement_sampler(field, case.grid)
        folds = folding_statistics(displacement, case.grid)
        for newton in (False, True):
            started = time.perf_counter()
            carried, residual = invert_points(field, case.grid, vertices, newton=newton)
            seconds = time.perf_counter() - started
            off = np.linalg.norm(carried + sample(torch.as_tensor(carried)).numpy() - vertices, axis=1) > OFF_MM
            crossings = len(self_intersections(carried, faces))
            method = "fixed point + Newton" if newton else "fixed point alone"
            rows.append(
                f"| {index} | {name} | {folds['folded_cells_percent']:.2f} | "
                f"{folds['smallest_jacobian_determinant']:.2f} | {method} | {residual:.1e} | {int(off.sum())} of "
                f"{len(vertices)} | {crossings} | {seconds:.2f} |"
            )
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, nargs="+", default=[1, 2], help="patient indices of seed 4141")
    parser.add_argument(
        "--model", action="append", default=None, help="NAME=CHECKPOINT (repeatable; default: the bundled model)"
    )
    arguments = parser.parse_args()
    models = {text.partition("=")[0]: Path(text.partition("=")[2]) for text in arguments.model or []}
    models = models or {"bundled": Path(biplanar.__file__).parent / "resources" / "models" / "lite" / "model.pt"}
    header = (
        "| patient | model | folded cells (%) | smallest corner det. | inversion | largest residual (mm) "
        "| vertices > 1e-3 mm off | self-intersections | time (s) |\n|---|---|---|---|---|---|---|---|---|"
    )
    with tempfile.TemporaryDirectory() as work:
        rows = [row for index in arguments.patients for row in check_patient(index, models, Path(work))]
    print("\n" + header + "\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
