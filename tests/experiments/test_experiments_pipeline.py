"""``biplanar experiments`` end to end on the tiny budget: the report, its tests, resume, reuse, the CLI.

The tests share one tiny run (about a minute) and run in order: a first run, a re-run that skips
every stage, the CLI with ``--docs``, SOPI networks that add the ``pose_sopi`` stage, then a reused
(shifted) full model that redoes only the stages scoring it.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import pytest
import torch
from scipy.stats import ttest_rel
from typer.testing import CliRunner

from biplanar.cli import app
from biplanar.errors import InputError
from biplanar.experiments import run_experiments
from biplanar.experiments.models import ABLATIONS, MODELS
from biplanar.experiments.report import KEPT_TAIL_MARKER
from biplanar.experiments.tables import read_cases
from biplanar.models.sopi import load_sopi_config
from biplanar.training.checkpoints import export_model
from biplanar.training.pose_trainer import train_pose

SECTIONS = (
    "## Table 1: comparison methods",
    "## Table 2: ablations",
    "## Fig. 3: a wrong LAO/RAO angle",
    "## Fig. 4: generalized geometries",
    "## Rigid pose estimation (SOPI's Table 1)",
)
PLOTS = ("results_dice_per_case.png", "results_fig3_angle_error.png", "results_fig4_geometry_grid.png")
SHIFT_MM = 8.0
TRANSLATION_X_UNIT_MM = 10.0  # a unit output of the affine dense layer's tx (biplanar.models.affine)
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("experiments") / "tiny"
    return run_experiments(out, "tiny", progress=False)


def _stage_times(out: Path) -> dict[str, int]:
    return {path.parent.name: path.stat().st_mtime_ns for path in out.glob("*/stage.json")}


def _table2_rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "table2.csv", newline="") as handle:
        return {row["model"]: row for row in csv.DictReader(handle)}


def _expected_p(out: Path, spec, metric: str) -> float:
    full = read_cases(out / "eval_full" / "cases.csv", "affine+local")
    ablation = read_cases(out / f"eval_{spec.name}" / "cases.csv", "affine+local")
    cases = sorted(full)
    return float(ttest_rel([ablation[c][metric] for c in cases], [full[c][metric] for c in cases]).pvalue)


def _check_p_values(out: Path) -> list[float]:
    """Table 2's p-values equal ttest_rel of the per-case scores; returns the Dice ones."""
    rows, values = _table2_rows(out), []
    for spec in ABLATIONS:
        for metric in ("dice", "assd_mm"):
            expected, reported = _expected_p(out, spec, metric), float(rows[spec.label][f"{metric}_p"])
            assert (math.isnan(expected) and math.isnan(reported)) or reported == pytest.approx(expected)
        values.append(float(rows[spec.label]["dice_p"]))
    return values


