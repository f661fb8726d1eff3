"""The experiments' report: ``results.md``, summary CSVs and plots, from the stages' ``cases.csv`` files.

Written into the experiments folder (each file atomically):

- ``results.md``: the command, the budget, the models and their training, Table 1, Table 2 (with
  paired two-sided t-tests), Fig. 3 and Fig. 4, SOPI's Table 1 (rigid pose), the stages' wall
  times; the paper's figures beside ours where we are sure of them (:data:`PAPER`), "see paper"
  elsewhere, and SOPI's published row beside the pose tables;
- ``table1.csv``, ``table2.csv``, ``fig3_angle_error.csv`` (per correction and angle error: mean
  and sd over the cases), ``fig4_geometry_grid.csv`` (per angle pair: mean and sd),
  ``pose_accuracy.csv`` (per dataset, pose range and method: mean errors, failure rate, time);
- ``img/results_fig3_angle_error.png``, ``img/results_fig4_geometry_grid.png``,
  ``img/results_dice_per_case.png``.

``results.md`` links its plots as ``img/results_*.png``, so that a copy at ``docs/results.md`` with
the plots in ``docs/img/`` (:func:`write_report`'s ``docs_dir``) shows them too.
"""

from __future__ import annotations

import csv
import math
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biplanar.config import load_config
from biplanar.evaluation.evaluate import rows_to_csv
from biplanar.evaluation.pose_accuracy import (
    APPEARANCE_NOTES,
    DEFINITIONS,
    INITIAL,
    RANGE_REASON,
    summarise_rows,
    tables_markdown,
)
from biplanar.evaluation.statistics import summarise
from biplanar.experiments.budgets import Budget
from biplanar.experiments.discussion import discussion_section
from biplanar.experiments.models import ABLATIONS, BASELINES, FULL, GENERALIZED_MODEL, MODELS, TrainedModel
from biplanar.experiments.stages import POSE_SOPI_STAGE, POSE_STAGE, StageRecord
from biplanar.experiments.tables import (
    MethodScores,
    column,
    markdown_table,
    read_cases,
    table1,
    table2,
)
from biplanar.io.atomic import atomic_path, atomic_write_text

IMAGE_DIR = "img"
FIG3_PNG = "results_fig3_angle_error.png"
FIG4_PNG = "results_fig4_geometry_grid.png"
BOXES_PNG = "results_dice_per_case.png"
# The paper's Table 1 figures we are sure of (Van Houtte et al., IJCARS 2022), as printed.
PAPER = {"full": {"dice": "0.94", "assd_mm": "0.84"}, "full_affine": {"dice": "0.860", "assd_mm": "2.04"}}
AFFINE_STAGE, TOTAL_STAGE, LABELS_STAGE = "affine", "affine+local", "labels"
DPI = 110


@dataclass
class ReportInputs:
    """What the report needs besides the stages' files.

    Attributes:
        out_dir: the experiments folder.
        budget: the budget run.
        command: the command line that produced the folder.
        data: the ``data`` stage's info (preset, subjects, split sizes, seeds).
        models: model name -> its checkpoint and training.
        stages: the stage records (name, info, seconds, whether this run did it).
        device: where the scoring ran.
    """

    out_dir: Path
    budget: Budget
    command: str
    data: dict[str, Any]
    models: dict[str, TrainedModel]
    stages: list[StageRecord]
    device: str


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """A ``cases.csv`` with numeric columns as floats."""

    def value(text: str) -> Any:
        try:
            return float(text)
        except ValueError:
            return text

    with open(path, newline="") as handle:
        return [{key: value(text) for key, text in row.items()} for row in csv.DictReader(handle)]


