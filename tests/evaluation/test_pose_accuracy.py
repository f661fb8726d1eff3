"""The rigid-pose accuracy study (``biplanar evaluate-pose``): scoring, pose sampling, margins, summary, CLI."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from biplanar.cli import app
from biplanar.errors import InputError
from biplanar.evaluation import pose_accuracy
from biplanar.evaluation.pose_accuracy import (
    DATASETS,
    PoseRange,
    StudySettings,
    check_inputs,
    covering_margin_mm,
    pose_from_draw,
    score,
    sopi_checkpoints,
    standard_draws,
    summarise_rows,
    tables_markdown,
    views_for,
)
from biplanar.geometry.transforms import rigid_matrix, rigid_params
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.pose.estimate import SopiCheckpoints

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
runner = CliRunner()
CENTRE = np.array([10.0, -20.0, 30.0])


def _pose(rx_deg=0.0, ry_deg=0.0, rz_deg=0.0, tx=0.0, ty=0.0, tz=0.0, centre=CENTRE) -> torch.Tensor:
    params = torch.tensor([*np.radians([rx_deg, ry_deg, rz_deg]), tx, ty, tz], dtype=torch.float64)
    return rigid_matrix(params, torch.as_tensor(centre))


def test_the_true_pose_scores_zero_and_succeeds():
    truth = _pose(4.0, -3.0, 2.0, 6.0, -8.0, 5.0)
    row = score(truth, truth, CENTRE)
    assert row.pop("success") == 1.0
    assert all(value == pytest.approx(0.0, abs=1e-9) for value in row.values())


@pytest.mark.parametrize("tx_mm, success", [(4.0, 0.0), (2.0, 1.0)])
def test_a_known_offset_gives_its_errors(tx_mm, success):
    """The truth moved by 2 deg about z (about the moved centre) and tx_mm along x: errors 2 deg, tx_mm mm."""
    truth = _pose(4.0, -3.0, 2.0, 6.0, -8.0, 5.0)
    moved_centre = truth[:3, :3] @ torch.as_tensor(CENTRE) + truth[:3, 3]
    offset = _pose(rz_deg=2.0, tx=tx_mm, centre=moved_centre.numpy())
    row = score(offset @ truth, truth, CENTRE)
    assert row["rotation_deg"] == pytest.approx(2.0, abs=1e-9)
    assert row["translation_mm"] == pytest.approx(tx_mm, abs=1e-9)
    assert row["success"] == success
    # from the identity, the per-axis errors are the offset's own parameters
    axes = score(_pose(rz_deg=2.0, tx=tx_mm), torch.eye(4, dtype=torch.float64), CENTRE)
    assert [axes[f"{axis}_{unit}"] for axis, unit in pose_accuracy.AXES] == pytest.approx(
        [0.0, 0.0, 2.0, tx_mm, 0.0, 0.0], abs=1e-9
    )


@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize("range_name", ["small", "wide"])
def test_sampled_poses_have_the_stated_sigmas(dataset, range_name):
    """Over 4000 draws, each parameter about the CT centre has mean ~0 and sd ~ the range's sigma."""
    pose_range = DATASETS[dataset].ranges[range_name]
    poses = pose_from_draw(standard_draws(0, dataset, 4000), pose_range, CENTRE)
    params = rigid_params(poses, torch.as_tensor(CENTRE)).numpy()
    sigmas = np.array([math.radians(pose_range.sigma_deg)] * 3 + [pose_range.sigma_mm] * 3)
    assert params.std(axis=0) == pytest.approx(sigmas, rel=0.05)
    assert np.all(np.abs(params.mean(axis=0)) < 0.1 * sigmas)


def test_the_stated_ranges():
    assert DATASETS["lumbar"].ranges == {"small": PoseRange(5.0, 10.0), "wide": PoseRange(20.0, 30.0)}
    assert DATASETS["femur"].ranges == {"small": PoseRange(5.0, 5.0), "wide": PoseRange(20.0, 15.0)}


