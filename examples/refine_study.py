"""Test-time refinement settings compared: Dice and time per case of ``refine_registration`` variants.

Each case of a ``biplanar simulate`` dataset is run through the bundled lite model, then refined
from the network's output with each variant of :class:`~biplanar.optimisation.RefineSettings`
(fields as ``key=value`` pairs joined by ``;``), and scored against its true labels. This chose
``register --refine``'s settings (:func:`biplanar.optimisation.intensity_registration.refine_settings`)
on validation phantoms that the held-out table never uses::

    biplanar simulate --out data/refine_val --n 10 --seed 11 --geometry orthogonal --preset lite \\
        --scene grid --shapes phantom --workers 2
    python examples/refine_study.py --data data/refine_val \\
        --variant "iterations=50;integration_factor=1" --variant "iterations=50;integration_factor=2" \\
        --variant "iterations=40;integration_factor=2" --out runs/refine_study

prints one line per case and a Markdown table (mean Dice, median refinement seconds), and writes
``cases.csv`` and ``table.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from pathlib import Path

import torch

from biplanar.data.atlas import warped_atlas_labels
from biplanar.evaluation.evaluate import write_study
from biplanar.geometry.presets import VIEW_NAMES
from biplanar.optimisation import ProjectionObjective, RefineSettings, refine_registration
from biplanar.registration.inputs import load_model_atlas, read_inputs, read_truth
from biplanar.registration.outputs import truth_metrics
from biplanar.registration.pipeline import model_detector
from biplanar.training.checkpoints import bundled_model_path, load_model


def parse_variant(text: str) -> RefineSettings:
    """``"iterations=50;linearised_iterates=true"`` -> the settings (other fields at their defaults)."""
    types = {field.name: field.type for field in dataclasses.fields(RefineSettings)}
    values = dict(item.split("=", 1) for item in text.split(";"))
    unknown = set(values) - set(types)
    if unknown:
        raise SystemExit(f"--variant {text!r}: unknown settings {sorted(unknown)}")
    parsers = {"int": int, "float": float, "bool": lambda text: text.lower() in ("1", "true")}
    return RefineSettings(**{key: parsers[str(types[key])](value) for key, value in values.items()})


def study_case(folder: Path, network, config, atlas, variants: dict[str, RefineSettings]) -> dict[str, float]:
    """The network's Dice and each variant's Dice and refinement time for one subject folder."""
    inputs = read_inputs(
        {name: folder / f"{name}.npy" for name in VIEW_NAMES},
        {name: folder / f"{name}_mask.npy" for name in VIEW_NAMES},
        folder / "geometry.json",
        model_detector(network, config),
        None,
        None,
        "auto",
        None,
    )
    truth = read_truth(folder / "labels.nii.gz", atlas)
    views = inputs.network_views()
    pair = (views["AP"], views["LAT"])
    network_inputs = inputs.network_inputs()
    radiographs = torch.stack([torch.from_numpy(network_inputs[name]) for name in VIEW_NAMES])[None]
    with torch.no_grad():
        output = network.eval()(radiographs, [pair])

    def dice(total_displacement: torch.Tensor) -> float:
        warped = inputs.patient_volume(warped_atlas_labels(atlas, total_displacement))
        return float(truth_metrics(truth, warped, atlas)["dice"])

    row = {"network dice": dice(output.total_displacement)}
    for name, settings in variants.items():
        objective = ProjectionObjective(
            network.atlas_mu,
            network.atlas_labels,
            network.grid,
            pair,
            radiographs,
            centre_world=network.atlas_centre,
            smoothness_weight=config.loss.smoothness_weight,
            integration_steps=config.local.integration_steps,
            projectors=network.projectors,
        )
        result = refine_registration(objective, output.params, output.velocity, settings, progress=False)
        row[f"{name} dice"], row[f"{name} s"] = dice(result.total_displacement), result.time_s
    return row


def table(rows: list[dict], names: list[str], data: Path) -> str:
    """Markdown: the network, then one row per variant (mean Dice, median seconds)."""
    lines = [f"| refinement ({len(rows)} cases of {data}) | mean Dice | median s per case |", "|---|---:|---:|"]
    lines.append(f"| network alone | {statistics.mean(row['network dice'] for row in rows):.4f} | |")
    for name in names:
        dice = statistics.mean(row[f"{name} dice"] for row in rows)
        seconds = statistics.median(row[f"{name} s"] for row in rows)
        lines.append(f"| `{name}` | {dice:.4f} | {seconds:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a biplanar simulate dataset folder")
    parser.add_argument("--variant", action="append", required=True, help="RefineSettings as key=value;key=value")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", type=Path, required=True)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    variants = {text: parse_variant(text) for text in arguments.variant}
    network, config = load_model(bundled_model_path(), "cpu")
    atlas = load_model_atlas(None, network)
    rows = []
    for folder in sorted(path for path in (arguments.data / "subjects").iterdir() if path.is_dir()):
        rows.append({"case": folder.name, **study_case(folder, network, config, atlas, variants)})
        print(
            ", ".join(
                f"{key} {value:.4f}" if "dice" in key else f"{key} {value:.1f}"
                for key, value in rows[-1].items()
                if key != "case"
            ),
            folder.name,
            flush=True,
        )
    markdown = table(rows, list(variants), arguments.data)
    arguments.out.mkdir(parents=True, exist_ok=True)
    write_study(arguments.out, rows, markdown)


if __name__ == "__main__":
    main()