def _figure(width_in: float, height_in: float, columns: int = 1):
    """A matplotlib figure on the Agg canvas (no pyplot, no display) and its ``columns`` axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: matplotlib only for pictures
    from matplotlib.figure import Figure  # lazy: matplotlib only for pictures

    figure = Figure(figsize=(width_in, height_in))
    FigureCanvasAgg(figure)
    return figure, figure.subplots(1, columns)


def _save_figure(figure, path: Path) -> None:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=DPI, format="png", bbox_inches="tight")


# --- Tables 1 and 2 -----------------------------------------------------------------------------
def table_methods(inputs: ReportInputs) -> tuple[list[MethodScores], MethodScores, list[MethodScores]]:
    """Table 1's rows (ours, our affine stage, the baselines, the optimisation), and Table 2's full model
    and ablations, read from the ``eval_*`` stages."""

    def scores(name: str, stage: str) -> dict:
        return read_cases(inputs.out_dir / f"eval_{name}" / "cases.csv", stage)

    def steps(name: str) -> int | None:
        return inputs.models[name].steps

    full = MethodScores(FULL.label, scores(FULL.name, TOTAL_STAGE), PAPER["full"], steps(FULL.name))
    affine = MethodScores(
        "Ours, affine stage only", scores(FULL.name, AFFINE_STAGE), PAPER["full_affine"], steps(FULL.name)
    )
    baselines = [
        MethodScores(spec.label, scores(spec.name, LABELS_STAGE), steps=steps(spec.name)) for spec in BASELINES
    ]
    optimisation = MethodScores(
        f"Intensity registration from identity, no learning ({_optimisation_steps(inputs.budget)})",
        scores("optimisation", TOTAL_STAGE),
    )
    ablations = [MethodScores(spec.label, scores(spec.name, TOTAL_STAGE), steps=steps(spec.name)) for spec in ABLATIONS]
    return [full, affine, *baselines, optimisation], full, ablations


def plot_dice_per_case(methods: list[MethodScores], path: Path) -> None:
    """Box plot of the per-case Dice of each method."""
    import matplotlib  # lazy: matplotlib only for pictures

    figure, axis = _figure(9.0, 0.5 + 0.45 * len(methods))
    values = [[v for v in column(m.scores, "dice").values() if math.isfinite(v)] for m in methods]
    # horizontal boxes: ``orientation`` from Matplotlib 3.10, ``vert`` (deprecated there) before
    major, minor = (int(part) for part in matplotlib.__version__.split(".")[:2])
    horizontal = {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}
    axis.boxplot(values, showmeans=True, **horizontal)
    axis.set_yticks(range(1, len(methods) + 1), [m.label for m in methods], fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("Dice (test cases)")
    axis.grid(axis="x", alpha=0.3)
    _save_figure(figure, path)


# --- Fig. 3 -------------------------------------------------------------------------------------
def angle_error_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per correction and angle error: mean and sd over the cases of Dice, ASSD, the residual angle
    errors of the views given to the network, and the correction time."""
    summary = []
    for correction in dict.fromkeys(row["correction"] for row in rows):
        for error in sorted({row["angle_error_deg"] for row in rows}):
            group = [row for row in rows if row["correction"] == correction and row["angle_error_deg"] == error]
            record: dict[str, Any] = {"correction": correction, "angle_error_deg": error, "cases": len(group)}
            # column name -> a row's key, or a function of the row
            columns: dict[str, str | Callable[[dict[str, Any]], float]] = {
                "dice": "dice",
                "assd_mm": "assd_mm",
                "hd95_mm": "hd95_mm",
                "lat_residual_deg": lambda r: r["lat_angle_used_deg"] - 90.0,
                "ap_residual_deg": lambda r: r["ap_angle_used_deg"],
                "correction_time_s": "correction_time_s",
            }
            for name, source in columns.items():
                stats = summarise(source(row) if callable(source) else row[source] for row in group)
                record.update({f"{name}_mean": stats.mean, f"{name}_sd": stats.sd})
            summary.append(record)
    return summary


def plot_angle_error(summary: list[dict[str, Any]], path: Path) -> None:
    """Dice and ASSD (mean ± sd over the cases) against the LAT angle error, per correction."""
    figure, axes = _figure(11.0, 4.0, columns=2)
    labels = {"none": "no correction", "per_view": "per-view pose correction (Opt-GC)"}
    for correction, colour, style in (("none", "tab:red", "o-"), ("per_view", "tab:blue", "s--")):
        records = [r for r in summary if r["correction"] == correction]
        errors = np.array([r["angle_error_deg"] for r in records])
        for axis, metric in zip(axes, ("dice", "assd_mm")):
            mean = np.array([r[f"{metric}_mean"] for r in records])
            sd = np.nan_to_num(np.array([r[f"{metric}_sd"] for r in records]))
            axis.plot(errors, mean, style, color=colour, label=labels[correction], markersize=3)
            axis.fill_between(errors, mean - sd, mean + sd, color=colour, alpha=0.15)
    for axis, name in zip(axes, ("Dice", "ASSD (mm)")):
        axis.set_xlabel("error of the LAT view's LAO/RAO angle given to the network (deg)")
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    _save_figure(figure, path)