def test_ranges_scale_the_same_draws_and_datasets_differ():
    draws = standard_draws(3, "femur", 2)
    assert np.array_equal(draws, standard_draws(3, "femur", 2))
    assert not np.allclose(draws, standard_draws(3, "lumbar", 2))
    ranges = DATASETS["femur"].ranges
    small, wide = (
        rigid_params(pose_from_draw(draws, ranges[name], CENTRE), torch.as_tensor(CENTRE)) for name in ("small", "wide")
    )
    assert (wide[:, :3] / small[:, :3]).numpy() == pytest.approx(np.full((2, 3), 4.0))
    assert (wide[:, 3:] / small[:, 3:]).numpy() == pytest.approx(np.full((2, 3), 3.0))


def test_covering_margin_is_the_depth_shift_of_a_translation():
    """Moving the CT 10 mm along y (the AP view's principal axis) needs 10 mm more depth; along z, none."""
    grid = VolumeGrid.from_spacing((20, 16, 24), (2.0, 2.0, 2.0))
    views = views_for(DATASETS["femur"], grid)
    assert covering_margin_mm(views, grid, _pose(ty=10.0, centre=grid.centre_world)) == pytest.approx(10.0)
    assert covering_margin_mm(views, grid, _pose(tz=10.0, centre=grid.centre_world)) == pytest.approx(0.0, abs=1e-9)


def _row(method: str, success: float, rotation: float, error: str = "") -> dict:
    return {
        "dataset": "femur",
        "range": "small",
        "case": 0,
        "method": method,
        "rotation_deg": rotation,
        "translation_mm": 1.0,
        **{f"{axis}_{unit}": 0.5 for axis, unit in pose_accuracy.AXES},
        "success": success,
        "time_s": 2.0,
        "error": error,
    }


def test_summary_failure_rate_and_failed_methods():
    rows = [_row("opt-gc", s, r) for s, r in ((1.0, 1.0), (0.0, 9.0), (1.0, 2.0), (1.0, 0.0))]
    rows += [_row("opt-gc", math.nan, math.nan, "boom"), _row("sopi", math.nan, math.nan, "no networks")]
    gc, sopi = summarise_rows(rows)
    assert (gc["n"], gc["failed"], gc["failure_rate"]) == (4, 1, pytest.approx(0.25))
    assert gc["rotation_deg_mean"] == pytest.approx(3.0)
    assert gc["rotation_deg_sd"] == pytest.approx(np.std([1.0, 9.0, 2.0, 0.0], ddof=1))
    assert sopi["n"] == 0 and math.isnan(sopi["failure_rate"])
    text = tables_markdown([gc, sopi])
    assert "| opt-gc | 4 | 3.00 ± 4.08 | 1.00 ± 0.00 | 25% | 2.0 |" in text
    assert "| sopi | 0 | n/a | n/a | n/a |" in text
    assert "sopi: raised on 1 case(s)" in text and "| SOPI as published" in text and "| 22.4% | 4.64 |" in text


def test_missing_inputs_are_refused_before_any_work(tmp_path):
    check_inputs(StudySettings(datasets=("lumbar", "femur")), {})
    with pytest.raises(InputError, match="need the SOPI checkpoints"):
        check_inputs(StudySettings(datasets=("femur",), methods=("sopi",)), {})
    lumbar_only = {"lumbar": SopiCheckpoints(tmp_path / "r.pt", tmp_path / "f.pt")}
    with pytest.raises(InputError, match="of one of the datasets femur"):
        check_inputs(StudySettings(datasets=("femur",), methods=("sopi",)), lumbar_only)
    with pytest.raises(InputError, match="--ranges"):
        StudySettings(ranges=("huge",))


