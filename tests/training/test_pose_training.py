"""SOPI training: closed forms of the losses, the double-backward gradients, simulated pairs,
one step of each network, exact resume, bad input and the ``train-pose`` command."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from biplanar.cli import app
from biplanar.errors import InputError
from biplanar.geometry.se3 import geodesic_direction
from biplanar.models.sopi import FineRegistrationNet, load_sopi_config
from biplanar.models.sopi.config import SopiConfig
from biplanar.training.checkpoints import load_checkpoint
from biplanar.training.pose_data import TRAIN_STREAM, VALIDATION_STREAM, PosePairSimulator, project_mask
from biplanar.training.pose_losses import (
    RTPILoss,
    gradient_alignment_loss,
    gradient_difference,
    gradient_difference_loss,
    masked_feature_distance,
    pose_gradient,
    weight_penalty,
)
from biplanar.training.pose_trainer import csv_fields, fine_forward, train_pose, validate_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
REAL_CT = Path(__file__).resolve().parents[1] / "data" / "real_ct" / "lumbar_ct_small.nii.gz"


@pytest.fixture(scope="module")
def config() -> SopiConfig:
    """sopi_tiny, trimmed: two phantoms, one validation pair, three steps, validation at the end."""
    tiny = load_sopi_config("sopi_tiny")
    return dataclasses.replace(
        tiny,
        data=dataclasses.replace(tiny.data, subjects=2, validation_samples=1),
        training=dataclasses.replace(tiny.training, steps=3, validate_every=100),
    )


@pytest.fixture(scope="module")
def simulator(config: SopiConfig) -> PosePairSimulator:
    return PosePairSimulator(config)


# --- losses: closed forms ----------------------------------------------------------------------


def test_gradient_difference_of_identical_images_is_two() -> None:
    image = torch.rand(2, 1, 12, 9)
    assert torch.allclose(gradient_difference(image, image), torch.full((2,), 2.0))
    assert torch.allclose(gradient_difference_loss(image, image), torch.zeros(2), atol=1e-6)


def test_gradient_difference_loss_ignores_affine_intensity_changes() -> None:
    torch.manual_seed(0)
    fixed, moving = torch.rand(1, 1, 12, 9), torch.rand(1, 1, 12, 9)
    assert torch.allclose(
        gradient_difference_loss(fixed, 3.0 * moving + 1.0), gradient_difference_loss(fixed, moving), atol=1e-5
    )
    assert gradient_difference_loss(fixed, moving) > gradient_difference_loss(fixed, fixed + 0.01 * moving)


def test_masked_feature_distance_closed_form() -> None:
    ones = (torch.ones(2, 3, 4, 4), torch.ones(2, 5, 2, 2))
    zeros = tuple(torch.zeros_like(level) for level in ones)
    full = torch.ones(2, 1, 8, 8)
    # Every masked feature differs by 1: each level contributes 1.
    assert torch.allclose(masked_feature_distance(ones, zeros, full), torch.full((2,), 2.0))
    assert torch.allclose(masked_feature_distance(ones, zeros, torch.zeros_like(full)), torch.zeros(2))
    # Differences only outside the mask count for nothing.
    half = torch.zeros_like(full)
    half[..., :4] = 1.0
    outside = tuple(level.clone() for level in zeros)
    for level in outside:
        level[..., level.shape[-1] // 2 :] = 7.0
    assert torch.allclose(masked_feature_distance(outside, zeros, half), torch.zeros(2))


def test_gradient_alignment_loss_closed_form() -> None:
    # L = |theta - target|^2 has gradient 2 (theta - target) = -2 |.| d per part: perfectly aligned.
    # (Rotations about one axis, where Euler differences are exactly the geodesic's rotation vector.)
    theta = torch.tensor([[0.0, -0.2, 0.0, 3.0, -4.0, 1.0]])
    target = torch.tensor([[0.0, 0.1, 0.0, -1.0, 2.0, 0.5]])
    direction = geodesic_direction(theta, target)
    aligned = gradient_alignment_loss(2.0 * (theta - target), direction)
    assert aligned["total"].item() == pytest.approx(0.0, abs=1e-6)
    # Its negative points straight at the target: each part costs 2.
    opposed = gradient_alignment_loss(-2.0 * (theta - target), direction)
    assert opposed["rotation"].item() == pytest.approx(2.0, abs=1e-6)
    assert opposed["translation"].item() == pytest.approx(2.0, abs=1e-6)


def test_pose_gradient_is_the_chain_rule_through_the_image() -> None:
    # L = sum(w * I^2) with I = J theta: dL/dtheta = J^T (2 w I), and its graph reaches w.
    jacobian = torch.randn(2, 1, 3, 4, 6, generator=torch.Generator().manual_seed(0))
    theta = torch.randn(2, 6, generator=torch.Generator().manual_seed(1))
    weight = torch.rand(1, 1, 3, 4, requires_grad=True)
    image = torch.einsum("bchwp,bp->bchw", jacobian, theta).requires_grad_(True)
    gradient = pose_gradient((weight * image**2).flatten(1).sum(1), image, jacobian)
    expected = torch.einsum("bchwp,bchw->bp", jacobian, 2.0 * weight * image)
    torch.testing.assert_close(gradient, expected)
    (gradient.sum()).backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_weight_penalty_closed_form() -> None:
    layer = torch.nn.Linear(2, 3)
    torch.nn.init.constant_(layer.weight, 2.0)
    assert weight_penalty(torch.nn.Sequential(layer, torch.nn.BatchNorm1d(3))).item() == pytest.approx(0.5 * 6 * 4.0)


def test_rtpi_loss_parts_add_up(config: SopiConfig) -> None:
    torch.manual_seed(0)
    image, drr = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    pred, true = torch.randn(2, 6), torch.randn(2, 6)
    network = torch.nn.Linear(3, 1)
    parts = RTPILoss(config.loss)(image, drr, pred, true, network)
    expected = parts["similarity"] + parts["mse"] + 0.01 * weight_penalty(network)
    assert torch.allclose(parts["total"], expected)
    assert torch.allclose(parts["mse"], ((pred - true) ** 2).mean())
    with pytest.raises(ValueError, match="scaled_pred"):
        RTPILoss(config.loss)(image, drr, pred[:, :5], true, network)


# --- data -----------------------------------------------------------------------------------------


def test_samples_are_reproducible_and_render_the_target(simulator: PosePairSimulator) -> None:
    first, again = simulator.sample(TRAIN_STREAM, 7, 2), simulator.sample(TRAIN_STREAM, 7, 2)
    assert torch.equal(first.radiograph, again.radiograph) and torch.equal(first.start_params, again.start_params)
    assert not torch.equal(first.target_params, simulator.sample(TRAIN_STREAM, 8, 2).target_params)
    assert not torch.equal(first.target_params, simulator.sample(VALIDATION_STREAM, 7, 2).target_params)
    drr = simulator.prost(first.volume_mu, simulator.pose_matrix(first.target_params))
    assert torch.allclose(first.radiograph, drr)
    mask = project_mask(simulator.prost, first.mask_volume, simulator.pose_matrix(first.start_params), 1.0)
    assert set(mask.unique().tolist()) == {0.0, 1.0}


def test_clinical_fraction_turns_that_share_of_xrays_into_clinical_images(config: SopiConfig) -> None:
    half = dataclasses.replace(config, data=dataclasses.replace(config.data, clinical_fraction=0.5))
    simulator, plain = PosePairSimulator(half), PosePairSimulator(config)
    batches = [simulator.sample(TRAIN_STREAM, step, 4) for step in range(5)]
    images = torch.cat([batch.radiograph for batch in batches])
    drrs = torch.cat([plain.prost(batch.volume_mu, plain.pose_matrix(batch.target_params)) for batch in batches])
    clinical = ~torch.isclose(images, drrs).flatten(1).all(1)
    assert 4 <= int(clinical.sum()) <= 16  # 20 draws at p = 0.5
    shown = images[clinical]
    assert torch.equal(shown, shown.round()) and shown.min() >= 0 and shown.max() <= 4095 and shown.max() > 3000
    again = simulator.sample(TRAIN_STREAM, 3, 4)
    assert torch.equal(again.radiograph, batches[3].radiograph)  # seeded by the step, noise included
    assert torch.equal(again.target_params, plain.sample(TRAIN_STREAM, 3, 4).target_params)  # same poses


def test_pose_distribution_matches_the_config(simulator: PosePairSimulator, config: SopiConfig) -> None:
    targets = torch.cat([simulator.sample(TRAIN_STREAM, step, 8).target_params for step in range(40)])
    ratio = targets.std(0) / config.param_sigmas()
    assert torch.all((ratio > 0.85) & (ratio < 1.15))  # 320 draws: the std is within ~4% (1 sigma)


def test_real_ct_source(config: SopiConfig) -> None:
    real = dataclasses.replace(config, data=dataclasses.replace(config.data, source=str(REAL_CT), mask="threshold"))
    simulator = PosePairSimulator(real)
    batch = simulator.sample(TRAIN_STREAM, 0, 1)
    assert batch.volume_mu.shape[2:] == simulator.grid.shape == (122, 101, 30)
    assert batch.radiograph.max() > 1.0  # bone and soft tissue along 300 mm of body
    assert project_mask(simulator.prost, batch.mask_volume, simulator.pose_matrix(batch.start_params), 1.0).sum() > 0


def test_named_real_ct_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # sopi_lumbar's source: the lumbar-pelvis CT shipped with the package, whole (112 slices), its bone as the mask.
    lumbar = load_sopi_config("sopi_lumbar")
    simulator = PosePairSimulator(lumbar)
    assert simulator.grid.shape == (122, 101, 112) and simulator.prost.image_shape == (128, 128)
    batch = simulator.sample(VALIDATION_STREAM, 0, 1)
    assert 0.0 < float(batch.mask_volume.mean()) < 0.1


# --- double backward --------------------------------------------------------------------------------


def test_double_backward_reaches_both_encoders(config: SopiConfig, simulator: PosePairSimulator) -> None:
    torch.manual_seed(0)
    network = FineRegistrationNet(config).train()
    parts = fine_forward(network, simulator, simulator.sample(TRAIN_STREAM, 0, 2))
    parts["total"].backward()
    for encoder in (network.moving, network.fixed):
        grads = [p.grad for p in encoder.parameters()]
        assert all(g is not None for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
    assert parts["gradient"].shape == (2, 6) and torch.isfinite(parts["total"])


def test_double_backward_matches_finite_differences_of_the_alignment(
    config: SopiConfig, simulator: PosePairSimulator
) -> None:
    # d(loss)/d(one weight of the fixed encoder's stem) by autograd (through dL_N/dtheta) and by
    # central differences of the whole loss, in float64.
    torch.manual_seed(0)
    network = FineRegistrationNet(config).double().eval()
    batch = simulator.sample(TRAIN_STREAM, 1, 1)
    batch = dataclasses.replace(
        batch,
        **{
            name: getattr(batch, name).double()
            for name in ("volume_mu", "mask_volume", "radiograph", "target_params", "start_params")
        },
    )
    simulator.prost.double()
    simulator.centre = simulator.centre.double()
    try:
        weight = network.fixed.stem[0][0].weight
        fine_forward(network, simulator, batch)["total"].backward()
        analytic = weight.grad[0, 0, 1, 1].item()
        values = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                weight[0, 0, 1, 1] += sign * 1e-5
            values.append(fine_forward(network, simulator, batch)["total"].item())
            with torch.no_grad():
                weight[0, 0, 1, 1] -= sign * 1e-5
        assert analytic == pytest.approx((values[0] - values[1]) / 2e-5, rel=1e-3, abs=1e-7)
    finally:
        simulator.prost.float()
        simulator.centre = simulator.centre.float()


# --- the trainer -------------------------------------------------------------------------------------


@pytest.mark.parametrize("network", ["rtpi", "fine"])
def test_one_step_of_each_network(config: SopiConfig, tmp_path: Path, network: str) -> None:
    one = dataclasses.replace(config, training=dataclasses.replace(config.training, steps=1))
    result = train_pose(one, tmp_path, network, progress=False)
    assert result.global_step == 1 and len(result.step_losses) == 1
    assert all(math.isfinite(value) for value in result.step_losses[0].values())
    assert {"last.pt", "best.pt", "config.yaml", "metrics.csv"} <= {p.name for p in tmp_path.iterdir()}
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert header == ",".join(csv_fields(network))
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["kind"] == "sopi" and state["network"] == network and state["global_step"] == 1
    # Batch norm: RTPI's running statistics move; the fine encoders' stay frozen at their start.
    running_means = [value for name, value in state["model"].items() if name.endswith("running_mean")]
    assert any(value.abs().sum() > 0 for value in running_means) == (network == "rtpi")


@pytest.mark.parametrize("network", ["rtpi", "fine"])
def test_resume_is_exact(config: SopiConfig, tmp_path: Path, network: str) -> None:
    straight = train_pose(config, tmp_path / "straight", network, progress=False)
    stopped = train_pose(config, tmp_path / "resumed", network, progress=False, max_steps=1)
    assert stopped.global_step == 1
    resumed = train_pose(config, tmp_path / "resumed", network, resume=True, progress=False)
    assert [row["total"] for row in stopped.step_losses + resumed.step_losses] == [
        row["total"] for row in straight.step_losses
    ]
    theirs = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    ours = load_checkpoint(tmp_path / "resumed" / "last.pt")["model"]
    assert all(torch.equal(theirs[name], ours[name]) for name in theirs)
    assert resumed.history[-1]["val_total"] == straight.history[-1]["val_total"]


def test_trainer_bad_input(config: SopiConfig, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="network"):
        train_pose(config, tmp_path, "coarse", progress=False)
    with pytest.raises(InputError, match="no checkpoint"):
        train_pose(config, tmp_path / "none", "rtpi", resume=True, progress=False)
    train_pose(config, tmp_path / "run", "rtpi", progress=False, max_steps=1)
    with pytest.raises(InputError, match="--resume"):
        train_pose(config, tmp_path / "run", "rtpi", progress=False)
    with pytest.raises(InputError, match="not a SOPI fine"):
        train_pose(config, tmp_path / "run", "fine", resume=True, progress=False)
    other = dataclasses.replace(config, loss=dataclasses.replace(config.loss, alpha=2.0))
    with pytest.raises(InputError, match="config differs"):
        train_pose(other, tmp_path / "run", "rtpi", resume=True, progress=False)


def test_init_starts_from_a_checkpoints_weights(config: SopiConfig, tmp_path: Path) -> None:
    one = dataclasses.replace(config, training=dataclasses.replace(config.training, steps=1))
    train_pose(one, tmp_path / "first", "rtpi", progress=False)
    started = load_checkpoint(tmp_path / "first" / "last.pt")["model"]
    still = dataclasses.replace(one, training=dataclasses.replace(one.training, learning_rate=1e-12, seed=1))
    train_pose(still, tmp_path / "tuned", "rtpi", progress=False, init=tmp_path / "first" / "last.pt")
    train_pose(still, tmp_path / "fresh", "rtpi", progress=False)
    tuned, fresh = (load_checkpoint(tmp_path / run / "last.pt")["model"] for run in ("tuned", "fresh"))
    weights = [name for name in started if name.endswith("weight")]
    assert all(torch.allclose(tuned[name], started[name], atol=1e-6) for name in weights)
    assert not all(torch.allclose(fresh[name], started[name], atol=1e-6) for name in weights)
    with pytest.raises(InputError, match="not a SOPI fine checkpoint"):
        train_pose(one, tmp_path / "wrong", "fine", progress=False, init=tmp_path / "first" / "last.pt")
    other_view = dataclasses.replace(config, geometry=dataclasses.replace(config.geometry, pixel_spacing_mm=2.5))
    with pytest.raises(InputError, match="geometry settings differ"):
        train_pose(other_view, tmp_path / "other", "rtpi", progress=False, init=tmp_path / "first" / "last.pt")


@pytest.mark.parametrize("network", ["rtpi", "fine"])
def test_validate_checkpoint_repeats_the_runs_validation(config: SopiConfig, tmp_path: Path, network: str) -> None:
    one = dataclasses.replace(config, training=dataclasses.replace(config.training, steps=1))
    result = train_pose(one, tmp_path, network, progress=False)
    metrics = validate_checkpoint(one, network, tmp_path / "last.pt")
    assert metrics == pytest.approx(
        {name[4:]: value for name, value in result.history[-1].items() if name[:4] == "val_"}
    )


def test_cli_train_pose(tmp_path: Path, config: SopiConfig) -> None:
    import yaml

    from biplanar.training.trainer import yaml_ready

    path = tmp_path / "sopi.yaml"
    path.write_text(yaml.safe_dump(yaml_ready(config.to_dict())))
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["train-pose", "--config", str(path), "--out", str(tmp_path / "run"), "--network", "rtpi", "--max-steps", "1"],
    )
    assert result.exit_code == 0, result.output
    assert "1 steps" in result.output
    bad = runner.invoke(
        app,
        [
            "train-pose",
            "--config",
            str(tmp_path / "missing.yaml"),
            "--out",
            str(tmp_path / "run2"),
            "--network",
            "fine",
        ],
    )
    assert bad.exit_code == 2 and "missing.yaml" in bad.output and "Traceback" not in bad.output


def test_mask_volume_threshold_when_no_labels(config: SopiConfig) -> None:
    from biplanar.training.pose_data import mask_volume_from

    hu = np.array([[[-1000.0, 100.0, 300.0]]], dtype=np.float32)
    assert mask_volume_from(hu, None, config).tolist() == [[[0.0, 0.0, 1.0]]]
    assert mask_volume_from(hu, np.array([[[1, 0, 0]]]), config).tolist() == [[[1.0, 0.0, 0.0]]]
