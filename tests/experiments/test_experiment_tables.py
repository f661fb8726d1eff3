"""Tables 1-2 statistics and the report's summaries: closed-form values, paired t-tests, n/a cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import t as student_t

from biplanar.errors import InputError
from biplanar.evaluation.statistics import summarise
from biplanar.experiments.budgets import BUDGETS, get_budget
from biplanar.experiments.report import angle_error_summary, diagonal_contrast, geometry_grid_summary
from biplanar.experiments.tables import (
    MethodScores,
    format_p,
    paired_ttest,
    read_cases,
    table1,
    table2,
)


def test_summary_uses_the_finite_values_only():
    summary = summarise([1.0, 2.0, 3.0, math.inf, math.nan])
    assert (summary.mean, summary.sd, summary.n) == (2.0, 1.0, 3)
    single = summarise([4.0])
    assert single.mean == 4.0 and math.isnan(single.sd) and single.n == 1
    assert summarise([]).n == 0 and math.isnan(summarise([]).mean)


def test_paired_ttest_matches_the_textbook_formula():
    reference = {"a": 0.80, "b": 0.85, "c": 0.90, "d": 0.70}
    other = {"a": 0.78, "b": 0.80, "c": 0.89, "d": 0.64, "unpaired": 0.1}
    differences = np.array([-0.02, -0.05, -0.01, -0.06])
    t = differences.mean() / (differences.std(ddof=1) / math.sqrt(4))
    p = 2 * student_t.sf(abs(t), df=3)
    test = paired_ttest(reference, other)
    assert test.n == 4
    assert test.t == pytest.approx(t, rel=1e-9)
    assert test.p == pytest.approx(p, rel=1e-9)
    assert test.mean_difference == pytest.approx(differences.mean())


def test_paired_ttest_is_undefined_below_two_pairs_and_skips_infinite_cases():
    test = paired_ttest({"a": 1.0, "b": math.inf}, {"a": 2.0, "b": 3.0})
    assert test.n == 1 and math.isnan(test.p) and test.mean_difference == 1.0
    assert format_p(test.p) == "n/a"
    assert format_p(3e-6) == "< 1e-4" and format_p(0.01234) == "0.0123"


def test_table2_reports_each_ablations_p_value(tmp_path):
    path = tmp_path / "cases.csv"
    path.write_text(
        "case,stage,dice,assd_mm\nc1,affine+local,0.9,1.0\nc2,affine+local,0.8,2.0\n"
        "c3,affine+local,0.85,1.5\nc1,affine,0.5,9.0\n"
    )
    full = MethodScores("full", read_cases(path, "affine+local"), steps=10)
    assert full.scores["c1"] == {"dice": 0.9, "assd_mm": 1.0}
    worse = MethodScores(
        "ablation",
        {
            "c1": {"dice": 0.8, "assd_mm": 1.5},
            "c2": {"dice": 0.75, "assd_mm": 2.1},
            "c3": {"dice": 0.7, "assd_mm": 2.5},
        },
        steps=10,
    )
    markdown, records = table2(full, [worse])
    expected = paired_ttest(
        {c: v["dice"] for c, v in full.scores.items()}, {c: v["dice"] for c, v in worse.scores.items()}
    )
    assert records[1]["dice_p"] == pytest.approx(expected.p) and 0 < expected.p < 1
    assert format_p(expected.p) in markdown.splitlines()[3]
    assert "p (Dice vs full)" in markdown.splitlines()[0]


def test_table1_puts_the_papers_figures_beside_ours():
    method = MethodScores(
        "ours",
        {"c1": {"dice": 0.9, "assd_mm": 1.0, "hd95_mm": 3.0, "time_s": 0.5}},
        {"dice": "0.94", "assd_mm": "0.84"},
        steps=5,
    )
    other = MethodScores("other", {"c1": {"dice": 0.5, "assd_mm": 4.0, "hd95_mm": 9.0, "time_s": 0.1}})
    markdown, records = table1([method, other])
    lines = markdown.splitlines()
    assert lines[2].endswith("| 0.94 | 0.84 |") and lines[3].endswith("| see paper | see paper |")
    assert records[0]["dice_mean"] == 0.9 and records[1]["steps"] is None


def test_angle_error_summary_averages_per_correction_and_angle():
    rows = [
        {
            "case": case,
            "angle_error_deg": error,
            "correction": correction,
            "dice": dice,
            "assd_mm": 1.0,
            "hd95_mm": 2.0,
            "ap_angle_used_deg": 0.5,
            "lat_angle_used_deg": 90.0 + error / 2,
            "correction_time_s": 1.0,
        }
        for case, dice in (("a", 0.8), ("b", 0.6))
        for error in (-5.0, 5.0)
        for correction in ("none", "per_view")
    ]
    summary = angle_error_summary(rows)
    assert len(summary) == 4
    record = next(r for r in summary if r["correction"] == "per_view" and r["angle_error_deg"] == 5.0)
    assert record["dice_mean"] == pytest.approx(0.7) and record["dice_sd"] == pytest.approx(math.sqrt(0.02))
    assert record["lat_residual_deg_mean"] == pytest.approx(2.5) and record["ap_residual_deg_mean"] == 0.5


def test_geometry_grid_summary_and_its_diagonal():
    rows = [
        {"case": case, "ap_angle_deg": ap, "lat_angle_deg": lat, "dice": 0.9 if lat - ap == 90 else 0.5, "assd_mm": 1.0}
        for case in ("a", "b")
        for ap in (-30.0, 0.0, 30.0)
        for lat in (60.0, 90.0, 120.0)
    ]
    summary = geometry_grid_summary(rows)
    assert len(summary) == 9 and all(record["cases"] == 2 for record in summary)
    assert diagonal_contrast(summary) == (pytest.approx(0.9), pytest.approx(0.5))


def test_budgets():
    assert set(BUDGETS) == {"tiny", "lite", "paper"}
    assert get_budget("lite").angle_errors_deg == tuple(float(a) for a in range(-10, 11))
    assert len(get_budget("lite").grid_offsets_deg) == 7 and get_budget("lite").subjects == 60
    assert get_budget("tiny").training_text(5) == "1 epoch, at most 2 steps"
    assert get_budget("paper").training_text(300) == "300 epochs"
    with pytest.raises(InputError, match="--budget"):
        get_budget("huge")