def angle_error_markdown(summary: list[dict[str, Any]]) -> str:
    by_key = {(r["correction"], r["angle_error_deg"]): r for r in summary}
    header = [
        "LAT angle error (deg)",
        "Dice, no correction",
        "Dice, corrected",
        "ASSD (mm), no correction",
        "ASSD (mm), corrected",
        "LAT residual after correction (deg)",
        "correction time (s)",
    ]
    rows = []
    for error in sorted({r["angle_error_deg"] for r in summary}):
        none, fixed = by_key[("none", error)], by_key[("per_view", error)]

        def cell(record: dict[str, Any], name: str, digits: int = 3) -> str:
            return _mean_sd(record, name, digits)

        rows.append(
            [
                f"{error:+g}",
                cell(none, "dice"),
                cell(fixed, "dice"),
                cell(none, "assd_mm", 2),
                cell(fixed, "assd_mm", 2),
                cell(fixed, "lat_residual_deg", 2),
                cell(fixed, "correction_time_s", 2),
            ]
        )
    return markdown_table(header, rows)


def _mean_sd(record: dict[str, Any], name: str, digits: int) -> str:
    mean, sd = record[f"{name}_mean"], record[f"{name}_sd"]
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f}" + ("" if math.isnan(sd) else f" ± {sd:.{digits}f}")


# --- Fig. 4 -------------------------------------------------------------------------------------
def geometry_grid_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per ``(AP, LAT)`` angle pair: mean and sd over the cases of Dice and ASSD."""
    summary = []
    for ap in sorted({row["ap_angle_deg"] for row in rows}):
        for lat in sorted({row["lat_angle_deg"] for row in rows}):
            group = [row for row in rows if row["ap_angle_deg"] == ap and row["lat_angle_deg"] == lat]
            record: dict[str, Any] = {
                "ap_angle_deg": ap,
                "lat_angle_deg": lat,
                "angle_between_deg": lat - ap,
                "cases": len(group),
            }
            for metric in ("dice", "assd_mm"):
                stats = summarise(row[metric] for row in group)
                record.update({f"{metric}_mean": stats.mean, f"{metric}_sd": stats.sd})
            summary.append(record)
    return summary


def _dice_grid(summary: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AP angles, LAT angles (degrees, ascending) and the ``(LAT, AP)`` matrix of mean Dice."""
    aps = np.array(sorted({r["ap_angle_deg"] for r in summary}))
    lats = np.array(sorted({r["lat_angle_deg"] for r in summary}))
    dice = np.full((len(lats), len(aps)), np.nan)
    for record in summary:
        dice[np.searchsorted(lats, record["lat_angle_deg"]), np.searchsorted(aps, record["ap_angle_deg"])] = record[
            "dice_mean"
        ]
    return aps, lats, dice


def plot_geometry_grid(summary: list[dict[str, Any]], path: Path) -> None:
    """Heat map of the mean Dice over (AP angle, LAT angle), the pairs 90 degrees apart marked."""
    aps, lats, dice = _dice_grid(summary)
    step_ap = aps[1] - aps[0] if len(aps) > 1 else 1.0
    step_lat = lats[1] - lats[0] if len(lats) > 1 else 1.0
    extent = (aps[0] - step_ap / 2, aps[-1] + step_ap / 2, lats[0] - step_lat / 2, lats[-1] + step_lat / 2)
    figure, axis = _figure(6.5, 5.5)
    image = axis.imshow(dice, origin="lower", extent=extent, aspect="auto", cmap="viridis")
    figure.colorbar(image, ax=axis, label="mean Dice (test cases)")
    if len(aps) * len(lats) <= 100:
        for i, lat in enumerate(lats):
            for j, ap in enumerate(aps):
                if math.isfinite(dice[i, j]):
                    axis.text(ap, lat, f"{dice[i, j]:.2f}", ha="center", va="center", fontsize=7, color="white")
    line = np.array([extent[0], extent[1]])
    axis.plot(line, line + 90.0, "--", color="red", label="LAT - AP = 90 deg")
    axis.set_xlim(extent[:2])
    axis.set_ylim(extent[2:])
    axis.set_xlabel("AP view LAO/RAO (deg)")
    axis.set_ylabel("LAT view LAO/RAO (deg)")
    axis.legend(loc="upper left", fontsize=8)
    _save_figure(figure, path)


