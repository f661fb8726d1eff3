"""Training SOPI's networks (Chen et al. 2023): RTPI and the fine registration's encoders.

One call, :func:`train_pose`, trains one network (``rtpi`` or ``fine``) for ``training.steps``
optimizer steps on pairs simulated on the fly (:mod:`biplanar.training.pose_data`), or continues
a stopped run. Single process; CUDA when available.

- ``rtpi``: the X-ray and the CT in, the scaled pose out; loss :class:`RTPILoss` with the DRR of
  the prediction rendered by ProST (differentiable in the pose).
- ``fine``: the DRR at a perturbed pose and the X-ray through the two encoders; the
  double-backward loss :func:`gradient_alignment_loss` of ``dL_N/dtheta`` against the geodesic
  direction to the true pose. The encoders train with frozen batch norm (eval mode: the layers
  are learned affine maps on their initial statistics), as detection backbones do at small
  batches: batch statistics of two samples couple the two gradient fields, and at initialisation
  they turn the rotation part's mean cosine on ``sopi_lite`` training pairs from +0.71 (frozen)
  to -0.14 (``python examples/sopi_gradient_alignment.py``).
- Optimisation: Adam at ``training.learning_rate``, cosine-annealed per step to 0 at
  ``training.steps``. Deterministic kernels; all randomness of step ``s`` is drawn from
  ``(training.seed, stream, s)``, so a resumed run repeats an uninterrupted one exactly.
- Validation every ``training.validate_every`` steps and at the end, on ``data.validation_samples``
  fixed pairs (held-out phantoms): the loss parts, and for RTPI the rotation (deg) and translation
  (mm) errors of the predicted pose.
- Outputs in ``out_dir`` (each written atomically): ``config.yaml``, ``last.pt`` (every
  ``training.checkpoint_minutes``, after every validation and at the end), ``best.pt`` (lowest
  validation loss), ``metrics.csv`` (one row per validation) and ``tensorboard/``.
- Ctrl-C / SIGTERM: the step in progress finishes, ``last.pt`` is written and
  :class:`~biplanar.training.trainer.TrainingInterrupted` is raised.

Checkpoints use :mod:`biplanar.training.checkpoints`' format (one endless epoch: ``epoch`` 0) with
two more keys: ``network`` (``rtpi`` / ``fine``) and ``kind`` (``sopi``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from biplanar.errors import InputError
from biplanar.geometry.se3 import geodesic_direction, pose_errors
from biplanar.io.atomic import require_output_folder
from biplanar.models.sopi import NETWORKS, SopiConfig, build_network, load_sopi_config
from biplanar.training.checkpoints import load_checkpoint, load_weights
from biplanar.training.pose_data import TRAIN_STREAM, VALIDATION_STREAM, PoseBatch, PosePairSimulator, project_mask
from biplanar.training.pose_losses import RTPILoss, gradient_alignment_loss, masked_feature_distance, pose_gradient
from biplanar.training.step_run import StepRun, resume_state
from biplanar.training.trainer import (
    TrainingLogs,
    check_run_dir,
    cosine_factor,
    deterministic_algorithms,
    prepare_run_dir,
    seed_everything,
)

KIND = "sopi"
TRAIN_PARTS = {
    "rtpi": ("total", "similarity", "mse", "regulariser"),
    "fine": ("total", "rotation", "translation", "cos_rotation", "cos_translation"),
}
VAL_METRICS = {
    "rtpi": ("total", "similarity", "mse", "rotation_error_deg", "translation_error_mm"),
    "fine": ("total", "cos_rotation", "cos_translation"),
}


def csv_fields(network: str) -> tuple[str, ...]:
    """Columns of ``metrics.csv`` for ``network``."""
    return (
        "step",
        "lr",
        *(f"train_{name}" for name in TRAIN_PARTS[network]),
        *(f"val_{name}" for name in VAL_METRICS[network]),
        "wall_s",
    )


@dataclass
class PoseTrainResult:
    """What :func:`train_pose` did.

    Attributes:
        out_dir: the run folder.
        network: ``rtpi`` or ``fine``.
        last_checkpoint: ``out_dir/last.pt``.
        best_checkpoint: ``out_dir/best.pt``, ``None`` until a validation has run.
        global_step: optimizer steps done in the whole run.
        best_val_loss: lowest validation loss (``nan`` without validation).
        history: the rows of ``metrics.csv`` (:func:`csv_fields`).
        step_losses: per step done by this call, ``{"step": global step, **loss parts}``.
    """

    out_dir: Path
    network: str
    last_checkpoint: Path
    best_checkpoint: Path | None
    global_step: int
    best_val_loss: float
    history: list[dict[str, float]] = field(default_factory=list)
    step_losses: list[dict[str, float]] = field(default_factory=list)


def rtpi_forward(
    network: torch.nn.Module, simulator: PosePairSimulator, loss: RTPILoss, batch: PoseBatch
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """RTPI's loss parts on a batch, and its predicted ``(B, 6)`` pose (rad, mm)."""
    scaled = network(batch.volume_mu, batch.radiograph)
    params = scaled * simulator.sigmas
    drr = simulator.prost(batch.volume_mu, simulator.pose_matrix(params))
    return loss(batch.radiograph, drr, scaled, batch.target_params / simulator.sigmas, network), params


