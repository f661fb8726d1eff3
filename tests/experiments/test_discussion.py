"""The computed discussion of results.md: ranking, significance and the geometry studies, on crafted scores."""

from __future__ import annotations

from biplanar.experiments.discussion import discussion_section, fig3_lines, fig4_lines, table1_lines, table2_lines
from biplanar.experiments.tables import MethodScores

CASES = [f"case_{i}" for i in range(6)]
NOISE = [0.004, -0.003, 0.001, -0.002, 0.002, -0.002]  # sums to 0


def _method(label: str, dice: list[float], assd: list[float] | None = None) -> MethodScores:
    assd = assd or [1.0] * len(dice)
    return MethodScores(label, {case: {"dice": d, "assd_mm": a} for case, d, a in zip(CASES, dice, assd)})


FULL = _method("ours", [0.95 + n for n in NOISE], [0.8] * 6)
AFFINE = _method("affine", [0.88 + 2 * n for n in NOISE], [1.8 + n for n in NOISE])
WORSE = _method("worse", [0.90 + n + 0.002 * (i % 2) for i, n in enumerate(NOISE)])
SAME = _method("same", [0.95 + n + (0.001 if i % 2 else -0.001) for i, n in enumerate(NOISE)])


def test_table1_ranks_by_mean_dice_and_tests_each_other_row():
    lines = table1_lines([FULL, AFFINE, WORSE], FULL, AFFINE)
    assert "ours (0.950) > worse (0.901) > affine (0.880)" in lines[0] and "ranks 1 of 3" in lines[0]
    assert "Dice of affine minus ours: -0.070" in lines[1] and "significant at 0.05" in lines[1]
    assert "Local stage against affine stage, ASSD (mm): -1.000" in lines[3]


def test_table2_counts_significant_ablations():
    lines = table2_lines(FULL, [WORSE, SAME])
    assert "1 of 2 ablations are significantly worse" in lines[0] and "0 significantly better" in lines[0]
    assert "same: Dice minus the full model's +0.000" in lines[2] and "not significant" in lines[2]


def test_fig3_compares_plus_minus_five_degrees_with_the_calibrated_dice():
    summary = [
        {"correction": c, "angle_error_deg": e, "dice_mean": d}
        for c, e, d in (
            ("none", 0.0, 0.95),
            ("none", -5.0, 0.90),
            ("none", 5.0, 0.92),
            ("per_view", -5.0, 0.945),
            ("per_view", 5.0, 0.947),
        )
    ]
    (line,) = fig3_lines(summary)
    assert "calibrated Dice is 0.950" in line
    assert "uncorrected 0.910 (-0.040)" in line and "with the per-view pose correction 0.946 (-0.004)" in line


def test_fig4_contrasts_near_orthogonal_pairs_with_the_others():
    summary = [
        {
            "ap_angle_deg": ap,
            "lat_angle_deg": lat,
            "angle_between_deg": lat - ap,
            "dice_mean": 0.95 - abs(lat - ap - 90.0) / 1000,
        }
        for ap in (-30.0, 0.0, 30.0)
        for lat in (60.0, 90.0, 120.0)
    ]
    (line,) = fig4_lines(summary)
    assert "80 to 100 deg apart is 0.950 (3 pairs)" in line and "others 0.910 (6 pairs)" in line
    assert "AP -30, LAT 60 deg (90 deg apart)" in line


def test_section_has_a_title_and_the_power_caveat():
    lines = discussion_section([FULL, AFFINE], FULL, AFFINE, [SAME], [], [], cases=6)
    assert lines[0].startswith("## Discussion") and "With 6 test cases" in lines[2]


def test_tiny_p_values_read_as_an_inequality():
    far = _method("far", [0.80 + n for n in NOISE])
    (_, line) = table2_lines(FULL, [far])
    assert "p < 1e-4" in line and "p = <" not in line
