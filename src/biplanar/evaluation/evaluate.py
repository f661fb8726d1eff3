"""``evaluate``: score a trained network on one split of a ``biplanar simulate`` dataset.

For each case the network runs once; the *stages* of its result are scored against the case's
truth (the paper's Table 1 compares the first two):

- ``affine``: the atlas warped by the regressed similarity ``T`` alone;
- ``affine+local``: the atlas warped by the total transform ``Psi = T o phi``;
- ``refined`` (with ``refine > 0``): ``Psi`` after test-time refinement.

Scores per stage (definitions in :mod:`biplanar.evaluation.metrics`):

- Dice, Jaccard, ASSD (mm), HD95 (mm) of the warped femur label (nearest-neighbour warp of the
  atlas labels, as ``register`` writes ``warped_labels.nii.gz``) against the true femur label;
- ``ssim``: 3D SSIM of the warped atlas against the true CT, both as linear attenuation
  ``mu = hu_to_mu(HU)`` (1/mm, ``docs/contract.md`` section 3), ``data_range`` = max - min of
  the true CT's mu; the atlas HU is warped with border padding, as ``register`` does;
- ``time_s``: network time (:func:`network_stage_times`): the affine stage for ``affine``, the
  whole forward pass for ``affine+local``, that plus the refinement for ``refined``;
- the geometry of the case: LAO/RAO of each view (:func:`view_angles_deg`);
- hip-measurement errors (:mod:`biplanar.evaluation.hip`): atlas landmarks carried by the stage's
  displacement, measured, compared with the subject's true landmarks;
- the displacement's folds (:mod:`biplanar.evaluation.deformation`): ``folded_cells_percent`` and
  ``smallest_jacobian_determinant``, as ``register``'s ``report.json`` has them.

Outputs in ``out_dir`` (each written atomically, at the end): ``cases.csv`` (one row per case and
stage), ``summary.json`` and ``summary.md`` (mean and sample standard deviation per stage over the
cases with a finite value).
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

from biplanar.data.atlas import FEMUR_LABEL, load_atlas, warped_atlas_hu, warped_atlas_labels
from biplanar.data.datasets import SimulatedDataset
from biplanar.devices import default_device
from biplanar.errors import InputError
from biplanar.evaluation import statistics
from biplanar.evaluation.deformation import folding_statistics
from biplanar.evaluation.hip import hip_errors, hip_report
from biplanar.evaluation.metrics import image_ssim, segmentation_metrics
from biplanar.geometry.presets import VIEW_NAMES
from biplanar.geometry.projection import ProjectionView, view_angles_deg
from biplanar.io.atomic import atomic_write_text, require_empty_out_dir, require_output_folder
from biplanar.io.json_files import read_json, write_json
from biplanar.layers.warp import affine_displacement
from biplanar.models.affine import AffineModule
from biplanar.models.network import AtlasRegistrationNet
from biplanar.optimisation.intensity_registration import refine_output
from biplanar.physics.attenuation import hu_to_mu
from biplanar.progress import progress_bar
from biplanar.training.checkpoints import load_model

STAGES = ("affine", "affine+local")
REFINED_STAGE = "refined"
GEOMETRY_SUFFIX = "_lao_rao_deg"  # cases.csv columns of the views' angles (not summarised)
OUTPUT_FILES = ("cases.csv", "summary.json", "summary.md")
SSIM_DEFINITION = (
    "3D SSIM (11^3 Gaussian window) of the warped atlas vs the true CT, both as "
    "mu = hu_to_mu(HU) in 1/mm, data_range = max - min of the true CT's mu"
)
TIME_DEFINITION = (
    "network seconds: affine = forward pass up to the affine module's output (atlas "
    "DRRs + affine CNN); affine+local = the whole forward pass; refined = that plus "
    "the test-time refinement"
)


@dataclass(frozen=True)
class StageTimes:
    """Wall time of one forward pass of the network, split at the affine module's output.

    Attributes:
        affine_s: from the start of the forward pass to the affine module's output (ProST DRRs
            of the atlas, normalisation, the affine CNN), s.
        local_s: the rest (warp by ``T``, DRRs of the warped atlas, the local module, velocity
            integration, composition, warping the outputs), s.
    """

    affine_s: float
    local_s: float

    @property
    def total_s(self) -> float:
        """The whole forward pass, s."""
        return self.affine_s + self.local_s


def _synchronise() -> None:
    """Wait for queued CUDA work, so a wall-clock reading covers it (no-op without CUDA)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@contextlib.contextmanager
