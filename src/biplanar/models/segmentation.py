"""2D femur segmentation of a radiograph: a small MONAI U-Net, its input normalisation and inference.

The network (:func:`build_segmentation_net`) is MONAI's ``UNet`` (2D, one input channel: the
normalised radiograph; one output channel: the femur logit). Its input is
:func:`normalise_radiograph` of a line-integral radiograph, so that any positive affine intensity
map of the radiograph (a scale and an offset) gives the same input.

:func:`segment` is the inference of one radiograph: ``(rows, cols)`` line integral in,
``(rows, cols)`` bool femur mask out (``sigmoid(logit) > 0.5``, then the largest connected
component). Any image size works: the batch is padded (edge values) to a multiple of the
network's total stride and the logits are cropped back.

Trained by :mod:`biplanar.training.segmentation_trainer`; loaded, exported and bundled by
:mod:`biplanar.training.segmentation_model`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.ndimage
import torch
import torch.nn.functional as F
from torch import Tensor

from biplanar.config import MAX_FEATURES, MAX_LEVELS
from biplanar.errors import InputError, shown

if TYPE_CHECKING:  # the type of annotations only: importing monai costs seconds
    from monai.networks.nets import UNet

NORMALISATION_PERCENTILES = (1.0, 99.0)  # the lower and upper robust levels of normalise_radiograph, %
MIN_RANGE = 1e-6  # the smallest percentile range divided by (a flat image stays finite)
THRESHOLD = 0.5  # foreground probability above which a pixel is femur
NORMS = ("instance", "batch")


@dataclass(frozen=True)
class SegmentationConfig:
    """The segmentation U-Net's architecture (MONAI ``UNet`` arguments).

    Attributes:
        channels: feature channels per level, finest first (``len(strides) + 1`` of them).
        strides: the downsampling stride between consecutive levels; their product is the multiple
            that :func:`segment` pads an image to.
        num_res_units: residual units per block (0: plain convolutions).
        dropout: dropout probability in every block.
        norm: ``instance`` or ``batch`` normalisation in every block.
    """

    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 2
    dropout: float = 0.0
    norm: str = "instance"

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
            object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        except (TypeError, ValueError, OverflowError):
            raise InputError(
                f"segmentation config: channels and strides: expected lists of integers, "
                f"got {shown(self.channels)} and {shown(self.strides)}"
            ) from None
        if not 2 <= len(self.channels) <= MAX_LEVELS + 1 or len(self.strides) != len(self.channels) - 1:
            raise InputError(
                f"segmentation config: channels and strides: expected len(strides) == len(channels) - 1 "
                f"in 1..{MAX_LEVELS}, got {shown(self.channels)} and {shown(self.strides)}"
            )
        sizes = (*self.channels, *self.strides, self.num_res_units)
        if not all(isinstance(size, int) for size in sizes) or max(sizes) > MAX_FEATURES:
            raise InputError(
                f"segmentation config: channels, strides, num_res_units: expected integers <= {MAX_FEATURES}"
            )
        if min(self.channels) < 1 or min(self.strides) < 1 or self.num_res_units < 0:
            raise InputError("segmentation config: channels and strides >= 1 and num_res_units >= 0 expected")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"segmentation config: dropout: expected in [0, 1), got {self.dropout}")
        if self.norm not in NORMS:
            raise InputError(f"segmentation config: norm: expected one of {', '.join(NORMS)}, got {self.norm!r}")

    @property
    def size_multiple(self) -> int:
        """The product of the strides: image sides the network takes without padding are its multiples."""
        return math.prod(self.strides)

    def to_dict(self) -> dict[str, Any]:
        """Field name -> value (lists for the tuples: JSON- and YAML-ready)."""
        values = dataclasses.asdict(self)
        return {**values, "channels": list(self.channels), "strides": list(self.strides)}

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "segmentation config") -> SegmentationConfig:
        """The inverse of :meth:`to_dict`.

        Raises:
            InputError: an unknown field (named with ``where``) or a bad value.
        """
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InputError(f"{where}: unknown field(s) {sorted(unknown)}")
        return cls(**values)


def build_segmentation_net(config: SegmentationConfig) -> UNet:
    """The untrained U-Net of ``config``: ``(B, 1, rows, cols)`` normalised radiograph ->
    ``(B, 1, rows, cols)`` femur logits (rows and cols multiples of ``config.size_multiple``)."""
    from monai.networks.nets import UNet  # lazy: monai costs seconds of start-up (register without masks only)

    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=config.channels,
        strides=config.strides,
        num_res_units=config.num_res_units,
        dropout=config.dropout,
        norm=config.norm,
    )


def normalise_radiograph(image: Tensor) -> Tensor:
    """Robust per-image normalisation: ``(x - p1) / (p99 - p1)`` with ``p1`` and ``p99`` the 1st and
    99th percentiles of each image's pixels (linear interpolation, ``torch.quantile``).

    Percentiles move with any positive affine map ``a x + b`` of the pixel values, so the result
    does not depend on the radiograph's scale and offset (up to float rounding); a negative ``a``
    (inverted polarity) gives ``1 - result``. The range is clamped to :data:`MIN_RANGE` so a flat
    image gives zeros, not NaN.

    Args:
        image: ``(B, 1, rows, cols)`` radiographs, any intensity unit (line integrals, dimensionless).

    Returns:
        ``(B, 1, rows, cols)`` float32, dimensionless: about 0 at the 1st percentile, 1 at the 99th.
    """
    if image.dim() != 4 or image.shape[1] != 1:
        raise ValueError(f"image: expected (B, 1, rows, cols), got {tuple(image.shape)}")
    image = image.float()
    levels = torch.tensor([p / 100.0 for p in NORMALISATION_PERCENTILES], dtype=image.dtype, device=image.device)
    low, high = torch.quantile(image.flatten(1), levels, dim=1)  # (B,) each
    scale = (high - low).clamp_min(MIN_RANGE)
    return (image - low[:, None, None, None]) / scale[:, None, None, None]


def _stride_multiple(net: UNet) -> int:
    """The product of a MONAI UNet's strides (the multiple its input sides must be)."""
    return math.prod(int(s) for s in net.strides)