def fine_forward(
    network: torch.nn.Module, simulator: PosePairSimulator, batch: PoseBatch, create_graph: bool = True
) -> dict[str, torch.Tensor]:
    """The fine registration's gradient-alignment loss parts on a batch (module doc).

    ``create_graph=False`` (validation) skips the graph that the double backward needs.
    """
    params = batch.start_params
    drr, jacobian = simulator.prost.project_with_pose_jacobian(batch.volume_mu, params, simulator.pose_matrix)
    drr.requires_grad_(True)
    mask = project_mask(
        simulator.prost, batch.mask_volume, simulator.pose_matrix(params), simulator.config.data.mask_min_path_mm
    )
    moving, fixed = network(drr, batch.radiograph)
    gradient = pose_gradient(masked_feature_distance(moving, fixed, mask), drr, jacobian, create_graph)
    direction = geodesic_direction(params, batch.target_params, simulator.centre)
    return gradient_alignment_loss(gradient, direction)


class _PoseRun(StepRun):
    """The state of one training run and its steps (see the module doc)."""

    kind = KIND

    def __init__(self, config: SopiConfig, network: str, out_dir: Path, device: torch.device) -> None:
        self.config, self.network_name, self.out_dir, self.device = config, network, out_dir, device
        training = config.training
        seed_everything(training.seed)
        self.network = build_network(config, network).to(device)
        self.simulator = PosePairSimulator(config, device)
        self.loss = RTPILoss(config.loss)
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=training.learning_rate)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: cosine_factor(step, training.steps)
        )
        self.step_losses: list[dict[str, float]] = []
        StepRun.__init__(self, TRAIN_PARTS[network], math.inf)

    # --- training ------------------------------------------------------------------------------
    def step_parts(self) -> dict[str, float]:
        """One optimizer step on the batch of :attr:`global_step`; returns the loss parts."""
        self.network.train(self.network_name != "fine")  # the fine encoders' batch norm stays frozen (module doc)
        batch = self.simulator.sample(TRAIN_STREAM, self.global_step, self.config.training.batch_size)
        if self.network_name == "rtpi":
            parts, _ = rtpi_forward(self.network, self.simulator, self.loss, batch)
        else:
            parts = fine_forward(self.network, self.simulator, batch)
        self.optimizer.zero_grad(set_to_none=True)
        parts["total"].backward()
        self.optimizer.step()
        self.scheduler.step()
        values = {name: float(parts[name].detach()) for name in TRAIN_PARTS[self.network_name]}
        self.global_step += 1
        for name, value in values.items():
            self.sums[name] += value
        self.sums["count"] += 1
        self.step_losses.append({"step": self.global_step, **values})
        return values

    def validate(self) -> dict[str, float]:
        """Mean :data:`VAL_METRICS` over the validation pairs (BN in eval mode, no weight update)."""
        self.network.eval()
        names = VAL_METRICS[self.network_name]
        sums = dict.fromkeys(names, 0.0)
        count = self.config.data.validation_samples
        for index in range(count):
            batch = self.simulator.sample(VALIDATION_STREAM, index, 1)
            for name, value in self._validation_metrics(batch).items():
                sums[name] += value
        return {name: sums[name] / count for name in names}

    def _validation_metrics(self, batch: PoseBatch) -> dict[str, float]:
        if self.network_name == "fine":  # needs dL_N/dtheta, so gradients stay on (weights untouched)
            parts = fine_forward(self.network, self.simulator, batch, create_graph=False)
            return {name: float(parts[name].detach()) for name in VAL_METRICS["fine"]}
        with torch.no_grad():
            parts, params = rtpi_forward(self.network, self.simulator, self.loss, batch)
            rotation, translation = pose_errors(
                self.simulator.pose_matrix(params),
                self.simulator.pose_matrix(batch.target_params),
                self.simulator.centre,
            )
        values = {name: float(parts[name]) for name in ("total", "similarity", "mse")}
        return {
            **values,
            "rotation_error_deg": float(rotation.mean()),
            "translation_error_mm": float(translation.mean()),
        }

    def end_period(self, logs: TrainingLogs) -> None:
        """Validate, log a ``metrics.csv`` row, keep ``best.pt``, write ``last.pt``."""
        metrics = self.validate()
        count = max(self.sums["count"], 1.0)
        row = {
            "step": self.global_step,
            "lr": self.optimizer.param_groups[0]["lr"],
            **{f"train_{name}": self.sums[name] / count for name in TRAIN_PARTS[self.network_name]},
            **{f"val_{name}": value for name, value in metrics.items()},
            "wall_s": self.wall_s(),
        }
        improved = metrics["total"] < self.best_metric
        self.close_period(row, metrics["total"], improved, csv_fields(self.network_name), logs)

    def result(self) -> PoseTrainResult:
        return PoseTrainResult(
            self.out_dir,
            self.network_name,
            *self.checkpoints(),
            self.global_step,
            self.best_metric if math.isfinite(self.best_metric) else math.nan,
            list(self.history),
            list(self.step_losses),
        )