def geometry_grid_markdown(summary: list[dict[str, Any]]) -> str:
    aps, lats, dice = _dice_grid(summary)
    header = ["LAT \\ AP (deg)", *(f"{ap:g}" for ap in aps)]
    rows = [
        [f"{lat:g}", *("n/a" if math.isnan(v) else f"{v:.3f}" for v in dice[i])]
        for i, lat in reversed(list(enumerate(lats)))
    ]
    return markdown_table(header, rows)


def diagonal_contrast(summary: list[dict[str, Any]]) -> tuple[float, float]:
    """Mean Dice over the pairs 90 degrees apart, and over all the others."""
    diagonal = [r["dice_mean"] for r in summary if abs(r["angle_between_deg"] - 90.0) < 1e-6]
    others = [r["dice_mean"] for r in summary if abs(r["angle_between_deg"] - 90.0) >= 1e-6]
    return summarise(diagonal).mean, summarise(others).mean


# --- results.md ---------------------------------------------------------------------------------
def _seconds(value: float | None) -> str:
    if value is None:
        return "unknown"
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"


def _header(inputs: ReportInputs) -> list[str]:

    budget, data = inputs.budget, inputs.data
    split = data["split"]
    correction = budget.pose_correction
    lines = [
        "# Results: the paper's experiments on this project's synthetic femurs",
        "",
        "Tables 1 and 2 and Figs. 3 and 4 of Van Houtte et al. (IJCARS 2022), re-run with this project's code "
        "on its simulated phantom population at a reduced budget, and the rigid-pose study of SOPI's Table 1 "
        "(Chen et al. 2023) with two views. Every number on this page was produced by one command:",
        "",
        "```bash",
        inputs.command,
        "```",
        "",
        f"on {time.strftime('%Y-%m-%d')} (torch {torch.__version__}, scoring on `{inputs.device}`, "
        f"CPU threads: {torch.get_num_threads()}, {platform.machine()}). Stage folders named below are inside "
        f"the `--out` folder. These are not the paper's data, sizes or training: compare trends and "
        f"orders of magnitude, not values.",
        "",
        f"## Budget `{budget.name}`",
        "",
        markdown_table(
            ["item", "value"],
            [
                ["config preset (every model)", f"`{budget.config}`, grid preset `{data['preset']}`"],
                [
                    "datasets (stage `data`)",
                    f"orthogonal (seed {data['seeds']['orthogonal']}) and generalized "
                    f"(seed {data['seeds']['generalized']}), {data['subjects']} subjects each: "
                    f"{split['train']} train / {split['val']} val / {split['test']} test",
                ],
                [
                    "training of every model",
                    f"{budget.training_text(load_config(budget.config).training.epochs)}, "
                    f"batch 1, on its dataset's train split; "
                    f"`best.pt` (best validation Dice) when a validation ran, else `last.pt`",
                ],
                ["scored cases", f"the {split['test']} test cases of the orthogonal dataset (every table and figure)"],
                [
                    "SDM deformation model",
                    f"3D/3D registrations, levels (pooling, Adam steps) {list(budget.sdm_registration.levels)}",
                ],
                [
                    "optimisation baseline",
                    f"{_optimisation_steps(budget)} of test-time intensity registration from the identity",
                ],
                [
                    "Fig. 3",
                    f"LAT angle errors {_angles(budget.angle_errors_deg)} deg; correction: Opt-GC per view, "
                    f"levels {list(correction.levels_mm)} mm, {correction.max_evaluations} CMA-ES evaluations "
                    f"per level, {correction.refine_steps} L-BFGS steps",
                ],
                [
                    "Fig. 4",
                    f"AP at 0 + a, LAT at 90 + b deg for a, b in {_angles(budget.grid_offsets_deg)} "
                    f"({len(budget.grid_offsets_deg)}^2 pairs)",
                ],
                ["rigid pose (SOPI's Table 1)", _pose_budget_text(budget)],
            ],
            numeric=False,
        ),
        "",
    ]
    return lines