def segmentation_logits(net: UNet, images: Tensor, working_shape: tuple[int, int] | None = None) -> Tensor:
    """The network's femur logits of a batch of radiographs of any size (no gradient).

    With ``working_shape`` the batch is first resampled to that shape (bilinear, antialiased) and
    the logits back to the input's (bilinear): a network trained on one detector (e.g. the bundled
    one: 112 x 80 pixels of 1.86 mm) then segments radiographs of the same field of view at another
    pixel size (the ``tiny`` and ``paper`` presets' 56 x 40 and 224 x 160 pixels). The batch is
    normalised (:func:`normalise_radiograph`), padded at the bottom and right with its edge values
    to a multiple of the network's total stride, run in eval mode, and cropped back.

    Args:
        net: a segmentation U-Net (:func:`build_segmentation_net`), on any device.
        images: ``(B, 1, rows, cols)`` line-integral radiographs (dimensionless), any device.
        working_shape: ``(rows, cols)`` to run the network at; ``None``: the input's own.

    Returns:
        ``(B, 1, rows, cols)`` float32 logits on ``net``'s device (``> 0``: femur).
    """
    device = next(net.parameters()).device
    images = images.to(device).float()
    shape = (int(images.shape[-2]), int(images.shape[-1]))
    resample = working_shape is not None and tuple(working_shape) != shape
    if working_shape is not None and resample:
        size = (int(working_shape[0]), int(working_shape[1]))
        images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
    normalised = normalise_radiograph(images)
    rows, cols = normalised.shape[-2:]
    multiple = _stride_multiple(net)
    pad_rows, pad_cols = -rows % multiple, -cols % multiple
    if pad_rows or pad_cols:
        normalised = F.pad(normalised, (0, pad_cols, 0, pad_rows), mode="replicate")
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            logits = net(normalised)[..., :rows, :cols]
    finally:
        net.train(was_training)
    return F.interpolate(logits, size=shape, mode="bilinear", align_corners=False) if resample else logits


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a 2D mask (``scipy.ndimage.label``); an empty mask stays empty.

    Args:
        mask: ``(rows, cols)`` bool.

    Returns:
        ``(rows, cols)`` bool, ``True`` on the largest component only (the first of equal sizes).
    """
    labels, count = scipy.ndimage.label(mask)
    if count == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]  # component 1..count
    return np.asarray(labels == int(np.argmax(sizes)) + 1)


def masks_from_logits(logits: Tensor) -> np.ndarray:
    """Femur masks of a logit batch: ``sigmoid > 0.5`` (logit > 0), then each image's largest component.

    Args:
        logits: ``(B, 1, rows, cols)`` femur logits.

    Returns:
        ``(B, rows, cols)`` bool.
    """
    foreground = (torch.sigmoid(logits[:, 0]) > THRESHOLD).cpu().numpy()
    return np.stack([largest_component(mask) for mask in foreground])


def segment(net: UNet, image: np.ndarray | Tensor, working_shape: tuple[int, int] | None = None) -> np.ndarray:
    """The femur mask of one radiograph (see the module doc).

    Args:
        net: a trained segmentation U-Net (e.g. the bundled one,
            :func:`biplanar.training.segmentation_model.load_segmentation_model`).
        image: ``(rows, cols)`` line-integral radiograph (dimensionless; any positive scale and
            offset), numpy or torch.
        working_shape: ``(rows, cols)`` to run the network at (:func:`segmentation_logits`), e.g.
            the shape it was trained on; ``None``: the radiograph's own.

    Returns:
        ``(rows, cols)`` bool, ``True`` on the femur: one connected component (or none).
    """
    pixels = torch.as_tensor(np.asarray(image) if isinstance(image, np.ndarray) else image)
    if pixels.dim() != 2:
        raise ValueError(f"image: expected (rows, cols), got {tuple(pixels.shape)}")
    return masks_from_logits(segmentation_logits(net, pixels.float()[None, None], working_shape))[0]


def mask_dice(predicted: np.ndarray | Tensor, truth: np.ndarray | Tensor) -> np.ndarray:
    """Per-image Dice ``2 |P ∩ T| / (|P| + |T|)`` of 2D masks (MONAI ``compute_dice``).

    Args:
        predicted, truth: ``(B, rows, cols)`` binary masks (bool or 0/1).

    Returns:
        ``(B,)`` float64 in ``[0, 1]``; 1.0 where both masks are empty, 0.0 where exactly one is.
    """
    p, t = (torch.as_tensor(np.asarray(m) if isinstance(m, np.ndarray) else m) for m in (predicted, truth))
    if p.dim() != 3 or p.shape != t.shape:
        raise ValueError(
            f"predicted and truth: expected one (B, rows, cols) shape, got {tuple(p.shape)}, {tuple(t.shape)}"
        )
    # (B, rows, cols) -> (B, C=1, rows, cols); ignore_empty=False scores empty vs empty as 1.0.
    from monai.metrics import compute_dice  # lazy: monai costs seconds of start-up

    values = compute_dice(p.float()[:, None], t.float()[:, None], include_background=True, ignore_empty=False)
    return values[:, 0].double().cpu().numpy()
