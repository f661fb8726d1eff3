"""Training the 2D femur segmentation U-Net (:mod:`biplanar.models.segmentation`) on simulated radiographs.

One call, :func:`train_segmentation`, does a whole run (or continues one). Single process; CUDA
when available.

- Data (:func:`load_radiographs`): both views (``AP.npy``, ``LAT.npy``: unmasked line-integral
  radiographs) and their masks (``AP_mask.npy``, ``LAT_mask.npy``) of every subject of the
  ``train`` split of a ``biplanar simulate`` folder; validation on the ``val`` split. Every
  radiograph is one sample; all are held in memory.
- Augmentation (:func:`augment_radiographs`, on the fly, in torch, per image): the normalised
  radiograph goes through a random processing curve (log or window), gamma, Gaussian blur, unsharp
  masking, contrast and offset, Gaussian noise and polarity inversion
  (:class:`~biplanar.training.segmentation_model.AugmentationConfig`).
  No geometric augmentation: the C-arm geometry of the simulated views is that of the real ones.
- Optimisation: MONAI ``DiceCELoss(sigmoid=True)`` on the logits; Adam at ``learning_rate``,
  cosine-annealed per step to 0 at ``steps``. Deterministic kernels; all randomness of step ``s``
  (the batch's radiographs and their augmentations) is drawn from a generator seeded by
  ``(seed, s)``, and the global generators (dropout) are checkpointed, so a resumed run repeats an
  uninterrupted one exactly.
- Validation every ``validate_every`` steps and at the end: per-radiograph Dice of
  :func:`~biplanar.models.segmentation.segment`'s masks (threshold, largest component) on the
  clean ``val`` radiographs; mean and minimum.
- Outputs in ``out_dir`` (each written atomically): ``config.yaml``, ``last.pt`` (after every
  validation and at the end), ``best.pt`` (highest mean validation Dice), ``metrics.csv`` (one row
  per validation: :data:`CSV_FIELDS`) and ``tensorboard/``.
- Ctrl-C / SIGTERM: the step in progress finishes, ``last.pt`` is written and
  :class:`~biplanar.training.trainer.TrainingInterrupted` is raised.

Checkpoints use :mod:`biplanar.training.checkpoints`' format (one endless epoch) with ``kind``
``segmentation`` and ``network`` ``unet``; their ``config`` is
:meth:`~biplanar.training.segmentation_model.SegmentationTrainingConfig.to_dict`. The run's config,
the export of the weights-only file that is bundled and the loading of a trained network are in
:mod:`biplanar.training.segmentation_model` (which imports none of the training stack).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from biplanar.data.datasets import SPLIT_FILE, SPLITS, split_subject_ids
from biplanar.errors import InputError
from biplanar.geometry.presets import VIEW_NAMES
from biplanar.io.images import read_image
from biplanar.models.segmentation import (
    build_segmentation_net,
    mask_dice,
    masks_from_logits,
    normalise_radiograph,
    segmentation_logits,
)
from biplanar.progress import print_stage
from biplanar.training.segmentation_model import (
    KIND,
    NETWORK,
    AugmentationConfig,
    SegmentationTrainingConfig,
    load_segmentation_model,
)
from biplanar.training.step_run import StepRun, resume_state
from biplanar.training.trainer import (
    DataDirs,
    RunCheckpoints,
    TrainingLogs,
    cosine_factor,
    deterministic_algorithms,
    prepare_run_dir,
    seed_everything,
)

if TYPE_CHECKING:  # the type of annotations only: importing monai costs seconds
    from monai.networks.nets import UNet

CSV_FIELDS = ("step", "lr", "train_loss", "val_dice_mean", "val_dice_min", "wall_s")
EVAL_BATCH = 64  # radiographs per forward pass in validation and evaluation
TRAIN_STREAM = 1  # the seed stream of the training batches and their augmentations


@dataclass
class RadiographSet:
    """Radiographs and femur masks of the subjects of one split (subject-major, AP then LAT).

    Attributes:
        subject_ids: ``N`` subject ids, one per radiograph (each subject twice).
        views: ``N`` view names (``AP`` / ``LAT``).
        images: ``(N, rows, cols)`` float32 line integrals (dimensionless).
        masks: ``(N, rows, cols)`` bool, ``True`` on the femur.
    """

    subject_ids: list[str]
    views: list[str]
    images: np.ndarray
    masks: np.ndarray


def load_radiographs(data_dir: DataDirs, split: str) -> RadiographSet:
    """Both views and masks of every subject of ``split`` of a ``biplanar simulate`` folder, or of
    several folders one after the other (their subject ids then prefixed ``<folder name>/``).

    Args:
        data_dir: the dataset folder(s) (``split.json``, ``subjects/<id>/{AP,LAT}{,_mask}.npy``).
        split: ``train``, ``val``, ``test`` or ``all``.

    Raises:
        InputError: unknown or empty split, a missing file, or images of different shapes.
    """
    if split not in SPLITS:
        raise InputError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    roots = [Path(data_dir)] if isinstance(data_dir, (str, Path)) else [Path(root) for root in data_dir]
    if not roots:
        raise InputError("data: expected at least one dataset folder")
    subject_ids, views, images, masks = [], [], [], []
    for root in roots:
        prefix = f"{root.name}/" if len(roots) > 1 else ""
        for name in _split_ids(root, split):
            folder = root / "subjects" / name
            for view in VIEW_NAMES:
                subject_ids.append(prefix + name)
                views.append(view)
                images.append(read_image(folder / f"{view}.npy"))
                masks.append(read_image(folder / f"{view}_mask.npy") > 0.5)
    shapes = {image.shape for image in images} | {mask.shape for mask in masks}
    if len(shapes) != 1:
        where = ", ".join(str(root / "subjects") for root in roots)
        raise InputError(f"{where}: radiographs and masks of different shapes {sorted(shapes)}")
    return RadiographSet(subject_ids, views, np.stack(images), np.stack(masks))


def _split_ids(data_dir: Path, split: str) -> list[str]:
    """The sorted subject ids of ``split`` (``all``: every split) of a dataset folder, at least one."""
    ids = split_subject_ids(data_dir, split)
    if not ids:
        raise InputError(f"{data_dir / SPLIT_FILE}: split {split!r} has no subjects")
    return ids


def gaussian_blur(images: Tensor, sigma_px: Tensor) -> Tensor:
    """Blur each image with its own isotropic Gaussian (separable, reflected borders).

    Args:
        images: ``(B, 1, rows, cols)``.
        sigma_px: ``(B,)`` standard deviations in pixels (0: unchanged).

    Returns:
        ``(B, 1, rows, cols)``.
    """
    batch, _, rows, cols = images.shape
    radius = max(1, min(math.ceil(3.0 * float(sigma_px.max())), rows - 1, cols - 1))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    sigma = sigma_px.to(images).clamp_min(1e-3)[:, None]
    kernel = torch.exp(-0.5 * (offsets[None] / sigma) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (B, 2 radius + 1)
    # One group per image: (B, 1, rows, cols) -> (1, B, rows, cols).
    padded = F.pad(images.transpose(0, 1), (radius, radius, radius, radius), mode="reflect")
    blurred = F.conv2d(padded, kernel[:, None, :, None], groups=batch)
    blurred = F.conv2d(blurred, kernel[:, None, None, :], groups=batch)
    return blurred.transpose(0, 1)


def augment_radiographs(images: Tensor, config: AugmentationConfig, generator: torch.Generator) -> Tensor:
    """Random intensity augmentations of a batch (see
    :class:`~biplanar.training.segmentation_model.AugmentationConfig`; in that order).

    Every parameter is drawn for every image from ``generator`` (CPU) in a fixed order, whether or
    not it is used, so one generator state gives one result.

    Args:
        images: ``(B, 1, rows, cols)`` line-integral radiographs (dimensionless).
        config: the augmentation ranges and probabilities.
        generator: a CPU ``torch.Generator``.

    Returns:
        ``(B, 1, rows, cols)`` float32 augmented radiographs (arbitrary intensity units: the network
        normalises its input, :func:`~biplanar.models.segmentation.normalise_radiograph`).
    """
    x = normalise_radiograph(images)
    batch, device = x.shape[0], x.device

    def uniform(bounds: tuple[float, float]) -> Tensor:
        low, high = bounds
        return (low + (high - low) * torch.rand(batch, generator=generator)).to(device)[:, None, None, None]

    def log_uniform(bounds: tuple[float, float]) -> Tensor:
        return uniform((math.log(bounds[0]), math.log(bounds[1]))).exp()

    def chance(p: float) -> Tensor:
        return (torch.rand(batch, generator=generator) < p).to(device)[:, None, None, None]

    curve, use_log = chance(config.curve_p), chance(0.5)
    k, low, high = log_uniform(config.log_k), uniform(config.window_low), uniform(config.window_high)
    logged = torch.log1p(k * x.clamp_min(0.0)) / torch.log1p(k)
    windowed = ((x - low) / (high - low).clamp_min(1e-3)).clamp(0.0, 1.0)
    x = torch.where(curve, torch.where(use_log, logged, windowed), x)

    gamma_on, gamma = chance(config.gamma_p), log_uniform(config.gamma)
    x = torch.where(gamma_on, x.clamp_min(0.0) ** gamma, x)

    blur_on, blur_sigma = chance(config.blur_p), uniform(config.blur_sigma_px)
    x = torch.where(blur_on, gaussian_blur(x, blur_sigma.flatten()), x)

    unsharp_on, amount, radius = (
        chance(config.unsharp_p),
        uniform(config.unsharp_amount),
        uniform(config.unsharp_radius_px),
    )
    x = torch.where(unsharp_on, x + amount * (x - gaussian_blur(x, radius.flatten())), x)

    x = uniform(config.contrast) * x + uniform(config.offset)

    noise_on, noise_sigma = chance(config.noise_p), uniform(config.noise_sigma)
    noise = torch.randn(x.shape, generator=generator).to(device)
    x = torch.where(noise_on, x + noise_sigma * noise, x)

    return torch.where(chance(config.polarity_p), -x, x)


def score_radiographs(
    net: UNet, images: np.ndarray, masks: np.ndarray, working_shape: tuple[int, int] | None = None
) -> np.ndarray:
    """Per-radiograph Dice of the network's masks (:func:`~biplanar.models.segmentation.segment`'s
    rule: threshold, largest component) against the truth.

    Args:
        net: a segmentation U-Net.
        images: ``(N, rows, cols)`` line-integral radiographs.
        masks: ``(N, rows, cols)`` bool truth masks.
        working_shape: ``(rows, cols)`` to run the network at
            (:func:`~biplanar.models.segmentation.segmentation_logits`); ``None``: the images' own.

    Returns:
        ``(N,)`` float64 Dice (:func:`~biplanar.models.segmentation.mask_dice`).
    """
    scores = []
    for start in range(0, len(images), EVAL_BATCH):
        batch = torch.from_numpy(images[start : start + EVAL_BATCH])[:, None]
        predicted = masks_from_logits(segmentation_logits(net, batch, working_shape))
        scores.append(mask_dice(predicted, masks[start : start + EVAL_BATCH]))
    return np.concatenate(scores)


@dataclass
class SegmentationTrainResult(RunCheckpoints):
    """What :func:`train_segmentation` did.

    Attributes:
        out_dir, last_checkpoint, best_checkpoint: the run's folder and checkpoints (:class:`RunCheckpoints`).
        global_step: optimizer steps done in the whole run.
        best_val_dice: highest mean validation Dice (``nan`` without validation).
        history: the rows of ``metrics.csv`` (:data:`CSV_FIELDS`).
        step_losses: the training loss of each step done by this call.
    """

    global_step: int
    best_val_dice: float
    history: list[dict[str, float]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)


def _step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of step ``step``'s batch and augmentations (seed stream :data:`TRAIN_STREAM`)."""
    state = np.random.SeedSequence([seed, TRAIN_STREAM, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class _SegmentationRun(StepRun):
    """The state of one training run and its steps (see the module doc)."""

    kind, network_name = KIND, NETWORK
    network: UNet

    def __init__(
        self,
        config: SegmentationTrainingConfig,
        train: RadiographSet,
        val: RadiographSet,
        out_dir: Path,
        device: torch.device,
        verbose: bool,
    ) -> None:
        self.config, self.out_dir, self.device, self.verbose = config, out_dir, device, verbose
        self.train_images, self.train_masks = torch.from_numpy(train.images), torch.from_numpy(train.masks)
        self.val = val
        seed_everything(config.seed)
        self.network = build_segmentation_net(config.network).to(device)
        from monai.losses import DiceCELoss  # lazy: monai costs seconds of start-up (training only)

        self.loss = DiceCELoss(sigmoid=True)
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=config.learning_rate)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: cosine_factor(step, config.steps)
        )
        self.step_losses: list[float] = []
        StepRun.__init__(self, ("loss",), -math.inf)

    def step_parts(self) -> dict[str, float]:
        """One optimizer step (:meth:`step`); its loss as the only part, ``total``."""
        return {"total": self.step()}

    def step(self) -> float:
        """One optimizer step on the augmented batch of :attr:`global_step`; returns its loss."""
        generator = _step_generator(self.config.seed, self.global_step)
        indices = torch.randint(len(self.train_images), (self.config.batch_size,), generator=generator)
        images = self.train_images[indices][:, None].to(self.device)
        targets = self.train_masks[indices][:, None].float().to(self.device)
        augmented = augment_radiographs(images, self.config.augmentation, generator)
        self.network.train()
        loss = self.loss(self.network(normalise_radiograph(augmented)), targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        value = float(loss.detach())
        self.global_step += 1
        self.sums["loss"] += value
        self.sums["count"] += 1
        self.step_losses.append(value)
        return value

    def end_period(self, logs: TrainingLogs) -> None:
        """Validate, log a ``metrics.csv`` row, keep ``best.pt``, write ``last.pt``."""
        dice = score_radiographs(self.network, self.val.images, self.val.masks)
        row = {
            "step": self.global_step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": self.sums["loss"] / max(self.sums["count"], 1.0),
            "val_dice_mean": float(dice.mean()),
            "val_dice_min": float(dice.min()),
            "wall_s": self.wall_s(),
        }
        improved = row["val_dice_mean"] > self.best_metric
        self.close_period(row, row["val_dice_mean"], improved, CSV_FIELDS, logs)
        print_stage(
            "train-segmentation",
            self.verbose,
            f"step {self.global_step}: train loss {row['train_loss']:.4f}, val Dice mean {row['val_dice_mean']:.4f} "
            f"min {row['val_dice_min']:.4f}, {row['wall_s']:.0f} s",
        )

    def result(self) -> SegmentationTrainResult:
        return SegmentationTrainResult(
            self.out_dir,
            *self.checkpoints(),
            self.global_step,
            self.best_metric if math.isfinite(self.best_metric) else math.nan,
            list(self.history),
            list(self.step_losses),
        )


def _check_resumable(config: SegmentationTrainingConfig, state: dict[str, Any], path: Path) -> None:
    """``InputError`` unless the checkpoint is a segmentation run of the same config (steps aside)."""
    if state.get("kind") != KIND:
        raise InputError(f"{path}: not a segmentation checkpoint (found kind {state.get('kind')!r})")
    theirs = SegmentationTrainingConfig.from_dict(state["config"], f"{path}: config")
    if dataclasses.replace(theirs, steps=config.steps) != config:
        raise InputError(f"{path}: the config differs from the checkpoint's (only steps may change)")


def _initial_weights(path: str | Path, config: SegmentationTrainingConfig) -> dict[str, Tensor]:
    """The weights of segmentation checkpoint ``path``; ``InputError`` unless its architecture is ``config.network``."""
    network, architecture = load_segmentation_model(path)
    if architecture != config.network:
        raise InputError(
            f"{path}: its network {architecture.to_dict()} differs from the run's {config.network.to_dict()}"
        )
    return network.state_dict()


def train_segmentation(
    data_dir: DataDirs,
    out_dir: str | Path,
    config: SegmentationTrainingConfig | None = None,
    steps: int | None = None,
    seed: int | None = None,
    resume: bool = False,
    max_steps: int | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    init: str | Path | None = None,
) -> SegmentationTrainResult:
    """Train (or continue training) the segmentation U-Net; see the module doc for what is written.

    Args:
        data_dir: a ``biplanar simulate`` folder (its ``train`` and ``val`` splits are used), or
            several trained together (:func:`load_radiographs`).
        out_dir: the run folder (created).
        config: the run's config (default
            :class:`~biplanar.training.segmentation_model.SegmentationTrainingConfig()`).
        steps: overrides ``config.steps`` (the total, counting steps already done).
        seed: overrides ``config.seed``.
        resume: continue the run in ``out_dir`` from its ``last.pt`` (same config; ``steps`` may change).
        max_steps: stop (with a checkpoint) once the run has done this many steps in total.
        progress: show a progress bar and a line per validation on stderr.
        device: where to train (default: CUDA when available, else the CPU).
        init: start a new run from this segmentation checkpoint's weights (a fine-tuning; e.g. the
            bundled ``model.pt``); its architecture must be ``config.network``. Not with ``resume``.

    Raises:
        InputError: bad data or config, images whose sides are not multiples of the network's
            total stride, a mismatching checkpoint, ``out_dir`` holding a run without ``resume``
            (or none with it), ``init`` with ``resume`` or of another architecture.
        TrainingInterrupted: on Ctrl-C / SIGTERM, after writing ``last.pt``.
    """
    config = config if config is not None else SegmentationTrainingConfig()
    if steps is not None or seed is not None:
        config = dataclasses.replace(
            config, steps=config.steps if steps is None else steps, seed=config.seed if seed is None else seed
        )
    out_dir = Path(out_dir)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    train, val = load_radiographs(data_dir, "train"), load_radiographs(data_dir, "val")
    multiple = config.network.size_multiple
    if any(side % multiple for side in train.images.shape[1:]):
        raise InputError(
            f"{data_dir}: radiographs of {train.images.shape[1:]} px, expected sides that are multiples of {multiple}"
        )
    state = None
    if resume:
        if init is not None:
            raise InputError("init: not with resume (a resumed run continues from its own last.pt)")
        state, path = resume_state(out_dir, device)
        _check_resumable(config, state, path)
    initial = None if init is None else _initial_weights(init, config)
    prepare_run_dir(config, out_dir, resume)
    with deterministic_algorithms():
        run = _SegmentationRun(config, train, val, out_dir, device, progress)
        if state is not None:
            run.restore(state)
        if initial is not None:
            run.network.load_state_dict(initial)
        return _loop(run, progress, math.inf if max_steps is None else max_steps, resume)


def _loop(run: _SegmentationRun, progress: bool, max_steps: float, resume: bool) -> SegmentationTrainResult:
    config = run.config
    run.train_steps(config.steps, config.validate_every, "segmentation", progress, max_steps, resume)
    return run.result()