def test_first_run_writes_every_section_plot_and_table(run):
    out = run.out_dir
    expected_stages = [
        "data",
        *(f"train_{spec.name}" for spec in MODELS),
        *(f"eval_{spec.name}" for spec in MODELS if spec.name != "generalized"),
        "eval_optimisation",
        "fig3_angle_error",
        "fig4_geometry_grid",
        "pose_accuracy",
    ]
    assert run.ran == expected_stages and run.skipped == []
    text = run.results_md.read_text()
    for section in SECTIONS:
        assert section in text
    assert "biplanar experiments --out" in text and "--budget tiny" in text and "## Budget `tiny`" in text
    for name in PLOTS:
        data = (out / "img" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        assert f"](img/{name})" in text
    for name in ("table1.csv", "table2.csv", "fig3_angle_error.csv", "fig4_geometry_grid.csv", "pose_accuracy.csv"):
        assert (out / name).is_file()
    # every model trained with the same budget: 2 steps
    assert "| 2 |" in text and all(f"stage `train_{spec.name}`" in text for spec in MODELS)
    # Fig. 3: both corrections at every angle for both test cases; Fig. 4: 3 x 3 pairs per case
    with open(out / "fig3_angle_error" / "cases.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 2 * 3 * 2
    with open(out / "fig4_geometry_grid" / "cases.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 2 * 9


def test_pose_study_rows_and_section(run):
    """Tiny budget: one femur case at the small range, the identity start and the three baselines;
    no SOPI checkpoints, so its rows are named missing, and SOPI's published row stands beside."""
    with open(run.out_dir / "pose_accuracy" / "cases.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["dataset"], row["range"], row["method"]) for row in rows] == [
        ("femur", "small", method) for method in ("initial", "opt-gc", "opt-ncc", "opt-ngi")
    ]
    assert all(row["error"] == "" and math.isfinite(float(row["rotation_deg"])) for row in rows)
    with open(run.out_dir / "pose_accuracy.csv", newline="") as handle:
        assert [row["method"] for row in csv.DictReader(handle)] == ["initial", "opt-gc", "opt-ncc", "opt-ngi"]
    section = run.results_md.read_text().split("## Rigid pose estimation (SOPI's Table 1)")[1].split("\n## ")[0]
    assert "### femur, range small" in section and "| opt-gc | 1 |" in section
    assert "| SOPI as published" in section and "| 1.89 | 4.53 | 22.4% | 4.64 |" in section
    assert "Rows `sopi` and `sopi+opt` are missing for `femur`: no SOPI networks were given for it" in section


def test_table2_p_values_are_the_paired_ttests_of_the_cases(run):
    _check_p_values(run.out_dir)
    header = next(line for line in run.results_md.read_text().splitlines() if line.startswith("| model | cases"))
    assert "p (Dice vs full)" in header and "p (ASSD (mm) vs full)" in header


def test_rerun_skips_every_complete_stage(run):
    before = _stage_times(run.out_dir)
    again = run_experiments(run.out_dir, "tiny", progress=False)
    assert again.ran == [] and again.skipped == run.ran
    assert _stage_times(run.out_dir) == before
    assert "| `train_full` |" in again.results_md.read_text() and "no (complete before)" in again.results_md.read_text()


def test_cli_copies_the_report_into_docs(run, tmp_path):
    docs = tmp_path / "docs"
    result = runner.invoke(
        app, ["experiments", "--out", str(run.out_dir), "--budget", "tiny", "--docs", "--docs-dir", str(docs)]
    )
    assert result.exit_code == 0, result.output
    assert "0 stages run, 20 reused" in result.output
    assert (docs / "results.md").read_text() == run.results_md.read_text()
    assert all((docs / "img" / name).is_file() for name in PLOTS)
    tail = f"{KEPT_TAIL_MARKER}\n\n## Another command's section\n"
    (docs / "results.md").write_text("stale\n\n" + tail)
    result = runner.invoke(
        app, ["experiments", "--out", str(run.out_dir), "--budget", "tiny", "--docs", "--docs-dir", str(docs)]
    )
    assert result.exit_code == 0, result.output
    assert (docs / "results.md").read_text() == run.results_md.read_text().rstrip("\n") + "\n\n" + tail


def test_another_budget_or_a_foreign_folder_is_refused(run, tmp_path):
    with pytest.raises(InputError, match="holds a 'tiny' run"):
        run_experiments(run.out_dir, "lite", progress=False)
    (tmp_path / "eval_full").mkdir()
    with pytest.raises(InputError, match="not an experiments folder"):
        run_experiments(tmp_path, "tiny", progress=False)
    assert (tmp_path / "eval_full").is_dir()


def test_cli_errors_are_one_line(tmp_path):
    result = runner.invoke(
        app,
        ["experiments", "--out", str(tmp_path / "x"), "--budget", "tiny", "--model-full", str(tmp_path / "missing.pt")],
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"biplanar: error: --model-full {tmp_path / 'missing.pt'}: file not found"
    ]
    assert runner.invoke(app, ["experiments", "--out", str(tmp_path / "x"), "--budget", "huge"]).exit_code == 2
    (tmp_path / "rtpi.pt").touch()
    result = runner.invoke(
        app,
        [
            "experiments",
            "--out",
            str(tmp_path / "x"),
            "--budget",
            "tiny",
            "--sopi-rtpi",
            f"femur={tmp_path / 'rtpi.pt'}",
        ],
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "biplanar: error: --sopi-rtpi, --sopi-fine: give both SOPI "
        "checkpoints for the same datasets, got femur and none"
    ]


def test_sopi_networks_add_a_pose_sopi_stage(run, tmp_path):
    """Two-step SOPI networks at the femur dataset's image size: the stage ``pose_sopi`` scores sopi and
    sopi+opt on the femur case alone, the baselines' stage is reused, and the section shows both."""
    tiny = load_sopi_config("sopi_tiny")
    femur_sized = dataclasses.replace(
        tiny,
        geometry=dataclasses.replace(tiny.geometry, grid_preset="lite", image_shape=(112, 80), pixel_spacing_mm=1.86),
    )
    checkpoints = {
        network: train_pose(femur_sized, tmp_path / network, network, steps=2, progress=False).last_checkpoint
        for network in ("rtpi", "fine")
    }
    result = run_experiments(
        run.out_dir,
        "tiny",
        progress=False,
        sopi_rtpi=[f"femur={checkpoints['rtpi']}"],
        sopi_fine=[f"femur={checkpoints['fine']}"],
    )
    assert result.ran == ["pose_sopi"]
    with open(run.out_dir / "pose_sopi" / "cases.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["method"] for row in rows] == ["initial", "sopi", "sopi+opt"]
    assert all(row["error"] == "" and math.isfinite(float(row["rotation_deg"])) for row in rows)
    section = result.results_md.read_text().split("## Rigid pose estimation (SOPI's Table 1)")[1].split("\n## ")[0]
    assert "| opt-gc | 1 |" in section and "| sopi | 1 |" in section and "| sopi+opt | 1 |" in section
    assert section.count("| initial | 1 |") == 1 and "are missing" not in section
    assert f"--sopi-rtpi femur={checkpoints['rtpi']}" in section


def test_a_reused_full_model_redoes_only_the_stages_that_score_it(run, tmp_path):
    """A full model shifted by 8 mm: Tables 1-2 and Fig. 3 are redone with it, and the ablations now
    differ from it case by case, so the paired tests have p-values."""
    shifted = export_model(run.out_dir / "train_full" / "last.pt", tmp_path / "shifted.pt")
    state = torch.load(shifted, weights_only=True)
    state["model"]["affine.dense.bias"][3] += SHIFT_MM / TRANSLATION_X_UNIT_MM
    torch.save(state, shifted)
    result = run_experiments(run.out_dir, "tiny", model_full=shifted, progress=False)
    assert result.ran == ["eval_full", "fig3_angle_error"]
    text = result.results_md.read_text()
    assert f"reused checkpoint `{shifted.resolve()}`" in text and "--model-full" in text
    dice_p = _check_p_values(run.out_dir)
    assert all(0.0 <= p <= 1.0 for p in dice_p)
    full = read_cases(run.out_dir / "eval_full" / "cases.csv", "affine+local")
    ablation = read_cases(run.out_dir / "eval_no_skip" / "cases.csv", "affine+local")
    assert all(full[case]["dice"] < ablation[case]["dice"] for case in full)  # the shift costs overlap


def test_single_stages_run_once_their_prerequisites_are_complete(run, tmp_path):
    out = tmp_path / "stages"
    with pytest.raises(InputError, match="--stage train_kasten: needs stage data"):
        run_experiments(out, "tiny", progress=False, stage="train_kasten")
    assert run_experiments(out, "tiny", progress=False, stage="pose_accuracy").ran == ["pose_accuracy"]  # no data
    assert run_experiments(out, "tiny", progress=False, stage="data").ran == ["data"]
    with pytest.raises(InputError, match="--stage eval_kasten: needs stage train_kasten"):
        run_experiments(out, "tiny", progress=False, stage="eval_kasten")
    trained = run_experiments(out, "tiny", progress=False, stage="train_kasten")
    assert trained.ran == ["train_kasten"] and trained.skipped == ["data"]
    assert not (out / "results.md").exists() and not (out / "train_full").exists()
    assert run_experiments(out, "tiny", progress=False, stage="eval_kasten").ran == ["eval_kasten"]
    with pytest.raises(InputError, match="--stage: expected one of data, train_full"):
        run_experiments(out, "tiny", progress=False, stage="report")
    assert run_experiments(run.out_dir, "tiny", progress=False, stage="fig4_geometry_grid").ran == []


def test_cli_runs_one_stage(run):
    result = runner.invoke(app, ["experiments", "--out", str(run.out_dir), "--budget", "tiny", "--stage", "eval_sdm"])
    assert result.exit_code == 0, result.output
    assert "stage eval_sdm: complete before" in result.output