def _pose_budget_text(budget: Budget) -> str:
    search = budget.pose_search
    levels = "all levels" if search.max_levels is None else f"the coarsest {search.max_levels} level(s)"
    return (
        f"{budget.pose_cases} case(s) per dataset ({', '.join(budget.pose_datasets)}) and pose range "
        f"({', '.join(budget.pose_ranges)}); baselines: {search.max_evaluations} CMA-ES evaluations per level, "
        f"{levels}, {search.refine_steps} L-BFGS steps"
    )


def _optimisation_steps(budget: Budget) -> str:
    return (
        f"{budget.optimisation_affine_iterations} affine, then {budget.optimisation_iterations} affine + "
        f"velocity Adam steps"
        + (
            f", velocity integrated on the atlas grid pooled by {budget.optimisation_integration_factor}"
            if budget.optimisation_integration_factor > 1
            else ""
        )
    )


def _angles(values: tuple[float, ...]) -> str:
    steps = np.diff(values)
    if len(values) > 2 and np.allclose(steps, steps[0]):
        return f"{values[0]:g} to {values[-1]:g} in steps of {steps[0]:g}"
    return ", ".join(f"{value:g}" for value in values)


def _models_section(inputs: ReportInputs) -> list[str]:
    rows = []
    for spec in MODELS:
        model = inputs.models[spec.name]
        origin = f"reused (`--model-{spec.name}`), trained elsewhere" if model.reused else f"stage `train_{spec.name}`"
        rows.append(
            [
                spec.label,
                spec.geometry,
                origin,
                f"`{model.checkpoint.name}`" if not model.reused else f"`{model.checkpoint}`",
                "unknown" if model.steps is None else str(model.steps),
                _seconds(model.wall_s),
            ]
        )
    lines = [
        "## Models",
        "",
        markdown_table(
            ["model", "training data", "origin", "checkpoint scored", "training steps", "training time"],
            rows,
            numeric=False,
        ),
        "",
    ]
    steps = {inputs.models[spec.name].steps for spec in MODELS}
    if len(steps) > 1:
        lines += [
            "Not every model had the same number of training steps (a reused checkpoint, or an "
            "interrupted run): compare them with that in mind.",
            "",
        ]
    return lines


def _table_sections(
    inputs: ReportInputs, methods: list[MethodScores], full: MethodScores, ablations: list[MethodScores], out_dir: Path
) -> list[str]:
    markdown1, records1 = table1(methods)
    markdown2, records2 = table2(full, ablations)
    atomic_write_text(out_dir / "table1.csv", rows_to_csv(records1))
    atomic_write_text(out_dir / "table2.csv", rows_to_csv(records2))
    lines = [
        "## Table 1: comparison methods",
        "",
        _provenance(inputs),
        "",
        f"Mean ± sd over the test cases (stages `eval_full`, `eval_kasten`, `eval_sdm`, `eval_optimisation`; "
        f"per case in their `cases.csv`, summary in `table1.csv`). Our method's labels are the atlas labels "
        f"warped by the network's transform (nearest neighbour, as `register` writes them); Kasten's and the "
        f"SDM's are their predicted femur probability > 0.5. Time: wall time per case of the network / "
        f"prediction / optimisation on `{inputs.device}`. The paper columns are the paper's Table 1 where "
        f"we are sure of the figure.",
        "",
        markdown1,
        "",
        "## Table 2: ablations",
        "",
        _provenance(inputs),
        "",
        "Each ablation trained with the full model's budget; mean ± sd over the test cases (stages `eval_*`), "
        "and the p-value of a paired two-sided t-test (`scipy.stats.ttest_rel`, pairs = test cases) of the "
        "ablation against the full model. Summary with t statistics and mean differences in `table2.csv`. "
        "The paper's Table 2: see paper.",
        "",
        markdown2,
        "",
        f"![Dice per test case](img/{BOXES_PNG})",
        "",
    ]
    return lines


