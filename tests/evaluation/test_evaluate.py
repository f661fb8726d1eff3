"""``biplanar evaluate`` end to end on a 3-case tiny dataset, and its helpers."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from biplanar.cli import app
from biplanar.data.simulate import SimulationConfig, simulate_dataset
from biplanar.evaluation.evaluate import REFINED_STAGE, STAGES, evaluate, summarise, write_study
from biplanar.geometry.presets import biplanar_pair
from biplanar.geometry.projection import ProjectionView, view_angles_deg
from biplanar.registration import register

CASES = ["case_00000", "case_00001", "case_00002"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three tiny generalized-geometry subjects, all in the test split."""
    root = tmp_path_factory.mktemp("data") / "tiny"
    simulate_dataset(
        root, 3, 11, SimulationConfig(preset="tiny", geometry="generalized", num_samples=64), progress=False
    )
    (root / "split.json").write_text(json.dumps({"train": [], "val": [], "test": CASES}))
    return root


@pytest.fixture(scope="module")
def evaluation(tiny_model, dataset, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("eval") / "out"
    result = CliRunner().invoke(
        app, ["evaluate", "--model", str(tiny_model), "--data", str(dataset), "--out", str(out_dir)]
    )
    return out_dir, result


def _read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_writes_one_row_per_case_and_stage(evaluation, dataset):
    out_dir, result = evaluation
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in out_dir.iterdir()) == ["cases.csv", "summary.json", "summary.md"]
    rows = _read_rows(out_dir / "cases.csv")
    assert [(row["case"], row["stage"]) for row in rows] == [(case, stage) for case in CASES for stage in STAGES]
    for row in rows:
        assert 0.0 <= float(row["dice"]) <= 1.0 and 0.0 <= float(row["jaccard"]) <= float(row["dice"])
        assert -1.0 <= float(row["ssim"]) <= 1.0 and float(row["time_s"]) > 0
        assert {"hip_head_centre_error_mm", "hip_neck_shaft_angle_error_deg"} <= set(row)
        assert 0.0 <= float(row["folded_cells_percent"]) <= 100.0
        if row["stage"] == "affine":  # a similarity: det = scale^3 > 0 in every cell
            assert float(row["folded_cells_percent"]) == 0.0 and float(row["smallest_jacobian_determinant"]) > 0.0
    for case in CASES:
        geometry = json.loads((dataset / "subjects" / case / "geometry.json").read_text())["views"]
        row = next(row for row in rows if row["case"] == case)
        assert float(row["ap_lao_rao_deg"]) == pytest.approx(geometry["AP"]["carm"]["lao_rao_deg"], abs=1e-6)
        assert float(row["lat_lao_rao_deg"]) == pytest.approx(geometry["LAT"]["carm"]["lao_rao_deg"], abs=1e-6)


def test_affine_stage_time_is_part_of_the_full_pass(evaluation):
    rows = _read_rows(evaluation[0] / "cases.csv")
    for affine, full in zip(rows[0::2], rows[1::2]):
        assert 0 < float(affine["time_s"]) < float(full["time_s"])


def test_summary_is_the_mean_and_sd_of_the_rows(evaluation):
    out_dir, result = evaluation
    rows = _read_rows(out_dir / "cases.csv")
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["cases"] == 3 and summary["split"] == "test" and "mu" in summary["ssim"]
    for stage in STAGES:
        for metric in ("dice", "assd_mm", "ssim", "time_s"):
            values = [float(row[metric]) for row in rows if row["stage"] == stage]
            entry = summary["stages"][stage][metric]
            assert entry["mean"] == pytest.approx(np.mean(values))
            assert entry["sd"] == pytest.approx(np.std(values, ddof=1))
            assert entry["n"] == 3
    markdown = (out_dir / "summary.md").read_text()
    dice = summary["stages"]["affine+local"]["dice"]
    assert f"{dice['mean']:.3f} ± {dice['sd']:.3f}" in markdown
    assert markdown.strip() in result.output


