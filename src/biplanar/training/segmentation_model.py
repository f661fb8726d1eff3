"""The segmentation network's run configuration and checkpoints.

What loading the bundled 2D femur segmentation U-Net (:mod:`biplanar.models.segmentation`) needs,
apart from its training (:mod:`biplanar.training.segmentation_trainer`), so that loading it imports
no training stack (trainer, datasets, simulator):

- the run's config (:class:`SegmentationTrainingConfig`, with its :class:`AugmentationConfig`),
  which every checkpoint holds (:meth:`SegmentationTrainingConfig.to_dict`) and which rebuilds the
  network;
- checkpoint I/O: :func:`load_segmentation_model` (a full checkpoint of a run or a weights-only
  one; ``None``: the bundled model, :func:`bundled_segmentation_path`),
  :func:`export_segmentation_model` (the weights-only file that is bundled).

Checkpoints use :mod:`biplanar.training.checkpoints`' format with ``kind`` :data:`KIND` and
``network`` :data:`NETWORK`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from biplanar.errors import InputError
from biplanar.models.segmentation import SegmentationConfig, build_segmentation_net
from biplanar.training.checkpoints import bundled_model_path, export_model, load_checkpoint, load_weights

if TYPE_CHECKING:  # the type of annotations only: importing monai costs seconds
    from monai.networks.nets import UNet

KIND, NETWORK = "segmentation", "unet"  # the checkpoints' kind and network
BUNDLED_NAME = "segmentation_lite"  # biplanar/resources/models/segmentation_lite/model.pt
# The detector the bundled model was trained on (the lite preset: 112 x 80 pixels of 1.86 mm, the paper's
# field of view): segment(network, image, working_shape=BUNDLED_IMAGE_SHAPE) for images of other sizes.
BUNDLED_IMAGE_SHAPE = (112, 80)


@dataclass(frozen=True)
class AugmentationConfig:
    """Random intensity augmentations of a training radiograph.

    Applied by :func:`~biplanar.training.segmentation_trainer.augment_radiographs`; each is drawn
    per image. Values are in units of the normalised radiograph (its 1st percentile at 0, its 99th
    at 1) unless said otherwise.

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
        path: a ``best.pt`` / ``last.pt`` of
            :func:`~biplanar.training.segmentation_trainer.train_segmentation` or an export of
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