def _fig3_section(inputs: ReportInputs, summary: list[dict[str, Any]], out_dir: Path, image_dir: Path) -> list[str]:
    atomic_write_text(out_dir / "fig3_angle_error.csv", rows_to_csv(summary))
    plot_angle_error(summary, image_dir / FIG3_PNG)
    return [
        "## Fig. 3: a wrong LAO/RAO angle of the LAT view",
        "",
        _provenance(inputs),
        "",
        f"The full model ({_origin(inputs.models[FULL.name])}) registers the orthogonal test cases (AP at 0, "
        f"LAT at 90 deg) while told that the LAT view is at 90 + error deg; the radiographs stay those of the "
        f"true angles. *Corrected*: before the network, `estimate_view_rotations` re-estimates, "
        f"for each view alone, a rotation of the view about its isocentre by Opt-GC between the atlas's "
        f"whole-body CT and the unmasked radiograph. The residual is the LAO/RAO angle of the corrected LAT "
        f"view minus the true 90 deg. Stage `fig3_angle_error` (per case in its `cases.csv`, summary in "
        f"`fig3_angle_error.csv`). The paper's Fig. 3: see paper.",
        "",
        f"![Dice and ASSD against the LAT angle error](img/{FIG3_PNG})",
        "",
        angle_error_markdown(summary),
        "",
    ]


def _fig4_section(inputs: ReportInputs, summary: list[dict[str, Any]], out_dir: Path, image_dir: Path) -> list[str]:
    atomic_write_text(out_dir / "fig4_geometry_grid.csv", rows_to_csv(summary))
    plot_geometry_grid(summary, image_dir / FIG4_PNG)
    diagonal, others = diagonal_contrast(summary)
    return [
        "## Fig. 4: generalized geometries",
        "",
        _provenance(inputs),
        "",
        f"The model trained on generalized geometries ({_origin(inputs.models[GENERALIZED_MODEL.name])}) "
        f"registers each test case rendered at every pair of angles below (radiographs of the whole CT times "
        f"the femur masks, as `biplanar simulate` makes them). Mean Dice over the test cases per pair; the "
        f"dashed line marks the pairs 90 deg apart. Mean Dice on that diagonal {diagonal:.3f}, elsewhere "
        f"{others:.3f}. Stage `fig4_geometry_grid` (per case in its `cases.csv`, summary in "
        f"`fig4_geometry_grid.csv`). The paper's Fig. 4: see paper.",
        "",
        f"![Mean Dice over AP and LAT angles](img/{FIG4_PNG})",
        "",
        geometry_grid_markdown(summary),
        "",
    ]


def _pose_section(inputs: ReportInputs, out_dir: Path) -> list[str]:

    rows = _read_rows(out_dir / POSE_STAGE / "cases.csv")
    sopi = next((stage for stage in inputs.stages if stage.name == POSE_SOPI_STAGE), None)
    if sopi is not None:  # the same cases again: keep their initial rows once
        rows += [row for row in _read_rows(out_dir / POSE_SOPI_STAGE / "cases.csv") if row["method"] != INITIAL]
    records = summarise_rows(rows)
    atomic_write_text(out_dir / "pose_accuracy.csv", rows_to_csv(records))
    with_sopi = [] if sopi is None else sopi.info["datasets"]
    without = [name for name in inputs.budget.pose_datasets if name not in with_sopi]
    note = (
        ""
        if not without
        else f"Rows `sopi` and `sopi+opt` are missing for {', '.join(f'`{name}`' for name in without)}: no SOPI "
        f"networks were given for {'it' if len(without) == 1 else 'them'} (`--sopi-rtpi`, `--sopi-fine`). "
    )
    if with_sopi:
        note += (
            f"SOPI (stage `{POSE_SOPI_STAGE}`) uses the AP view only, as published; `sopi+opt` refines its "
            f"pose by Opt-GC over both views. "
        )
    note += "The last row of each table is SOPI's own published result, on its data."
    return [
        "## Rigid pose estimation (SOPI's Table 1)",
        "",
        _provenance(inputs),
        "",
        f"The rigid CT-to-X-ray pose study of SOPI (Chen et al. 2023, Table 1) with two views (AP and LAT): "
        f"each case renders noise-free DRRs of a CT at a random true pose and every method starts at the "
        f"identity. Datasets: `lumbar`, the real lumbar-pelvis CT shipped with the package "
        f"(`src/biplanar/resources/real_ct`) (the same CT every case); `femur`, a new femur phantom per case. "
        f"Stage `{POSE_STAGE}` (per case in its `cases.csv`, "
        f"summary in `pose_accuracy.csv`; `biplanar evaluate-pose` runs the same study alone). {DEFINITIONS}",
        "",
        f"{RANGE_REASON} {APPEARANCE_NOTES['line-integral']}",
        "",
        note,
        "",
        tables_markdown(records, inputs.budget.pose_search),
        "",
    ]


