"""The discussion of ``results.md``: our ordering and significance beside the paper's claims, computed.

Every sentence is made from the numbers of the run (so that it cannot drift from the tables) and
from the paper's statements we are sure of (:data:`PAPER_CLAIMS`: its abstract, and the figures
its follow-up work quotes). Significance: paired two-sided t-tests over the test cases
(:func:`~biplanar.experiments.tables.paired_ttest`) at :data:`ALPHA`.
"""

from __future__ import annotations

import math
from typing import Any

from biplanar.evaluation.statistics import summarise
from biplanar.experiments.tables import MethodScores, column, format_p, paired_ttest

ALPHA = 0.05
NEAR_ORTHOGONAL_DEG = (80.0, 100.0)  # the paper's best range of the angle between the views
PAPER_CLAIMS = {
    "table1": "The paper's network is its most accurate method, Dice 0.94 and ASSD 0.84 mm, and its local "
    "stage improves on its affine stage (Dice 0.860, ASSD 2.04 mm)",
    "fig3": "The paper's Dice falls from 0.94 to 0.90 (-0.04) when one view's angle is given 5 deg wrong",
    "fig4": "The paper finds the highest accuracy for views 80 to 100 deg apart",
}


def _dice(method: MethodScores) -> float:
    return summarise(column(method.scores, "dice").values()).mean


def _versus(reference: MethodScores, other: MethodScores, metric: str = "dice") -> str:
    """``other`` minus ``reference`` in ``metric``, with its paired test, in words."""
    test = paired_ttest(column(reference.scores, metric), column(other.scores, metric))
    verdict = "significant" if test.p < ALPHA else "not significant"
    p_text = format_p(test.p)
    p_text = f"p {p_text}" if p_text.startswith("<") else f"p = {p_text}"
    return f"{test.mean_difference:+.3f} ({p_text}, {verdict} at {ALPHA:g}, {test.n} pairs)"


def table1_lines(methods: list[MethodScores], full: MethodScores, affine: MethodScores) -> list[str]:
    """Table 1: the ranking by mean Dice, and our method against each other row."""
    ranked = sorted(methods, key=lambda method: -_dice(method) if math.isfinite(_dice(method)) else math.inf)
    order = " > ".join(f"{method.label} ({_dice(method):.3f})" for method in ranked)
    lines = [
        f"- **Table 1.** {PAPER_CLAIMS['table1']}. Here, by mean Dice: {order}. "
        f"Our network ranks {ranked.index(full) + 1} of {len(ranked)}."
    ]
    lines += [
        f"  - Dice of {other.label} minus ours: {_versus(full, other)}." for other in methods if other is not full
    ]
    lines.append(f"  - Local stage against affine stage, ASSD (mm): {_versus(affine, full, 'assd_mm')}.")
    return lines


def table2_lines(full: MethodScores, ablations: list[MethodScores]) -> list[str]:
    """Table 2: each ablation's Dice difference from the full model and its significance."""
    tests = {
        ablation.label: paired_ttest(column(full.scores, "dice"), column(ablation.scores, "dice"))
        for ablation in ablations
    }
    worse = [label for label, test in tests.items() if test.p < ALPHA and test.mean_difference < 0]
    better = [label for label, test in tests.items() if test.p < ALPHA and test.mean_difference > 0]
    lines = [
        f"- **Table 2.** The paper keeps all four components in its design. Here {len(worse)} of "
        f"{len(ablations)} ablations are significantly worse than the full model in Dice, {len(better)} "
        f"significantly better, the others not significantly different (paired t-tests at {ALPHA:g})."
    ]
    lines += [f"  - {ablation.label}: Dice minus the full model's {_versus(full, ablation)}." for ablation in ablations]
    return lines


def _record(summary: list[dict[str, Any]], correction: str, error: float) -> dict[str, Any] | None:
    return next((r for r in summary if r["correction"] == correction and r["angle_error_deg"] == error), None)


def fig3_lines(summary: list[dict[str, Any]], error_deg: float = 5.0) -> list[str]:
    """Fig. 3: the Dice at +-``error_deg`` against the calibrated Dice, without and with the correction."""
    calibrated = _record(summary, "none", 0.0)
    if calibrated is None:
        return []
    parts = []
    for correction, name in (("none", "uncorrected"), ("per_view", "with the per-view pose correction")):
        records = [
            record for sign in (-1.0, 1.0) if (record := _record(summary, correction, sign * error_deg)) is not None
        ]
        if len(records) < 2:
            continue
        dice = sum(record["dice_mean"] for record in records) / 2
        parts.append(f"{name} {dice:.3f} ({dice - calibrated['dice_mean']:+.3f})")
    if not parts:
        return []
    return [
        f"- **Fig. 3.** {PAPER_CLAIMS['fig3']}. Here the "
        f"calibrated Dice is {calibrated['dice_mean']:.3f}; at +-{error_deg:g} deg (mean of both signs): "
        f"{', '.join(parts)}."
    ]


def fig4_lines(summary: list[dict[str, Any]]) -> list[str]:
    """Fig. 4: mean Dice of the view pairs 80-100 deg apart against the others, and the best pair."""
    low, high = NEAR_ORTHOGONAL_DEG
    near = [r["dice_mean"] for r in summary if low <= r["angle_between_deg"] <= high]
    far = [r["dice_mean"] for r in summary if not low <= r["angle_between_deg"] <= high]
    if not near or not far:
        return []
    best = max(summary, key=lambda r: r["dice_mean"])
    return [
        f"- **Fig. 4.** {PAPER_CLAIMS['fig4']}. Here the mean Dice of "
        f"the pairs {low:g} to {high:g} deg apart is {summarise(near).mean:.3f} ({len(near)} pairs), of the "
        f"others {summarise(far).mean:.3f} ({len(far)} pairs); the best pair is AP {best['ap_angle_deg']:g}, "
        f"LAT {best['lat_angle_deg']:g} deg ({best['angle_between_deg']:g} deg apart), Dice "
        f"{best['dice_mean']:.3f}."
    ]


def discussion_section(
    table1_methods: list[MethodScores],
    full: MethodScores,
    affine: MethodScores,
    ablations: list[MethodScores],
    fig3_summary: list[dict[str, Any]],
    fig4_summary: list[dict[str, Any]],
    cases: int,
) -> list[str]:
    """The ``## Discussion`` lines of ``results.md``.

    Args:
        table1_methods: Table 1's rows (``full`` and ``affine`` among them).
        full, affine: our network's affine + local and affine-only rows.
        ablations: Table 2's ablation rows.
        fig3_summary, fig4_summary: the rows of ``fig3_angle_error.csv`` and ``fig4_geometry_grid.csv``.
        cases: the number of test cases (the pairs of every test).
    """
    return [
        "## Discussion: ordering and significance beside the paper",
        "",
        f"Computed from the tables above. With {cases} test cases a paired t-test detects only large "
        f"effects: a difference that is not significant here is not evidence of no difference.",
        "",
        *table1_lines(table1_methods, full, affine),
        *table2_lines(full, ablations),
        *fig3_lines(fig3_summary),
        *fig4_lines(fig4_summary),
        "",
    ]