def test_cli_end_to_end_on_one_femur_case(tmp_path):
    out = tmp_path / "pose"
    result = runner.invoke(
        app,
        [
            "evaluate-pose",
            "--out",
            str(out),
            "--datasets",
            "femur",
            "--ranges",
            "small",
            "--n",
            "1",
            "--methods",
            "opt-gc",
            "--evaluations",
            "12",
            "--refine-steps",
            "0",
            "--max-levels",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    with open(out / "cases.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["method"] for row in rows] == ["initial", "opt-gc"]
    assert float(rows[0]["rotation_deg"]) > 0.0 and rows[1]["error"] == ""
    summary = (out / "summary.md").read_text()
    assert "### femur, range small (sigma_r 5 deg, sigma_t 5 mm per axis; levels 6 mm)" in summary
    assert "| opt-gc | 1 |" in summary and "| initial | 1 |" in summary


def test_clinical_cases_show_processed_images_and_rows_carry_the_similarities():
    femur, draw = DATASETS["femur"], standard_draws(0, "femur", 1)[0]
    plain = pose_accuracy._make_case(femur, "small", 0, draw, StudySettings())
    clinical = pose_accuracy._make_case(femur, "small", 0, draw, StudySettings(appearance="clinical"))
    again = pose_accuracy._make_case(femur, "small", 0, draw, StudySettings(appearance="clinical"))
    for name, image in clinical.radiographs.items():
        assert torch.equal(image, again.radiographs[name])  # appearance and noise seeded by the case
        assert torch.equal(image, image.round()) and image.min() >= 0 and image.max() <= 4095
        assert image.shape == plain.radiographs[name].shape
    truth, identity = clinical.row("truth", clinical.truth, 0.0), clinical.row("identity", torch.eye(4).double(), 0.0)
    assert 0.8 < truth["gc"] < 0.999 and identity["gc"] < truth["gc"] - 0.3  # a processed image is no DRR
    assert plain.row("truth", plain.truth, 0.0)["gc"] > 0.999
    with pytest.raises(InputError, match="--appearance"):
        StudySettings(appearance="film")


def test_sopi_checkpoints_per_dataset(tmp_path):
    paths = {name: tmp_path / f"{name}.pt" for name in ("r_all", "f_all", "r_femur", "f_femur")}
    for path in paths.values():
        path.touch()
    both = sopi_checkpoints(
        [f"femur={paths['r_femur']}", str(paths["r_all"])], [str(paths["f_all"]), f"femur={paths['f_femur']}"]
    )
    assert both == {
        "lumbar": SopiCheckpoints(paths["r_all"], paths["f_all"]),
        "femur": SopiCheckpoints(paths["r_femur"], paths["f_femur"]),
    }
    assert sopi_checkpoints(None, None) == {}
    settings = StudySettings(datasets=("lumbar", "femur"), ranges=("small",), cases=2, methods=("opt-gc", "sopi"))
    femur_only = sopi_checkpoints(f"femur={paths['r_femur']}", f"femur={paths['f_femur']}")
    assert settings.methods_for("lumbar", femur_only) == ("opt-gc",)
    assert settings.methods_for("femur", femur_only) == ("opt-gc", "sopi")
    assert settings.runs(femur_only) == 2 * 1 + 2 * 2
    with pytest.raises(InputError, match="same datasets, got femur and lumbar, femur"):
        sopi_checkpoints(f"femur={paths['r_femur']}", str(paths["f_all"]))
    with pytest.raises(InputError, match="--rtpi knee=.*unknown dataset 'knee'"):
        sopi_checkpoints(f"knee={paths['r_femur']}", None)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--datasets", "knee"], "--datasets: expected some of lumbar, femur, got knee"),
        (["--rtpi", "a.pt"], "--rtpi a.pt: file not found"),
        (["--methods", "sopi"], "--methods sopi, sopi+opt: need the SOPI checkpoints"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, arguments, message):
    result = runner.invoke(app, ["evaluate-pose", "--out", str(tmp_path / "x"), *arguments])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"biplanar: error: {message}")
    assert not (tmp_path / "x").exists()