def network_stage_times() -> Iterator[list[StageTimes]]:
    """Time every :class:`~biplanar.models.network.AtlasRegistrationNet` forward pass in the block.

    Uses torch's global module hooks, so it times a network called anywhere inside the block
    (e.g. within :func:`biplanar.registration.register`) without changing it.

    Yields:
        a list that receives one :class:`StageTimes` per forward pass, in call order.
    """

    records: list[StageTimes] = []
    marks: dict[str, float] = {}

    def before(module, _inputs) -> None:
        if isinstance(module, AtlasRegistrationNet):
            _synchronise()
            marks["start"] = time.perf_counter()

    def after(module, _inputs, _output) -> None:
        if isinstance(module, AffineModule) and "start" in marks:
            _synchronise()
            marks["affine"] = time.perf_counter()
        elif isinstance(module, AtlasRegistrationNet) and "affine" in marks:
            _synchronise()
            end = time.perf_counter()
            records.append(StageTimes(marks["affine"] - marks["start"], end - marks["affine"]))
            marks.clear()

    handles = [register_module_forward_pre_hook(before), register_module_forward_hook(after)]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class StageResult:
    """A stage's total transform as a displacement and the wall time that produced it.

    Attributes:
        displacement: ``(1, 3, I, J, K)`` mm, world components, on the atlas grid (pull).
        time_s: see the module doc.
    """

    displacement: Tensor
    time_s: float


class CaseScorer:
    """Scores warps of one atlas against a case's truth.

    Args:
        atlas: the :class:`~biplanar.data.atlas.Atlas` the network registers (the warps run on
            the displacement's device).
    """

    def __init__(self, atlas) -> None:
        self.atlas = atlas
        self.spacing_mm = tuple(float(s) for s in atlas.grid.spacing_mm)

    def warped_mu(self, displacement: Tensor) -> np.ndarray:
        """``(I, J, K)`` atlas attenuation (1/mm) warped by ``displacement`` ``(1, 3, I, J, K)`` mm,
        as ``register`` warps ``warped_atlas.nii.gz``."""

        return hu_to_mu(warped_atlas_hu(self.atlas, displacement))[0, 0].cpu().numpy()

    def score(
        self, displacement: Tensor, truth_labels: np.ndarray, truth_mu: np.ndarray, subject: dict[str, Any]
    ) -> dict[str, float]:
        """The stage's metrics (module doc) against one case's truth.

        Args:
            displacement: ``(1, 3, I, J, K)`` mm, world components, on the atlas grid.
            truth_labels: ``(I, J, K)`` bool true femur on the atlas grid.
            truth_mu: ``(I, J, K)`` true CT as attenuation, 1/mm.
            subject: the case's ``subject.json`` document (true femur parameters and landmarks).
        """

        predicted = warped_atlas_labels(self.atlas, displacement) == FEMUR_LABEL
        scores = segmentation_metrics(predicted, truth_labels, self.spacing_mm)
        data_range = float(truth_mu.max() - truth_mu.min())
        scores["ssim"] = image_ssim(self.warped_mu(displacement), truth_mu, data_range)
        folds = folding_statistics(displacement, self.atlas.grid)
        return {**scores, **self.hip_errors(displacement, subject), **folds}

    def hip_errors(self, displacement: Tensor, subject: dict[str, Any]) -> dict[str, float]:
        """Errors of the hip measurements of the atlas landmarks carried by ``displacement``
        (as ``register`` reports them) against the subject's truth, keys prefixed ``hip_``."""

        errors = hip_errors(hip_report(self.atlas, displacement), subject)
        return {f"hip_{name}": float(value) for name, value in errors.items()}


def network_inputs(
    sample: dict[str, Any], device: torch.device
) -> tuple[Tensor, tuple[ProjectionView, ProjectionView]]:
    """A dataset sample's network inputs.

    Args:
        sample: a :mod:`biplanar.data.datasets` sample (``radiographs`` ``(2, rows, cols)`` float32,
            AP then LAT; ``projection_matrices`` ``(2, 3, 4)``).
        device: where the radiographs go.

    Returns:
        ``(1, 2, rows, cols)`` radiographs on ``device`` and the ``(AP, LAT)`` views.
    """
    radiographs = sample["radiographs"][None].to(device)
    shape = tuple(sample["radiographs"].shape[1:])
    ap, lat = (
        ProjectionView(matrix.numpy(), shape, name) for matrix, name in zip(sample["projection_matrices"], VIEW_NAMES)
    )
    return radiographs, (ap, lat)


