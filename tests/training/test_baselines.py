"""Baseline training: an epoch of each method, exact resume, the SDM files, reloading, prediction, refusals, CLI."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from biplanar.cli import app
from biplanar.config import load_config
from biplanar.data.atlas import load_atlas
from biplanar.data.datasets import SimulatedDataset
from biplanar.errors import InputError
from biplanar.models.kasten import KastenNet
from biplanar.models.network import AtlasRegistrationNet
from biplanar.models.sdm import DeformationPCA, SDMNet
from biplanar.optimisation.volume_registration import VolumeRegistrationSettings
from biplanar.training.baselines import (
    SDM_FIELDS,
    SDM_MODEL,
    SDM_REGISTRATION_CSV,
    SdmSettings,
    csv_fields,
    load_baseline,
    predict_labels,
    train_baseline,
)
from biplanar.training.checkpoints import load_checkpoint
from biplanar.training.trainer import TrainingRun, make_batch

FAST_REGISTRATION = VolumeRegistrationSettings(levels=((4, 10),))  # a rough field, enough to test the plumbing


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def sdm_run(five_subjects, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sdm")
    result = train_baseline(
        "sdm",
        "tiny",
        TrainingRun(out, data_dir=five_subjects, epochs=1, progress=False),
        SdmSettings(registration=FAST_REGISTRATION),
    )
    assert (result.epochs_completed, result.global_step) == (1, 3)
    return out


def first_sample_batch(data: Path):
    return make_batch([SimulatedDataset(data, "val")[0]], load_config("tiny").geometry.image_shape, torch.device("cpu"))


def test_kasten_epoch_writes_its_outputs_and_reloads(five_subjects, tmp_path):
    result = train_baseline("kasten", "tiny", TrainingRun(tmp_path, data_dir=five_subjects, epochs=1, progress=False))
    assert (result.epochs_completed, result.global_step) == (1, 3)
    assert all(math.isfinite(row["total"]) for row in result.step_losses)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert tuple(rows[0]) == csv_fields("kasten") and len(rows) == 1
    assert 0.0 <= float(rows[0]["val_dice"]) <= 1.0
    assert load_checkpoint(result.last_checkpoint)["method"] == "kasten"
    model, config = load_baseline(result.best_checkpoint)
    assert isinstance(model, KastenNet) and not model.training
    assert (config.name, config.training.epochs) == ("tiny", 1)
    batch = first_sample_batch(five_subjects)
    with torch.no_grad():
        probabilities = predict_labels(model, batch.radiographs, batch.views)
    assert probabilities.shape == (1, 1, 48, 32, 48)
    assert float(probabilities.min()) >= 0.0 and float(probabilities.max()) <= 1.0


def test_kasten_resume_after_a_stop_continues_exactly(five_subjects, tmp_path):
    """Steps 2-3 of a run stopped after step 1 and resumed have the losses of an uninterrupted run."""
    whole = train_baseline(
        "kasten", "tiny", TrainingRun(tmp_path / "whole", data_dir=five_subjects, epochs=1, progress=False)
    )
    train_baseline(
        "kasten", "tiny", TrainingRun(tmp_path / "split", data_dir=five_subjects, epochs=1, progress=False, max_steps=1)
    )
    second = train_baseline(
        "kasten", "tiny", TrainingRun(tmp_path / "split", data_dir=five_subjects, epochs=1, progress=False, resume=True)
    )
    assert [row["step"] for row in second.step_losses] == [2, 3]
    for resumed, uninterrupted in zip(second.step_losses, whole.step_losses[1:]):
        assert resumed["total"] == pytest.approx(uninterrupted["total"], abs=1e-6, rel=0)
    weights = [load_checkpoint(result.last_checkpoint)["model"] for result in (whole, second)]
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, rtol=0, atol=1e-6)


def test_sdm_builds_its_model_from_the_training_subjects(sdm_run, five_subjects):
    train_ids = SimulatedDataset(five_subjects, "train").subject_ids
    assert sorted(path.stem for path in (sdm_run / SDM_FIELDS).glob("*.npz")) == train_ids
    rows = list(csv.DictReader((sdm_run / SDM_REGISTRATION_CSV).open()))
    assert [row["subject_id"] for row in rows] == train_ids
    assert all(float(row["time_s"]) > 0 and 0 <= float(row["dice_after"]) <= 1 for row in rows)
    pca = DeformationPCA.load(sdm_run / SDM_MODEL)
    assert 1 <= pca.num_components <= 2 and pca.factor == 4  # 3 fields span at most 2 directions
    with np.load(sdm_run / SDM_MODEL) as archive:
        assert sorted(archive["subject_ids"]) == train_ids and archive["weights"].shape == (3, pca.num_components)
    rows = list(csv.DictReader((sdm_run / "metrics.csv").open()))
    assert tuple(rows[0]) == csv_fields("sdm")
    assert all(math.isfinite(float(rows[0][name])) for name in csv_fields("sdm"))


def test_sdm_checkpoint_alone_rebuilds_the_model(sdm_run, five_subjects):
    model, _ = load_baseline(sdm_run / "best.pt")
    assert isinstance(model, SDMNet)
    np.testing.assert_array_equal(model.pca.components, DeformationPCA.load(sdm_run / SDM_MODEL).components)
    batch = first_sample_batch(five_subjects)
    with torch.no_grad():
        probabilities = predict_labels(model, batch.radiographs, batch.views)
    assert probabilities.shape == (1, 1, 48, 32, 48)


def test_sdm_resume_reuses_the_model_files(sdm_run, five_subjects):
    model_file = sdm_run / SDM_MODEL
    stamp = model_file.stat().st_mtime_ns
    result = train_baseline(
        "sdm",
        "tiny",
        TrainingRun(sdm_run, data_dir=five_subjects, epochs=2, progress=False, resume=True, max_steps=4),
        SdmSettings(registration=FAST_REGISTRATION),
    )
    assert result.global_step == 4 and model_file.stat().st_mtime_ns == stamp


def test_predict_labels_of_the_registration_network(five_subjects):
    network = AtlasRegistrationNet(load_config("tiny"), load_atlas("tiny")).eval()
    batch = first_sample_batch(five_subjects)
    with torch.no_grad():
        probabilities = predict_labels(network, batch.radiographs, batch.views)
        torch.testing.assert_close(probabilities, network(batch.radiographs, batch.views).warped_labels)


def test_refusals(five_subjects, sdm_run, tmp_path):
    with pytest.raises(InputError, match="method"):
        train_baseline("unet", "tiny", TrainingRun(tmp_path, data_dir=five_subjects, progress=False))
    with pytest.raises(InputError, match="a sdm run, not kasten"):
        train_baseline("kasten", "tiny", TrainingRun(sdm_run, data_dir=five_subjects, progress=False, resume=True))
    with pytest.raises(InputError, match="holds a training run"):
        train_baseline("sdm", "tiny", TrainingRun(sdm_run, data_dir=five_subjects, progress=False))
    with pytest.raises(InputError, match="geometry.grid_preset"):
        train_baseline("kasten", "lite", TrainingRun(tmp_path, data_dir=five_subjects, progress=False))
    torch.save({"weights": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="not a biplanar checkpoint"):
        load_baseline(tmp_path / "bad.pt")


def test_cli_trains_a_baseline_and_reports_bad_input(five_subjects, tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "train-baseline",
            "--method",
            "kasten",
            "--config",
            "tiny",
            "--data",
            str(five_subjects),
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "trained kasten for 1 epochs (3 steps)" in result.output
    assert (tmp_path / "run" / "best.pt").is_file()
    again = runner.invoke(
        app,
        [
            "train-baseline",
            "--method",
            "kasten",
            "--config",
            "tiny",
            "--data",
            str(five_subjects),
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert again.exit_code == 2 and "holds a training run" in again.output
