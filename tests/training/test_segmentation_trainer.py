"""Training the segmentation U-Net: data, augmentations, loss decrease, exact resume, export, the bundled model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from biplanar.data.simulate import VIEW_NAMES, SimulationConfig, simulate_case
from biplanar.errors import InputError
from biplanar.models.segmentation import (
    SegmentationConfig,
    mask_dice,
    normalise_radiograph,
    segment,
)
from biplanar.training.checkpoints import load_checkpoint
from biplanar.training.segmentation_model import (
    BUNDLED_IMAGE_SHAPE,
    AugmentationConfig,
    SegmentationTrainingConfig,
    bundled_segmentation_path,
    export_segmentation_model,
    load_segmentation_model,
)
from biplanar.training.segmentation_trainer import (
    CSV_FIELDS,
    augment_radiographs,
    gaussian_blur,
    load_radiographs,
    train_segmentation,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = SegmentationTrainingConfig(
    network=SegmentationConfig(channels=(4, 8, 16), strides=(2, 2), num_res_units=1, dropout=0.1),
    steps=4,
    batch_size=4,
    learning_rate=3e-3,
    validate_every=2,
    seed=7,
)
# Every augmentation off, contrast 1, offset 0: augment_radiographs is normalise_radiograph.
IDENTITY = AugmentationConfig(
    curve_p=0.0,
    gamma_p=0.0,
    blur_p=0.0,
    unsharp_p=0.0,
    contrast=(1.0, 1.0),
    offset=(0.0, 0.0),
    noise_p=0.0,
    polarity_p=0.0,
)


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_load_radiographs(five_subjects):
    """Both views of each subject, subject-major; unmasked line integrals and 0/1 masks."""
    train = load_radiographs(five_subjects, "train")
    assert len(train.subject_ids) == 6 and train.views == list(VIEW_NAMES) * 3
    assert train.images.shape == (6, 56, 40) and train.images.dtype == np.float32
    assert train.masks.dtype == bool and 0 < train.masks.mean() < 1
    outside = train.images[~train.masks]
    assert outside.max() > 0  # unmasked: the surroundings are there
    assert len(load_radiographs(five_subjects, "all").subject_ids) == 10
    with pytest.raises(InputError, match="split"):
        load_radiographs(five_subjects, "training")


def test_load_radiographs_of_several_folders(five_subjects):
    one = load_radiographs(five_subjects, "train")
    both = load_radiographs([five_subjects, five_subjects], "train")
    assert both.images.shape == (12, 56, 40) and np.array_equal(both.images[6:], one.images)
    assert both.subject_ids[0] == f"{five_subjects.name}/{one.subject_ids[0]}"
    with pytest.raises(InputError, match="at least one dataset folder"):
        load_radiographs([], "train")


def test_config_round_trip():
    config = dataclasses.replace(SMALL, augmentation=dataclasses.replace(IDENTITY, gamma=(0.8, 1.25)))
    assert SegmentationTrainingConfig.from_dict(config.to_dict()) == config
    with pytest.raises(InputError, match="unknown field"):
        SegmentationTrainingConfig.from_dict({**config.to_dict(), "epochs": 3})
    with pytest.raises(InputError, match="probability"):
        AugmentationConfig(polarity_p=1.5)
    with pytest.raises(InputError, match="low <= high"):
        AugmentationConfig(contrast=(2.0, 0.5))


def test_gaussian_blur():
    """Sigma 0 leaves an image; a point spreads with variance sigma^2 along each axis; the sum is kept."""
    images = torch.zeros(2, 1, 41, 41, dtype=torch.float64)
    images[:, 0, 20, 20] = 1.0
    blurred = gaussian_blur(images, torch.tensor([0.0, 1.5]))
    assert torch.allclose(blurred[0], images[0])
    offsets = torch.arange(41, dtype=torch.float64) - 20
    row_profile = blurred[1, 0].sum(dim=1)
    assert float(row_profile.sum()) == pytest.approx(1.0, abs=1e-9)
    # a sampled Gaussian truncated at ceil(3 sigma) px: the variance within 1 %
    assert float((row_profile * offsets**2).sum()) == pytest.approx(1.5**2, rel=1e-2)


def test_augmentations_are_seeded_and_switchable(five_subjects):
    images = torch.from_numpy(load_radiographs(five_subjects, "train").images)[:, None]

    def run(config: AugmentationConfig, seed: int) -> torch.Tensor:
        return augment_radiographs(images, config, torch.Generator().manual_seed(seed))

    default = AugmentationConfig()
    first = run(default, 0)
    assert first.shape == images.shape and torch.isfinite(first).all()
    assert torch.equal(first, run(default, 0)) and not torch.equal(first, run(default, 1))
    assert torch.allclose(run(IDENTITY, 0), normalise_radiograph(images))
    inverted = run(dataclasses.replace(IDENTITY, polarity_p=1.0), 0)
    assert torch.allclose(inverted, -normalise_radiograph(images))
    gamma = run(dataclasses.replace(IDENTITY, gamma_p=1.0, gamma=(2.0, 2.0)), 0)
    assert torch.allclose(gamma, normalise_radiograph(images).clamp_min(0) ** 2)


def test_training_lowers_the_loss(five_subjects, tmp_path):
    config = dataclasses.replace(SMALL, steps=30, validate_every=30, augmentation=IDENTITY, learning_rate=1e-2)
    result = train_segmentation(five_subjects, tmp_path / "run", config, progress=False)
    losses = result.step_losses
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert result.global_step == 30 and len(result.history) == 1
    assert set(result.history[0]) == set(CSV_FIELDS)
    assert 0.0 <= result.best_val_dice <= 1.0


def test_resume_is_exact_and_outputs(five_subjects, tmp_path):
    """4 steps in one go = 2 steps, stop, resume for 2 more: the same weights and losses."""
    whole = train_segmentation(five_subjects, tmp_path / "whole", SMALL, progress=False)
    part = train_segmentation(five_subjects, tmp_path / "parts", SMALL, max_steps=2, progress=False)
    assert part.global_step == 2
    rest = train_segmentation(five_subjects, tmp_path / "parts", SMALL, resume=True, progress=False)
    assert rest.global_step == 4
    assert part.step_losses + rest.step_losses == whole.step_losses
    whole_state = load_checkpoint(tmp_path / "whole" / "last.pt")
    parts_state = load_checkpoint(tmp_path / "parts" / "last.pt")
    assert _same_weights(whole_state["model"], parts_state["model"])
    assert [row["val_dice_mean"] for row in whole.history] == [row["val_dice_mean"] for row in rest.history]
    for name in ("config.yaml", "last.pt", "best.pt", "metrics.csv"):
        assert (tmp_path / "whole" / name).is_file()
    assert (tmp_path / "whole" / "metrics.csv").read_text().splitlines()[0] == ",".join(CSV_FIELDS)
    assert whole_state["kind"] == "segmentation" and whole_state["global_step"] == 4

    with pytest.raises(InputError, match="holds a training run"):
        train_segmentation(five_subjects, tmp_path / "whole", SMALL, progress=False)
    with pytest.raises(InputError, match="config differs"):
        train_segmentation(five_subjects, tmp_path / "whole", dataclasses.replace(SMALL, seed=8), resume=True)

    exported = export_segmentation_model(tmp_path / "whole" / "best.pt", tmp_path / "export" / "model.pt")
    state = torch.load(exported, weights_only=True)
    assert "optimizer" not in state and state["kind"] == "segmentation"
    network, network_config = load_segmentation_model(exported)
    assert network_config == SMALL.network and not network.training
    best_state = load_checkpoint(tmp_path / "whole" / "best.pt")
    assert _same_weights(network.state_dict(), best_state["model"])
    with pytest.raises(InputError, match="not a segmentation checkpoint"):
        load_segmentation_model(_write_other_checkpoint(tmp_path))


def _write_other_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"format": "biplanar-checkpoint", "version": 1, "config": {}, "model": {}}, path)
    return path


def test_training_refuses_sides_that_are_not_multiples(five_subjects, tmp_path):
    """56 x 40 radiographs and a total stride of 16: 56 is not a multiple."""
    config = dataclasses.replace(SMALL, network=SegmentationConfig(channels=(4, 4, 4, 4, 4), strides=(2, 2, 2, 2)))
    with pytest.raises(InputError, match="multiples of 16"):
        train_segmentation(five_subjects, tmp_path / "run", config, progress=False)


def test_bundled_model_segments_a_held_out_radiograph():
    """The bundled model on both views of a new simulated lite subject (a seed no dataset used), from
    the CT alone (scene "grid") as it was trained: on the body scene its AP masks fall to Dice 0.4-0.6."""
    network, config = load_segmentation_model()
    assert bundled_segmentation_path().stat().st_size < 10e6 and config.size_multiple == 8
    case = simulate_case(20_251_204, SimulationConfig(preset="lite", geometry="mixed", scene="grid"))
    for view in VIEW_NAMES:
        mask = segment(network, case.radiographs[view])
        dice = mask_dice(mask[None], case.masks[view][None] > 0.5)[0]
        assert dice > 0.9, (view, dice)
        # a positive rescaling of the radiograph gives the same mask (up to float rounding at the threshold)
        rescaled = segment(network, 3.0 * case.radiographs[view] + 1.0)
        assert mask_dice(rescaled[None], mask[None])[0] > 0.999
    # the tiny preset's detector (56 x 40 pixels of 3.72 mm, the same field of view) at the bundled shape
    tiny = simulate_case(20_251_205, SimulationConfig(preset="tiny", geometry="mixed", scene="grid"))
    for view in VIEW_NAMES:
        mask = segment(network, tiny.radiographs[view], working_shape=BUNDLED_IMAGE_SHAPE)
        assert mask.shape == (56, 40) and mask_dice(mask[None], tiny.masks[view][None] > 0.5)[0] > 0.9


def test_a_run_can_start_from_a_trained_network(five_subjects, tmp_path):
    """``init``: the new run's first step starts from the checkpoint's weights (a fine-tuning), and
    a network of another architecture, or ``init`` with ``resume``, is refused."""
    trained = train_segmentation(five_subjects, tmp_path / "trained", SMALL, progress=False)
    start = load_segmentation_model(trained.last_checkpoint)[0].state_dict()
    # A learning rate too small to move a float32 weight: the run's weights are the ones it started from.
    still = dataclasses.replace(SMALL, steps=1, validate_every=1, learning_rate=1e-30)
    tuned = train_segmentation(five_subjects, tmp_path / "tuned", still, progress=False, init=trained.last_checkpoint)
    assert _same_weights(load_segmentation_model(tuned.last_checkpoint)[0].state_dict(), start)
    fresh = train_segmentation(five_subjects, tmp_path / "fresh", still, progress=False)
    assert not _same_weights(load_segmentation_model(fresh.last_checkpoint)[0].state_dict(), start)
    wider = dataclasses.replace(still, network=dataclasses.replace(SMALL.network, channels=(8, 8, 16)))
    with pytest.raises(InputError, match="differs from the run's"):
        train_segmentation(five_subjects, tmp_path / "wider", wider, progress=False, init=trained.last_checkpoint)
    with pytest.raises(InputError, match="init: not with resume"):
        train_segmentation(five_subjects, tmp_path / "tuned", still, resume=True, init=trained.last_checkpoint)
