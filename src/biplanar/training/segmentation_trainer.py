"""Training the 2D femur segmentation U-Net (:mod:`biplanar.models.segmentation`) on simulated radiographs.

One call, :func:`train_segmentation`, does a whole run (or continues one). Single process; CUDA
when available.

- Data (:func:`load_radiographs`): both views (``AP.npy``, ``LAT.npy``: unmasked line-integral
  radiographs) and their masks (``AP_mask.npy``, ``LAT_mask.npy``) of every subject of the
  ``train`` split of a ``biplanar simulate`` folder; validation on the ``val`` split. Every
  radiograph is one sample; all are held in memory.
- Augmentation (:func:`augment_radiographs`, on the fly, in torch, per image): the normalised
  radiograph goes through a random processing curve (log or window), gamma, Gaussian blur, unsharp
  masking, contrast and offset, Gaussian noise and polarity inversion (:class:`AugmentationConfig`).
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
:meth:`SegmentationTrainingConfig.to_dict`. :func:`export_segmentation_model` writes the
weights-only file that is bundled (:data:`BUNDLED_NAME`); :func:`load_segmentation_model` loads it.
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
from biplanar.data.simulate import VIEW_NAMES
from biplanar.errors import InputError
from biplanar.io.images import read_image
from biplanar.models.segmentation import (
    SegmentationConfig,
    build_segmentation_net,
    mask_dice,
    masks_from_logits,
    normalise_radiograph,
    segmentation_logits,
)
from biplanar.progress import print_stage
from biplanar.training.checkpoints import bundled_model_path, export_model, load_checkpoint, load_weights
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

KIND, NETWORK = "segmentation", "unet"
BUNDLED_NAME = "segmentation_lite"  # biplanar/resources/models/segmentation_lite/model.pt
# The detector the bundled model was trained on (the lite preset: 112 x 80 pixels of 1.86 mm, the paper's
# field of view): segment(network, image, working_shape=BUNDLED_IMAGE_SHAPE) for images of other sizes.
BUNDLED_IMAGE_SHAPE = (112, 80)
CSV_FIELDS = ("step", "lr", "train_loss", "val_dice_mean", "val_dice_min", "wall_s")
EVAL_BATCH = 64  # radiographs per forward pass in validation and evaluation
TRAIN_STREAM = 1  # the seed stream of the training batches and their augmentations


@dataclass(frozen=True)
class AugmentationConfig:
    """Random intensity augmentations of a training radiograph (:func:`augment_radiographs`).

    Each is drawn per image. Values are in units of the normalised radiograph (its 1st percentile
    at 0, its 99th at 1) unless said otherwise.

    Attributes:
        curve_p: probability of a processing curve, half of the time a log curve
            ``log(1 + k x) / log(1 + k)`` with ``k`` log-uniform in ``log_k``, half of the time a
            window ``clip((x - lo) / (hi - lo), 0, 1)`` with ``lo``, ``hi`` uniform in ``window_low``,
            ``window_high``.
        gamma_p, gamma: probability of a gamma ``max(x, 0) ** g``, ``g`` log-uniform in ``gamma``.
        blur_p, blur_sigma_px: probability of a Gaussian blur, its sigma uniform in ``blur_sigma_px`` (px).
        unsharp_p, unsharp_amount, unsharp_radius_px: probability of unsharp masking
            ``x + amount (x - blur(x, radius))``, amount and radius (px) uniform in the ranges.
        contrast, offset: ``a x + b`` (always), ``a`` and ``b`` uniform in the ranges; it scales the
            image against the noise that follows.
        noise_p, noise_sigma: probability of additive Gaussian noise, its sigma uniform in ``noise_sigma``.
        polarity_p: probability of ``-x`` (an inverted radiograph, bone dark).
    """

    curve_p: float = 0.5
    log_k: tuple[float, float] = (1.0, 30.0)
    window_low: tuple[float, float] = (-0.2, 0.2)
    window_high: tuple[float, float] = (0.8, 1.2)
    gamma_p: float = 0.7
    gamma: tuple[float, float] = (0.5, 2.0)
    blur_p: float = 0.5
    blur_sigma_px: tuple[float, float] = (0.0, 1.5)
    unsharp_p: float = 0.4
    unsharp_amount: tuple[float, float] = (0.2, 1.5)
    unsharp_radius_px: tuple[float, float] = (1.0, 4.0)
    contrast: tuple[float, float] = (0.5, 2.0)
    offset: tuple[float, float] = (-0.5, 0.5)
    noise_p: float = 0.8
    noise_sigma: tuple[float, float] = (0.0, 0.05)
    polarity_p: float = 0.2

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name.endswith("_p"):
                if not 0.0 <= value <= 1.0:
                    raise InputError(f"augmentation.{item.name}: expected a probability in [0, 1], got {value}")
            else:
                low, high = (float(v) for v in value)
                if not low <= high:
                    raise InputError(f"augmentation.{item.name}: expected (low, high) with low <= high, got {value}")
                object.__setattr__(self, item.name, (low, high))
        if self.log_k[0] <= 0 or self.gamma[0] <= 0 or self.blur_sigma_px[0] < 0 or self.unsharp_radius_px[0] < 0:
            raise InputError("augmentation: log_k and gamma > 0, blur_sigma_px and unsharp_radius_px >= 0 expected")


@dataclass(frozen=True)
class SegmentationTrainingConfig:
    """A segmentation training run.

    Attributes:
        network: the U-Net's architecture.
        augmentation: the training augmentations.
        steps: optimizer steps of the run.
        batch_size: radiographs per step.
        learning_rate: Adam's initial learning rate (cosine-annealed to 0 at ``steps``).
        validate_every: steps between validations (and checkpoints).
        seed: seeds the initial weights, the batches and the augmentations.
    """

    network: SegmentationConfig = field(default_factory=SegmentationConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    steps: int = 6000
    batch_size: int = 16
    learning_rate: float = 1e-3
    validate_every: int = 250
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.steps, self.batch_size, self.validate_every) < 1 or not self.learning_rate > 0:
            raise InputError(
                "segmentation training config: steps, batch_size, validate_every >= 1 and learning_rate > 0 expected"
            )

    def to_dict(self) -> dict[str, Any]:
        """Field name -> value, nested (lists for tuples: JSON- and YAML-ready)."""
        augmentation = {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self.augmentation).items()
        }
        return {
            "network": self.network.to_dict(),
            "augmentation": augmentation,
            **{
                name: getattr(self, name) for name in ("steps", "batch_size", "learning_rate", "validate_every", "seed")
            },
        }

    @classmethod
    def from_dict(
        cls, values: dict[str, Any], where: str = "segmentation training config"
    ) -> SegmentationTrainingConfig:
        """The inverse of :meth:`to_dict`.

        Raises:
            InputError: an unknown field (named with ``where``) or a bad value.
        """
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        unknown_augmentation = set(values.get("augmentation", {})) - {
            f.name for f in dataclasses.fields(AugmentationConfig)
        }
        if unknown or unknown_augmentation:
            raise InputError(f"{where}: unknown field(s) {sorted(unknown) + sorted(unknown_augmentation)}")
        rest = {key: value for key, value in values.items() if key not in ("network", "augmentation")}
        return cls(
            network=SegmentationConfig.from_dict(values.get("network", {}), f"{where}: network"),
            augmentation=AugmentationConfig(**values.get("augmentation", {})),
            **rest,
        )


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
    """Random intensity augmentations of a batch (see :class:`AugmentationConfig`; in that order).

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
) -> SegmentationTrainResult:
    """Train (or continue training) the segmentation U-Net; see the module doc for what is written.

    Args:
        data_dir: a ``biplanar simulate`` folder (its ``train`` and ``val`` splits are used), or
            several trained together (:func:`load_radiographs`).
        out_dir: the run folder (created).
        config: the run's config (default :class:`SegmentationTrainingConfig()`).
        steps: overrides ``config.steps`` (the total, counting steps already done).
        seed: overrides ``config.seed``.
        resume: continue the run in ``out_dir`` from its ``last.pt`` (same config; ``steps`` may change).
        max_steps: stop (with a checkpoint) once the run has done this many steps in total.
        progress: show a progress bar and a line per validation on stderr.
        device: where to train (default: CUDA when available, else the CPU).

    Raises:
        InputError: bad data or config, images whose sides are not multiples of the network's
            total stride, a mismatching checkpoint, ``out_dir`` holding a run without ``resume``
            (or none with it).
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
        state, path = resume_state(out_dir, device)
        _check_resumable(config, state, path)
    prepare_run_dir(config, out_dir, resume)
    with deterministic_algorithms():
        run = _SegmentationRun(config, train, val, out_dir, device, progress)
        if state is not None:
            run.restore(state)
        return _loop(run, progress, math.inf if max_steps is None else max_steps, resume)


def _loop(run: _SegmentationRun, progress: bool, max_steps: float, resume: bool) -> SegmentationTrainResult:
    config = run.config
    run.train_steps(config.steps, config.validate_every, "segmentation", progress, max_steps, resume)
    return run.result()


def export_segmentation_model(checkpoint: str | Path, out_path: str | Path) -> Path:
    """Write the weights-only copy of a segmentation checkpoint (config, weights, ``kind``) to
    ``out_path`` atomically: the file that is bundled (``biplanar/resources/models/<name>/model.pt``).

    Raises:
        InputError: a bad checkpoint or not a segmentation one (nothing is written then).
    """
    state = load_checkpoint(checkpoint)
    if state.get("kind") != KIND:
        raise InputError(f"{checkpoint}: not a segmentation checkpoint (found kind {state.get('kind')!r})")
    return export_model(checkpoint, out_path)


def bundled_segmentation_path() -> Path:
    """The bundled segmentation model, ``biplanar/resources/models/segmentation_lite/model.pt``.

    Raises:
        InputError: it is not there.
    """
    return bundled_model_path(BUNDLED_NAME)


def load_segmentation_model(
    path: str | Path | None = None, device: str | torch.device = "cpu"
) -> tuple[UNet, SegmentationConfig]:
    """The trained segmentation U-Net of a checkpoint (full or weights-only), in eval mode.

    Args:
        path: a ``best.pt`` / ``last.pt`` of :func:`train_segmentation` or an export of
            :func:`export_segmentation_model`; ``None``: the bundled model.
        device: where to put the network.

    Returns:
        ``(network, config)``: for :func:`biplanar.models.segmentation.segment`.

    Raises:
        InputError: a bad file, not a segmentation checkpoint, or weights that do not fit its config.
    """
    path = bundled_segmentation_path() if path is None else Path(path)
    state = load_checkpoint(path)
    if state.get("kind") != KIND or "model" not in state or "config" not in state:
        raise InputError(f"{path}: not a segmentation checkpoint (found kind {state.get('kind')!r})")
    config = SegmentationTrainingConfig.from_dict(state["config"], f"{path}: config").network
    return load_weights(build_segmentation_net(config), state, path, device), config