def test_full_stage_matches_register_on_the_same_case(evaluation, tiny_model, dataset, tmp_path):
    row = next(
        row
        for row in _read_rows(evaluation[0] / "cases.csv")
        if row["case"] == CASES[1] and row["stage"] == "affine+local"
    )
    subject = dataset / "subjects" / CASES[1]
    report = register(
        subject / "geometry.json",
        subject / "AP.npy",
        subject / "LAT.npy",
        tmp_path / "reg",
        tiny_model,
        ap_mask=subject / "AP_mask.npy",
        lat_mask=subject / "LAT_mask.npy",
        truth_labels=subject / "labels.nii.gz",
        refine=0,  # the network alone (register refines a flagged result by itself)
        progress=False,
    ).report
    for metric in ("dice", "jaccard", "assd_mm", "hd95_mm"):
        assert float(row[metric]) == pytest.approx(report[metric], rel=1e-5, abs=1e-6)


def test_limit_refine_and_bad_inputs(tiny_model, dataset, tmp_path):
    result = evaluate(tiny_model, dataset, tmp_path / "one", limit=1, refine=2, progress=False)
    assert [(row["case"], row["stage"]) for row in result.rows] == [
        (CASES[0], stage) for stage in (*STAGES, REFINED_STAGE)
    ]
    assert result.rows[2]["time_s"] > result.rows[1]["time_s"]
    assert set(result.summary) == {*STAGES, REFINED_STAGE}
    runner = CliRunner()
    busy = runner.invoke(
        app, ["evaluate", "--model", str(tiny_model), "--data", str(dataset), "--out", str(tmp_path / "one")]
    )
    assert busy.exit_code == 2 and "not an empty folder" in busy.output
    other = tmp_path / "lite"
    other.mkdir()
    (other / "dataset.json").write_text(json.dumps({"config": {"preset": "lite"}}))
    (other / "split.json").write_text(json.dumps({"test": []}))
    mismatch = runner.invoke(
        app, ["evaluate", "--model", str(tiny_model), "--data", str(other), "--out", str(tmp_path / "two")]
    )
    assert mismatch.exit_code == 2 and "dataset.json" in mismatch.output and "tiny" in mismatch.output
    assert len(mismatch.output.strip().splitlines()) == 1
    assert not (tmp_path / "two").exists()


def test_view_angles_of_carm_views():
    rng = np.random.default_rng(4)
    for ap, lat, cranio in zip(rng.uniform(-30, 30, 5), rng.uniform(60, 120, 5), rng.uniform(-20, 20, 5)):
        from biplanar.geometry.projection import CarmPose

        view = ProjectionView.from_carm(CarmPose(float(lat), float(cranio)), (8, 8), np.zeros(3))
        assert view_angles_deg(view) == pytest.approx((lat, cranio), abs=1e-9)
        pair = biplanar_pair(float(ap), float(lat), image_shape=(8, 8))
        assert view_angles_deg(pair["AP"])[0] == pytest.approx(ap, abs=1e-9)
    # A plain matrix (no C-arm record) gets the angles of its viewing direction.
    lateral = biplanar_pair(0.0, 90.0)["LAT"]
    assert view_angles_deg(ProjectionView(lateral.matrix * 3.0, lateral.image_shape)) == pytest.approx((90.0, 0.0))


def test_summarise_skips_non_finite_values():
    rows = [
        {"case": "a", "stage": "s", "dice": 0.5, "assd_mm": math.inf},
        {"case": "b", "stage": "s", "dice": 0.7, "assd_mm": 2.0},
        {"case": "c", "stage": "s", "dice": 0.9, "assd_mm": 4.0},
    ]
    summary = summarise(rows)["s"]
    assert summary["dice"] == {"mean": pytest.approx(0.7), "sd": pytest.approx(0.2), "n": 3}
    assert summary["assd_mm"] == {"mean": pytest.approx(3.0), "sd": pytest.approx(math.sqrt(2.0)), "n": 2}


def test_a_study_writes_its_cases_and_summary_whole(tmp_path, capsys):
    rows = [{"case": 0, "dice": 0.9}, {"case": 1, "route": "b", "dice": 0.8}]
    write_study(tmp_path / "study", rows, "| a | b |", "summary.md")
    assert (tmp_path / "study" / "cases.csv").read_text() == "case,dice,route\n0,0.9,\n1,0.8,b\n"
    assert (tmp_path / "study" / "summary.md").read_text() == "| a | b |\n"
    assert capsys.readouterr().out == "| a | b |\n"
    assert sorted(path.name for path in (tmp_path / "study").iterdir()) == ["cases.csv", "summary.md"]