def _provenance(inputs: ReportInputs) -> str:
    """The line that ties a section's numbers to their command and budget."""
    return f"*Numbers below: `{inputs.command}` (budget `{inputs.budget.name}`, see above).*"


def _origin(model: TrainedModel) -> str:
    steps = "unknown" if model.steps is None else model.steps
    return f"reused checkpoint `{model.checkpoint}`, {steps} steps" if model.reused else f"{steps} steps"


def _timings_section(inputs: ReportInputs) -> list[str]:
    rows = [
        [f"`{stage.name}`", _seconds(stage.seconds), "yes" if stage.ran else "no (complete before)"]
        for stage in inputs.stages
    ]
    total = sum(stage.seconds for stage in inputs.stages)
    return [
        "## Wall time of the stages",
        "",
        markdown_table(["stage", "wall time", "run by this call"], rows),
        "",
        f"Total {_seconds(total)} (stages, this call and earlier ones).",
        "",
    ]


def write_report(inputs: ReportInputs, docs_dir: Path | None = None) -> list[Path]:
    """Write ``results.md``, the CSVs and plots (module doc); with ``docs_dir``, copy ``results.md`` and
    the plots to ``docs_dir/results.md`` and ``docs_dir/img/``.

    Returns:
        the files written into the experiments folder.
    """
    out_dir = inputs.out_dir
    image_dir = out_dir / IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    methods, full, ablations = table_methods(inputs)
    plot_dice_per_case([*methods, *ablations], image_dir / BOXES_PNG)
    fig3 = angle_error_summary(_read_rows(out_dir / "fig3_angle_error" / "cases.csv"))
    fig4 = geometry_grid_summary(_read_rows(out_dir / "fig4_geometry_grid" / "cases.csv"))
    discussion = discussion_section(methods, full, methods[1], ablations, fig3, fig4, len(full.scores))
    lines = [
        *_header(inputs),
        *_models_section(inputs),
        *_table_sections(inputs, methods, full, ablations, out_dir),
        *_fig3_section(inputs, fig3, out_dir, image_dir),
        *_fig4_section(inputs, fig4, out_dir, image_dir),
        *_pose_section(inputs, out_dir),
        *discussion,
        *_timings_section(inputs),
    ]
    atomic_write_text(out_dir / "results.md", "\n".join(lines))
    images = [image_dir / name for name in (BOXES_PNG, FIG3_PNG, FIG4_PNG)]
    if docs_dir is not None:
        _copy_keeping_tail(out_dir / "results.md", docs_dir / "results.md")
        for image in images:
            _copy(image, docs_dir / IMAGE_DIR / image.name)
    return [
        out_dir / "results.md",
        *(
            out_dir / name
            for name in (
                "table1.csv",
                "table2.csv",
                "fig3_angle_error.csv",
                "fig4_geometry_grid.csv",
                "pose_accuracy.csv",
            )
        ),
        *images,
    ]


KEPT_TAIL_MARKER = "<!-- not written by biplanar experiments: kept when --docs rewrites this page -->"


def _copy_keeping_tail(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target``, keeping what ``target`` holds from :data:`KEPT_TAIL_MARKER` on
    (sections of ``docs/results.md`` that other commands produce, each naming its own)."""
    previous = target.read_text() if target.is_file() else ""
    kept = previous[previous.index(KEPT_TAIL_MARKER) :] if KEPT_TAIL_MARKER in previous else ""
    if not kept:
        _copy(source, target)
        return
    atomic_write_text(target, source.read_text().rstrip("\n") + "\n\n" + kept)


def _copy(source: Path, target: Path) -> None:
    with atomic_path(target) as temporary:
        shutil.copyfile(source, temporary)
