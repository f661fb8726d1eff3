"""What the held-out studies of this folder share: the command line and the outputs.

A study registers ``--n`` held-out subjects (orthogonal views on the lite preset's grid) one at a
time with ``run_case(index, work_folder, config, registration) -> rows`` (``registration``: a
:class:`Registration` of ``--model``, a checkpoint or the bundled one, and ``--refine``) and sums
the rows up with ``table(rows, n) -> Markdown``; :func:`run_held_out_study` parses ``--n``,
``--model``, ``--refine`` and ``--out`` and writes ``cases.csv`` and ``table.md`` into ``--out``
(:func:`biplanar.evaluation.evaluate.write_study`); :func:`dice_cells` makes the cells their tables
share.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import biplanar
from biplanar.data.simulate import SimulationConfig
from biplanar.evaluation.evaluate import write_study


@dataclass(frozen=True)
class Registration:
    """How a study registers: ``model`` a checkpoint (``None``: the bundled one) and ``refine``
    iterations of test-time optimisation (``biplanar register --refine``; ``None``: register's
    default, refining oblique views only)."""

    model: Path | None = None
    refine: int | None = 0

    def register(self, inputs: Path, truth_labels: Path, masks: bool = True, out: str = "out") -> dict:
        """``report.json`` of registering the pair :func:`~biplanar.data.clinical.write_view_files`
        wrote into ``inputs`` (with its true masks, or ``masks=False``: segmented) into ``inputs / out``."""
        given = {"ap_mask": inputs / "AP_mask.npy", "lat_mask": inputs / "LAT_mask.npy"} if masks else {}
        return biplanar.register(
            model=self.model,
            refine=self.refine,
            geometry=inputs / "geometry.json",
            ap=inputs / "AP.npy",
            lat=inputs / "LAT.npy",
            out=inputs / out,
            truth_labels=truth_labels,
            progress=False,
            **given,
        ).report


def refine_iterations(text: str) -> int | None:
    """``--refine``'s value: a count of iterations, or ``auto`` (``None``)."""
    return None if text == "auto" else int(text)


def run_held_out_study(
    description: str,
    default_n: int,
    run_case: Callable[[int, Path, SimulationConfig, Registration], list[dict]],
    table: Callable[[list[dict], int], str],
) -> None:
    """Parse ``--n``, ``--model``, ``--refine`` and ``--out``, run every case and write the study
    (module doc)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--n", type=int, default=default_n, help="held-out subjects")
    parser.add_argument("--model", type=Path, default=None, help="registration checkpoint (default: the bundled)")
    parser.add_argument(
        "--refine",
        type=refine_iterations,
        default=0,
        help="test-time optimisation iterations (default none), or auto: register's own choice",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for cases.csv and table.md")
    arguments = parser.parse_args()
    registration = Registration(arguments.model, arguments.refine)
    config = SimulationConfig(preset="lite", geometry="orthogonal")
    work = arguments.out / "inputs"
    rows = [row for index in range(arguments.n) for row in run_case(index, work, config, registration)]
    write_study(arguments.out, rows, table(rows, arguments.n))


def dice_cells(chosen: list[dict], reference: np.ndarray | None = None) -> str:
    """Markdown cells of some rows' ``dice``: mean +- sd, min, the mean difference to ``reference``
    (the same cases' Dice elsewhere, in the same order; left out if ``None``) and how many rows were
    ``flagged`` by the quality block."""
    dice = np.array([row["dice"] for row in chosen])
    cells = [f"{dice.mean():.3f} +- {dice.std():.3f}", f"{dice.min():.3f}"]
    if reference is not None:
        cells.append(f"{(dice - reference).mean():+.3f}")
    cells.append(f"{sum(row['flagged'] for row in chosen)}/{len(chosen)}")
    return " | ".join(cells)
