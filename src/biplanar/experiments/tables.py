"""Tables 1 and 2: per-method mean ± sd over the test cases, and paired two-sided t-tests.

Per-case scores come from the stages' ``cases.csv`` files (:func:`read_cases`); a method's
*scores* map a case id to its metrics. Statistics use the finite values only (an empty prediction
has an infinite ASSD): :func:`~biplanar.evaluation.statistics.summarise` gives mean, sample sd and
count; :func:`paired_ttest` pairs two methods by case (cases finite in both) and runs
``scipy.stats.ttest_rel`` (two-sided).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import ttest_rel

from biplanar.evaluation.statistics import Summary, summarise

Scores = dict[str, dict[str, float]]  # case id -> metric -> value
TABLE_METRICS = (
    ("dice", "Dice"),
    ("jaccard", "Jaccard"),
    ("assd_mm", "ASSD (mm)"),
    ("hd95_mm", "HD95 (mm)"),
    ("ssim", "SSIM"),
)  # SSIM: warped atlas vs true CT, n/a for the label-only baselines
TESTED_METRICS = (("dice", "Dice"), ("assd_mm", "ASSD (mm)"))


@dataclass(frozen=True)
class PairedTest:
    """A paired two-sided t-test of ``other - reference`` over ``n`` cases (``nan`` below two cases)."""

    t: float
    p: float
    n: int
    mean_difference: float


def paired_ttest(reference: Mapping[str, float], other: Mapping[str, float]) -> PairedTest:
    """``scipy.stats.ttest_rel(other, reference)`` over the cases finite in both (case id -> value)."""

    cases = sorted(
        case for case in set(reference) & set(other) if math.isfinite(reference[case]) and math.isfinite(other[case])
    )
    a = np.array([other[case] for case in cases], dtype=np.float64)
    b = np.array([reference[case] for case in cases], dtype=np.float64)
    if len(cases) < 2:
        return PairedTest(math.nan, math.nan, len(cases), float(np.mean(a - b)) if cases else math.nan)
    result = ttest_rel(a, b)  # two-sided by default
    return PairedTest(float(result.statistic), float(result.pvalue), len(cases), float(np.mean(a - b)))


def read_cases(path: str | Path, stage: str) -> Scores:
    """The rows of a ``cases.csv`` whose ``stage`` is ``stage``: case id -> numeric columns."""
    with open(path, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["stage"] == stage]
    return {
        row["case"]: {key: _number(value) for key, value in row.items() if key not in ("case", "stage")} for row in rows
    }


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def column(scores: Scores, metric: str) -> dict[str, float]:
    """Case id -> ``metric``."""
    return {case: values.get(metric, math.nan) for case, values in scores.items()}


def format_summary(summary: Summary, digits: int = 3) -> str:
    """``0.912 ± 0.010`` (``n/a`` without values; no ``±`` below two)."""
    if summary.n == 0:
        return "n/a"
    sd = "" if math.isnan(summary.sd) else f" ± {summary.sd:.{digits}f}"
    return f"{summary.mean:.{digits}f}{sd}"


def format_p(p: float) -> str:
    """A p-value: 3 significant digits, ``< 1e-4`` below that, ``n/a`` when undefined."""
    if math.isnan(p):
        return "n/a"
    return "< 1e-4" if p < 1e-4 else f"{p:.3g}"


def markdown_table(header: list[str], rows: list[list[str]], numeric: bool = True) -> str:
    """A GitHub Markdown table: the first column left-aligned, the others right-aligned (``numeric``)
    or left-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + ("---:|" if numeric else "---|") * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class MethodScores:
    """One row of a table.

    Attributes:
        label: the method's name in the table.
        scores: its per-case scores.
        paper: metric -> the paper's figure, as printed (e.g. ``"0.94"``; missing: "see paper").
        steps: optimizer steps of its training (``None``: not trained, or unknown).
    """

    label: str
    scores: Scores
    paper: dict[str, str] = field(default_factory=dict)
    steps: int | None = None


def _steps(method: MethodScores) -> str:
    return "–" if method.steps is None else str(method.steps)


def table1(methods: list[MethodScores]) -> tuple[str, list[dict[str, object]]]:
    """Table 1: mean ± sd of :data:`TABLE_METRICS` and time per method, beside the paper's Dice and ASSD.

    Returns:
        the Markdown table and its CSV rows.
    """
    header = [
        "method",
        "cases",
        *(name for _, name in TABLE_METRICS),
        "time (s)",
        "training steps",
        "paper Dice",
        "paper ASSD (mm)",
    ]
    rows, records = [], []
    for method in methods:
        summaries = {
            metric: summarise(column(method.scores, metric).values())
            for metric in (*(m for m, _ in TABLE_METRICS), "time_s")
        }
        rows.append(
            [
                method.label,
                str(len(method.scores)),
                *(format_summary(summaries[metric]) for metric, _ in TABLE_METRICS),
                format_summary(summaries["time_s"], 2),
                _steps(method),
                method.paper.get("dice", "see paper"),
                method.paper.get("assd_mm", "see paper"),
            ]
        )
        records.append(
            {
                "method": method.label,
                "cases": len(method.scores),
                "steps": method.steps,
                **{
                    f"{metric}_{part}": getattr(summary, part)
                    for metric, summary in summaries.items()
                    for part in ("mean", "sd")
                },
            }
        )
    return markdown_table(header, rows), records


def table2(full: MethodScores, ablations: list[MethodScores]) -> tuple[str, list[dict[str, object]]]:
    """Table 2: each ablation's mean ± sd of :data:`TESTED_METRICS` and its paired t-test against ``full``.

    Returns:
        the Markdown table and its CSV rows (``t``, ``p``, ``n`` and the mean difference per metric).
    """
    header = [
        "model",
        "cases",
        *(f"{name}" for _, name in TESTED_METRICS),
        *(f"p ({name} vs full)" for _, name in TESTED_METRICS),
        "training steps",
    ]
    rows, records = [], []
    for method in (full, *ablations):
        summaries = {metric: summarise(column(method.scores, metric).values()) for metric, _ in TESTED_METRICS}
        tests = {
            metric: paired_ttest(column(full.scores, metric), column(method.scores, metric))
            for metric, _ in TESTED_METRICS
        }
        is_full = method is full
        rows.append(
            [
                method.label,
                str(len(method.scores)),
                *(format_summary(summaries[metric]) for metric, _ in TESTED_METRICS),
                *("–" if is_full else format_p(tests[metric].p) for metric, _ in TESTED_METRICS),
                _steps(method),
            ]
        )
        record: dict[str, object] = {"model": method.label, "cases": len(method.scores), "steps": method.steps}
        for metric, _ in TESTED_METRICS:
            record.update({f"{metric}_mean": summaries[metric].mean, f"{metric}_sd": summaries[metric].sd})
            if not is_full:
                test = tests[metric]
                record.update(
                    {
                        f"{metric}_t": test.t,
                        f"{metric}_p": test.p,
                        f"{metric}_pairs": test.n,
                        f"{metric}_mean_difference": test.mean_difference,
                    }
                )
        records.append(record)
    return markdown_table(header, rows), records
