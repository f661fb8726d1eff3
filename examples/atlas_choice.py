"""Registration Dice with different atlases: the shipped one, one CT's (``atlas --from-ct``), a mean.

Each case of a ``biplanar simulate`` dataset (default its ``all`` split) is registered through the
public API (:func:`biplanar.register`: the geometry file, the radiographs, their true masks) with
the bundled lite model, once per atlas given, and scored against its true labels. Usage
(docs/own_data.md, section 4)::

    python examples/atlas_choice.py --data data/lite_heldout --n 20 \\
        --atlas shipped= --atlas scan_000=results/atlas_scan_000 --atlas mean=results/own_ct_mean_atlas \\
        --out runs/atlas_choice

(``NAME=ATLAS_FOLDER``; an empty folder means the model's own, shipped atlas) prints a Markdown
table (Dice, ASSD, HD95: mean +- sd) and writes ``cases.csv`` and ``table.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

import biplanar
from biplanar.data.datasets import split_subject_ids
from biplanar.evaluation.evaluate import write_study

METRICS = (("dice", "Dice", "{:.3f}"), ("assd_mm", "ASSD (mm)", "{:.2f}"), ("hd95_mm", "HD95 (mm)", "{:.2f}"))


def register_case(folder: Path, atlas: Path | None, work: Path) -> dict[str, float]:
    """Dice, ASSD and HD95 of one subject folder registered with ``atlas`` (``None``: shipped)."""
    out = work / "out"
    report = biplanar.register(
        folder / "geometry.json",
        folder / "AP.npy",
        folder / "LAT.npy",
        out,
        atlas=atlas,
        ap_mask=folder / "AP_mask.npy",
        lat_mask=folder / "LAT_mask.npy",
        truth_labels=folder / "labels.nii.gz",
        progress=False,
    ).report
    shutil.rmtree(out)
    return {key: float(report[key]) for key, _, _ in METRICS}


def table(rows: list[dict], atlases: list[str], data: Path) -> str:
    """Markdown: one row per atlas, mean +- sd of each metric."""
    n = len({row["case"] for row in rows})
    header = " | ".join(label for _, label, _ in METRICS)
    lines = [f"| atlas ({n} cases of {data}) | {header} |", "|---" * (len(METRICS) + 1) + "|"]
    for name in atlases:
        chosen = [row for row in rows if row["atlas"] == name]
        cells = []
        for key, _, style in METRICS:
            values = np.array([row[key] for row in chosen])
            cells.append(f"{style.format(values.mean())} +- {style.format(values.std())}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a simulate dataset folder")
    parser.add_argument("--split", default="all", help="its split to register")
    parser.add_argument("--n", type=int, default=20, help="cases (the first of the split)")
    parser.add_argument("--atlas", action="append", required=True, help="NAME=ATLAS_FOLDER (empty: shipped)")
    parser.add_argument("--out", type=Path, required=True)
    arguments = parser.parse_args()
    atlases = {name: Path(path) if path else None for name, _, path in (a.partition("=") for a in arguments.atlas)}
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for case in split_subject_ids(arguments.data, arguments.split)[: arguments.n]:
            for name, atlas in atlases.items():
                scores = register_case(arguments.data / "subjects" / case, atlas, Path(work))
                rows.append({"case": case, "atlas": name, **scores})
                print(f"{case} {name}: Dice {scores['dice']:.3f}", flush=True)
    text = table(rows, list(atlases), arguments.data)
    arguments.out.mkdir(parents=True, exist_ok=True)
    write_study(arguments.out, rows, text)


if __name__ == "__main__":
    main()