def run_stages(
    network, config, radiographs: Tensor, views: tuple[ProjectionView, ...], refine: int = 0
) -> dict[str, StageResult]:
    """Run the network once on a case; each stage's displacement and time (module doc).

    Args:
        network: the registration network, in eval mode.
        config: its :class:`~biplanar.config.ExperimentConfig`.
        radiographs: ``(1, 2, rows, cols)`` masked radiographs (AP, LAT), on the network's device.
        views: the ``(AP, LAT)`` views.
        refine: test-time refinement iterations (0: no ``refined`` stage).
    """

    with network_stage_times() as times, torch.no_grad():
        output = network(radiographs, [views])
    stages = {
        "affine": StageResult(affine_displacement(output.affine_matrix, network.grid), times[0].affine_s),
        "affine+local": StageResult(output.total_displacement, times[0].total_s),
    }
    if refine > 0:
        started = time.perf_counter()
        refined, _ = refine_output(
            network,
            config,
            output,
            radiographs,
            dict(zip(VIEW_NAMES, views)),
            masked=True,
            iterations=refine,
            progress=False,
        )
        _synchronise()
        stages[REFINED_STAGE] = StageResult(
            refined.total_displacement, times[0].total_s + time.perf_counter() - started
        )
    return stages


def _open_dataset(data_dir: Path, split: str, config):
    """The split of a dataset, checked to fit the model's grid and detector."""

    dataset = SimulatedDataset(data_dir, split, masked=True)
    if dataset.config.preset != config.geometry.grid_preset:
        raise InputError(
            f"{data_dir / 'dataset.json'}: config.preset {dataset.config.preset!r} differs from "
            f"the model's grid preset {config.geometry.grid_preset!r}"
        )
    if tuple(dataset.config.image_shape) != tuple(config.geometry.image_shape):
        raise InputError(
            f"{data_dir / 'dataset.json'}: detector {list(dataset.config.image_shape)} differs "
            f"from the model's image_shape {list(config.geometry.image_shape)}"
        )
    if len(dataset) == 0:
        raise InputError(f"{data_dir / 'split.json'}: split {split!r} is empty")
    return dataset


def _case_rows(index: int, dataset, network, config, scorer: CaseScorer, refine: int) -> list[dict[str, Any]]:
    """One row per stage of case ``index``."""

    sample = dataset[index]
    radiographs, views = network_inputs(sample, network.atlas_mu.device)
    stages = run_stages(network, config, radiographs, views, refine)
    truth_labels = sample["labels"][0].numpy() == FEMUR_LABEL
    truth_mu = hu_to_mu(sample["ct"][0]).numpy()
    subject = read_json(dataset.root / "subjects" / sample["subject_id"] / "subject.json")
    geometry = {f"{name.lower()}{GEOMETRY_SUFFIX}": view_angles_deg(view)[0] for name, view in zip(VIEW_NAMES, views)}
    rows = []
    for stage, result in stages.items():
        scores = scorer.score(result.displacement, truth_labels, truth_mu, subject)
        rows.append({"case": sample["subject_id"], "stage": stage, **geometry, **scores, "time_s": result.time_s})
    return rows