def validate_checkpoint(
    config: SopiConfig | str | Path, network: str, checkpoint: str | Path, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """The validation metrics (``metrics.csv``'s ``val_*``) of a SOPI checkpoint's weights on ``config``'s
    validation pairs: e.g. a network before fine-tuning, on the pairs its fine-tuning validates on.

    Raises:
        InputError: as ``train_pose``'s ``init``: another network, or another architecture or view.
    """
    config = config if isinstance(config, SopiConfig) else load_sopi_config(config)
    device = torch.device(device)
    with deterministic_algorithms():
        run = _PoseRun(config, network, Path(checkpoint).parent, device)
        run.network.load_state_dict(_initial_weights(Path(checkpoint), config, network, device))
        return run.validate()


def _with_steps(config: SopiConfig, steps: int | None) -> SopiConfig:
    if steps is None:
        return config
    if steps < 1:
        raise InputError(f"steps: expected >= 1, got {steps}")
    return dataclasses.replace(config, training=dataclasses.replace(config.training, steps=steps))


def _check_resumable(config: SopiConfig, network: str, state: dict[str, Any], path: Path) -> None:
    """``InputError`` unless the checkpoint is a SOPI ``network`` run of the same config (steps aside)."""
    if state.get("kind") != KIND or state.get("network") != network:
        raise InputError(f"{path}: not a SOPI {network} checkpoint (found {state.get('kind')} {state.get('network')})")
    theirs = SopiConfig.from_dict(state["config"], f"{path}: config")
    if _with_steps(theirs, config.training.steps) != config:
        raise InputError(f"{path}: the config differs from the checkpoint's (only training.steps may change)")


def train_pose(
    config: SopiConfig | str | Path,
    out: str | Path,
    network: str,
    resume: bool = False,
    steps: int | None = None,
    max_steps: int | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    init: str | Path | None = None,
) -> PoseTrainResult:
    """Train (or continue training) a SOPI pose network on simulated pairs (``biplanar train-pose``).

    Writes checkpoints, ``metrics.csv`` and TensorBoard logs into ``out`` (module doc); Ctrl-C
    checkpoints as :func:`~biplanar.api.train`.

    Args:
        config: a :class:`SopiConfig`, a SOPI config YAML file or a preset name: ``sopi_tiny``,
            ``sopi_lite`` (femur), ``sopi_lumbar`` (the real lumbar CT).
        out: the run folder (created).
        network: ``rtpi`` (the initial pose) or ``fine`` (the fine registration's encoders).
        resume: continue the run in ``out`` exactly, from its ``last.pt`` (same config and network).
        steps: override the config's ``training.steps`` (the total, counting done steps).
        max_steps: stop with a checkpoint after this many steps in total.
        progress: show a progress bar on stderr.
        device: where to train (default: CUDA when available, else the CPU).
        init: start a new run from this SOPI checkpoint's weights (e.g. the bundled ``rtpi.pt``)
            instead of a random initialisation: fine-tuning. Its network and geometry must be the
            config's; the optimizer and schedule start afresh. Ignored with ``resume``.

    Returns:
        the steps done, the best validation loss (NaN without validation) and the checkpoints.

    Raises:
        InputError: a bad config or network name, a checkpoint that does not fit, ``out`` holding a
            run without ``resume`` (or none with it).
        TrainingInterrupted: Ctrl-C / SIGTERM, after writing ``last.pt``.
    """
    require_output_folder(out)
    if network not in NETWORKS:
        raise InputError(f"network: expected one of {', '.join(NETWORKS)}, got {network!r}")
    config = _with_steps(config if isinstance(config, SopiConfig) else load_sopi_config(config), steps)
    out_dir = Path(out)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    check_run_dir(out_dir, resume)
    state = None
    if resume:
        state, path = resume_state(out_dir, device)
        _check_resumable(config, network, state, path)
    weights = None if init is None or resume else _initial_weights(Path(init), config, network, device)
    with deterministic_algorithms():
        run = _PoseRun(config, network, out_dir, device)  # reads the data source: refused before the folder
        prepare_run_dir(config, out_dir, resume)
        if state is not None:
            run.restore(state)
        if weights is not None:
            run.network.load_state_dict(weights)
        return _loop(run, progress, math.inf if max_steps is None else max_steps, resume)


def _initial_weights(path: Path, config: SopiConfig, network: str, device: torch.device) -> dict[str, Tensor]:
    """The weights of SOPI checkpoint ``path`` for fine-tuning ``network``; ``InputError`` when it is
    another network or its architecture or view differ from ``config``'s."""
    state = load_checkpoint(path, device)
    if state.get("kind") != KIND or state.get("network") != network:
        raise InputError(f"--init: {path}: not a SOPI {network} checkpoint")
    theirs = SopiConfig.from_dict(state["config"], f"{path}: config")
    for section in ("geometry", network):
        if getattr(theirs, section) != getattr(config, section):
            raise InputError(
                f"--init: {path}: its {section} settings differ from the config's; fine-tuning needs the same network"
            )
    return load_weights(build_network(config, network), state, path, device).state_dict()


def _loop(run: _PoseRun, progress: bool, max_steps: float, resume: bool) -> PoseTrainResult:
    training = run.config.training
    run.train_steps(
        training.steps,
        training.validate_every,
        run.network_name,
        progress,
        max_steps,
        resume,
        training.checkpoint_minutes,
    )
    return run.result()
