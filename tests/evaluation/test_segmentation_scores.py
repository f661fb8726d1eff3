"""Scoring the segmentation network: per-radiograph Dice, cross-checked by hand, its summary and CSV."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from biplanar.data.simulate import VIEW_NAMES
from biplanar.errors import InputError
from biplanar.evaluation.segmentation import (
    SCORE_FIELDS,
    dice_summary,
    evaluate_segmentation,
    write_segmentation_scores,
)
from biplanar.io.images import read_image
from biplanar.models.segmentation import SegmentationConfig, segment
from biplanar.training.segmentation_model import SegmentationTrainingConfig, load_segmentation_model
from biplanar.training.segmentation_trainer import train_segmentation

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small_model(five_subjects, tmp_path_factory):
    """A segmentation checkpoint after 3 steps on the tiny dataset."""
    config = SegmentationTrainingConfig(
        network=SegmentationConfig(channels=(4, 8, 16), strides=(2, 2), num_res_units=1),
        steps=3,
        batch_size=4,
        learning_rate=1e-2,
        validate_every=3,
    )
    out = tmp_path_factory.mktemp("segmentation")
    return train_segmentation(five_subjects, out / "run", config, progress=False).last_checkpoint


def test_dice_per_radiograph_matches_a_hand_count(five_subjects, small_model, tmp_path):
    rows = evaluate_segmentation(small_model, five_subjects, "all")
    assert len(rows) == 10 and [row["view"] for row in rows[:2]] == list(VIEW_NAMES)
    network, _ = load_segmentation_model(small_model)
    for row in rows:
        folder = five_subjects / "subjects" / row["subject_id"]
        predicted = segment(network, read_image(folder / f"{row['view']}.npy"))
        truth = read_image(folder / f"{row['view']}_mask.npy") > 0.5
        by_hand = 2.0 * np.sum(predicted & truth) / (predicted.sum() + truth.sum()) if truth.any() else 1.0
        assert row["dice"] == pytest.approx(by_hand, abs=1e-6)

    summary = dice_summary(rows)
    values = [row["dice"] for row in rows]
    assert summary["n"] == 10 and summary["mean"] == pytest.approx(np.mean(values))
    assert summary["min"] == pytest.approx(min(values))

    write_segmentation_scores(tmp_path / "scores.csv", rows)
    with open(tmp_path / "scores.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert tuple(table[0]) == SCORE_FIELDS and len(table) == 10
    assert float(table[3]["dice"]) == pytest.approx(rows[3]["dice"], abs=1e-6)


def test_bad_inputs(five_subjects, small_model, tmp_path):
    with pytest.raises(InputError, match="split"):
        evaluate_segmentation(small_model, five_subjects, "holdout")
    with pytest.raises(InputError, match="file not found"):
        evaluate_segmentation(tmp_path / "missing.pt", five_subjects)