def _statistics(values: list[float | None]) -> dict[str, float | int | None]:
    """Mean and sample sd (``None`` where undefined) over the finite values, and their count."""
    summary = statistics.summarise(value for value in values if value is not None)
    return {
        "mean": None if math.isnan(summary.mean) else summary.mean,
        "sd": None if math.isnan(summary.sd) else summary.sd,
        "n": summary.n,
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Stage -> metric -> ``{"mean", "sd", "n"}`` over the numeric columns of ``rows`` (not the
    geometry's)."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for stage in dict.fromkeys(row["stage"] for row in rows):
        stage_rows = [row for row in rows if row["stage"] == stage]
        columns = [
            key
            for key, value in stage_rows[0].items()
            if key not in ("case", "stage") and not key.endswith(GEOMETRY_SUFFIX) and isinstance(value, (int, float))
        ]
        summary[stage] = {column: _statistics([row.get(column) for row in stage_rows]) for column in columns}
    return summary


def _format_cell(statistics: dict[str, Any]) -> str:
    if statistics["mean"] is None:
        return "n/a"
    sd = "" if statistics["sd"] is None else f" ± {statistics['sd']:.3f}"
    return f"{statistics['mean']:.3f}{sd}"


def summary_markdown(summary: dict[str, dict[str, dict[str, Any]]], header: dict[str, Any]) -> str:
    """``summary.md``: a table of mean ± sd, one row per metric, one column per stage."""
    stages = list(summary)
    metrics = list(dict.fromkeys(metric for stage in stages for metric in summary[stage]))
    lines = [
        f"# Evaluation of `{header['model']}` on `{header['data']}` ({header['split']}, {header['cases']} cases)",
        "",
        "| metric | " + " | ".join(stages) + " |",
        "|---|" + "---|" * len(stages),
    ]
    for metric in metrics:
        cells = [_format_cell(summary[stage][metric]) if metric in summary[stage] else "n/a" for stage in stages]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean ± sample standard deviation over the cases with a finite value.",
        f"SSIM: {SSIM_DEFINITION}.",
        f"Time: {TIME_DEFINITION}.",
        "",
    ]
    return "\n".join(lines)


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    """``cases.csv`` text: the union of the rows' columns, in first-seen order."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_study(out_dir: Path, rows: list[dict[str, Any]], summary: str, summary_name: str = "table.md") -> None:
    """A study's outputs, each written whole or not at all: ``cases.csv`` (:func:`rows_to_csv`) and its
    Markdown ``summary`` as ``summary_name``; the summary is also printed.

    Args:
        out_dir: the study's folder (created).
        rows: one dict per case (and route, stage, ...).
        summary: the Markdown table or text that sums the rows up.
        summary_name: its file name in ``out_dir``.
    """
    atomic_write_text(Path(out_dir) / "cases.csv", rows_to_csv(rows))
    atomic_write_text(Path(out_dir) / summary_name, summary if summary.endswith("\n") else summary + "\n")
    print(summary)


@dataclass(frozen=True)
class EvaluationResult:
    """What :func:`evaluate` wrote.

    Attributes:
        out_dir: the folder holding :data:`OUTPUT_FILES`.
        rows: the rows of ``cases.csv``.
        summary: ``summary.json``'s ``"stages"``: stage -> metric -> mean, sd, n.
    """

    out_dir: Path
    rows: list[dict[str, Any]]
    summary: dict[str, dict[str, dict[str, Any]]]


def evaluate(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    split: str = "test",
    refine: int = 0,
    limit: int | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> EvaluationResult:
    """Score a model on a dataset split, per stage (``biplanar evaluate``).

    Writes ``out/cases.csv`` (Dice, Jaccard, ASSD, HD95 in mm, SSIM and time per case and stage:
    affine only, affine + local, refined) and ``out/summary.json`` / ``out/summary.md`` (mean +- sd;
    module doc).

    Args:
        model: a checkpoint from :func:`~biplanar.api.train`.
        data: a :func:`~biplanar.api.simulate` dataset folder, on the model's grid preset and detector.
        out: the output folder; must be new or empty.
        split: ``train``, ``val``, ``test`` or ``all`` (every subject).
        refine: test-time refinement iterations (adds the ``refined`` stage).
        limit: score only the first ``limit`` cases of the split (sorted ids).
        progress: show a progress bar on stderr.
        device: where to run (default: CUDA if available, else CPU).

    Returns:
        the output folder, the rows of ``cases.csv`` and the summary per stage and metric.

    Raises:
        InputError: a bad checkpoint or dataset, a dataset that does not fit the model, a
            non-empty ``out``, ``refine`` or ``limit`` out of range.
    """

    require_output_folder(out)
    out_dir, data_dir = Path(out), Path(data)
    if refine < 0 or (limit is not None and limit < 1):
        raise InputError(f"refine >= 0 and limit >= 1 expected, got {refine} and {limit}")
    require_empty_out_dir(out_dir)
    network, config = load_model(model, device or default_device())
    dataset = _open_dataset(data_dir, split, config)
    scorer = CaseScorer(load_atlas(config.geometry.grid_preset))
    count = len(dataset) if limit is None else min(limit, len(dataset))
    rows: list[dict[str, Any]] = []
    with progress_bar(progress) as bar:
        task = bar.add_task(f"evaluate {split}", total=count)
        for index in range(count):
            rows.extend(_case_rows(index, dataset, network, config, scorer, refine))
            bar.advance(task)
    summary = summarise(rows)
    header = {
        "model": str(model),
        "data": str(data_dir),
        "split": split,
        "cases": count,
        "refine": refine,
        "device": str(network.atlas_mu.device),
    }
    require_empty_out_dir(out_dir)
    atomic_write_text(out_dir / "cases.csv", rows_to_csv(rows))
    write_json(
        out_dir / "summary.json", {**header, "ssim": SSIM_DEFINITION, "time_s": TIME_DEFINITION, "stages": summary}
    )
    atomic_write_text(out_dir / "summary.md", summary_markdown(summary, header))
    return EvaluationResult(out_dir, rows, summary)
