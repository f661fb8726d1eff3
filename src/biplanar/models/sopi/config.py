"""SOPI configuration: YAML presets (``sopi_tiny``, ``sopi_lite``, ``sopi_lumbar``) validated into dataclasses.

The same YAML-to-dataclass rules as :mod:`biplanar.config` (unknown fields and wrong types are
one-line :class:`~biplanar.errors.InputError`); a :class:`SopiConfig` travels inside each SOPI
checkpoint so that a checkpoint alone rebuilds its network.

Pose parameters (:func:`biplanar.geometry.transforms.rigid_matrix`): ``(rx, ry, rz)`` radians,
``(tx, ty, tz)`` mm along world x (patient's right), y (anterior: the AP view's beam axis) and z
(superior), rotations about the CT volume's centre. The networks regress *scaled* parameters
``z = params / sigma`` with ``sigma`` the training distribution's standard deviations
(:meth:`SopiConfig.param_sigmas`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

# The shared YAML-to-dataclass rules and field constraints of the experiment configs (same rules, same messages).
from biplanar.config import (
    DEFAULT_NUM_SAMPLES,
    FLOAT_BYTES,
    GRID_SHAPES,
    MAX_FEATURES,
    MAX_IMAGE_SIDE,
    MAX_ITERATIONS,
    MAX_LEVELS,
    MAX_SAMPLES,
    SAMPLE_VALUES,
    VOLUME_CHANNELS,
    DictConfig,
    Numbers,
    bounded,
    check_memory,
    choice,
    constrained,
    entries,
    fraction,
    load_yaml_dataclass,
    non_negative,
    positive,
)
from biplanar.errors import InputError

PHANTOM = "phantom"


@dataclass(frozen=True)
class PoseGeometryConfig:
    """The CT grid and the single (AP) view of SOPI.

    Attributes:
        grid_preset: phantom grid (``paper``, ``lite``, ``tiny``); unused for a CT ``data.source``.
        image_shape: ``(rows, cols)`` of the radiograph.
        pixel_spacing_mm: detector pixel spacing, mm (both directions).
        num_samples: ProST samples per ray (``prost_samples`` in older files and checkpoints).
        depth_margin_mm: depth added before and after the volume's box so that posed volumes
            (translated along the beam, rotated) stay inside ProST's sampled depth range, mm.
    """

    grid_preset: str = choice("lite", GRID_SHAPES)  # a name, never a path, whatever the source
    image_shape: tuple[int, int] = bounded((112, 80), 8, MAX_IMAGE_SIDE, lengths=(2, 2))
    pixel_spacing_mm: float = positive(1.86)
    num_samples: int = bounded(DEFAULT_NUM_SAMPLES, 1, MAX_SAMPLES)
    depth_margin_mm: float = 120.0


@dataclass(frozen=True)
class PoseDataConfig:
    """On-the-fly training pairs: a CT posed by random parameters and its DRR as the X-ray.

    Attributes:
        source: ``phantom`` (femur phantoms of ``geometry.grid_preset``), ``real_ct`` (the
            repository's lumbar-pelvis CT, :mod:`biplanar.data.real_ct`) or a CT NIfTI path in HU.
        subjects: phantom pool size (subjects are rendered once and cached).
        rotation_sigma_deg: standard deviation of each Euler angle of the true pose, degrees.
        translation_sigma_mm: standard deviations of the true ``(tx, ty, tz)``, mm.
        fine_rotation_sigma_deg: fine-registration training: standard deviation of the offset of
            each starting angle from the truth, degrees (the residual error after RTPI).
        fine_translation_sigma_mm: the same for ``(tx, ty, tz)``, mm.
        mask: the volume projected into L_N's mask: ``labels`` (the phantom's femur; a CT source
            falls back to the threshold) or ``threshold`` (voxels above ``bone_threshold_hu``).
        bone_threshold_hu: bone threshold of the ``threshold`` mask, HU.
        mask_min_path_mm: a pixel is in the projected mask where the mask path length exceeds this, mm.
        validation_samples: poses (and, for phantoms, held-out subjects) of the validation set.
        clinical_fraction: share of training X-rays turned into a clinic's processed image
            (:func:`biplanar.physics.clinical_appearance.clinical_radiograph`, appearance drawn per
            sample, training and validation alike), so that the networks see what a user's
            radiograph looks like.
    """

    source: str = PHANTOM
    subjects: int = bounded(64, 1, 1024)
    rotation_sigma_deg: float = 20.0
    translation_sigma_mm: tuple[float, float, float] = entries((5.0, 33.0, 10.0), 3)
    fine_rotation_sigma_deg: float = 5.0
    fine_translation_sigma_mm: tuple[float, float, float] = entries((2.0, 8.0, 3.0), 3)
    mask: str = choice("labels", ("labels", "threshold"))
    bone_threshold_hu: float = 200.0
    mask_min_path_mm: float = 1.0
    validation_samples: int = bounded(16, 1, 1024)
    clinical_fraction: float = constrained(0.0, Numbers(0.0, 1.0, exclusive=False))


@dataclass(frozen=True)
class RTPIConfig:
    """RTPI, the asymmetric dual-branch initialisation network.

    Attributes:
        volume_shape: ``(I, J, K)`` the CT is resampled to before the 3D branch.
        volume_features: features of the 3D blocks (each halves the volume).
        image_features: features of the 2D blocks on the radiograph (each halves the image).
        localisation_features: features of the four residual blocks of the localisation net.
        head_features: hidden width of each parameter-specific head.
    """

    volume_shape: tuple[int, int, int] = bounded((48, 32, 48), 2, 512, lengths=(3, 3))
    volume_features: tuple[int, ...] = bounded((8, 16, 16), 1, MAX_FEATURES, lengths=(0, MAX_LEVELS))
    image_features: tuple[int, ...] = bounded((16, 32), 1, MAX_FEATURES, lengths=(0, MAX_LEVELS))
    localisation_features: tuple[int, int, int, int] = bounded((32, 64, 64, 128), 1, MAX_FEATURES, lengths=(4, 4))
    head_features: int = bounded(64, 1, MAX_FEATURES)


@dataclass(frozen=True)
class FineConfig:
    """The composite-connection encoders of the fine registration.

    Attributes:
        stem_features: features of the shallow stem (two stride-2 convolutions).
        level_features: ``(c3, c4, c5)`` features of each cascade-fusion block's three scales.
        radix: splits of the split-attention convolutions.
        attention_reduction: channel reduction of the split-attention's squeeze layer.
    """

    stem_features: int = bounded(16, 1, MAX_FEATURES)
    level_features: tuple[int, int, int] = bounded((16, 32, 64), 1, MAX_FEATURES, lengths=(3, 3))
    radix: int = bounded(2, 1, 16)
    attention_reduction: int = bounded(4, 1, MAX_FEATURES)


@dataclass(frozen=True)
class PoseLossConfig:
    """RTPI's loss ``alpha * L_GD + beta * MSE(z_hat, z) + lam * R``.

    Attributes:
        alpha: weight of the gradient-difference loss between the X-ray and the DRR at the prediction.
        beta: weight of the MSE of the scaled parameters.
        lam: weight of the regulariser ``R``.
        regulariser: ``weights`` (``R = 1/2 sum w^2`` over the network's weights: the public SOPI
            code trains RTPI with weight decay 0.01) or ``pose`` (``R = mean z_hat^2``, a Gaussian
            prior on the scaled prediction).
    """

    alpha: float = non_negative(1.0)
    beta: float = non_negative(1.0)
    lam: float = non_negative(0.01)
    regulariser: str = choice("weights", ("weights", "pose"))


@dataclass(frozen=True)
class PoseTrainingConfig:
    """Optimiser, schedule and run settings (Adam, cosine-annealed over ``steps``)."""

    learning_rate: float = positive(1e-4)
    batch_size: int = bounded(2, 1, 1024)
    steps: int = bounded(20000, 1)
    seed: int = 0
    checkpoint_minutes: float = non_negative(10.0)
    validate_every: int = bounded(500, 1)


@dataclass(frozen=True)
class FineSearchConfig:
    """Inference of the fine registration: normalised-gradient descent on the pose.

    The encoders are trained for the *direction* of ``dL_N/dtheta`` only, so each step moves the
    rotation and the translation by a step length along their unit gradient; a step length is
    multiplied by ``step_decrease`` whenever its part's gradient turns by more than 90 degrees.

    Attributes:
        rotation_step_deg: first rotation step, degrees.
        translation_step_mm: first translation step, mm.
        step_decrease: factor applied to a step length when its gradient reverses.
        rotation_iterations: the rotation is frozen after this many iterations.
        max_iterations: iteration cap.
        tolerance_deg: the rotation has converged when its step is below this, degrees.
        tolerance_mm: the translation has converged when its step is below this, mm.
    """

    rotation_step_deg: float = positive(2.0)
    translation_step_mm: float = positive(4.0)
    step_decrease: float = fraction(0.5)
    rotation_iterations: int = bounded(20, 0, MAX_ITERATIONS)
    max_iterations: int = bounded(100, 1, MAX_ITERATIONS)
    tolerance_deg: float = positive(0.05)
    tolerance_mm: float = positive(0.1)


@dataclass(frozen=True)
class SopiConfig(DictConfig):
    """Everything that defines the SOPI networks, their training data and their inference."""

    name: str = "sopi_lite"
    geometry: PoseGeometryConfig = field(default_factory=PoseGeometryConfig)
    data: PoseDataConfig = field(default_factory=PoseDataConfig)
    rtpi: RTPIConfig = field(default_factory=RTPIConfig)
    fine: FineConfig = field(default_factory=FineConfig)
    loss: PoseLossConfig = field(default_factory=PoseLossConfig)
    training: PoseTrainingConfig = field(default_factory=PoseTrainingConfig)
    search: FineSearchConfig = field(default_factory=FineSearchConfig)

    def check_across_fields(self) -> None:
        """Level features divisible by the radix, a volume shape that survives RTPI's halvings, and the
        networks' memory (:func:`~biplanar.config.check_memory`)."""
        if any(width % self.fine.radix for width in self.fine.level_features):
            raise InputError(
                f"config: fine.level_features: expected multiples of radix {self.fine.radix}, "
                f"got {list(self.fine.level_features)}"
            )
        if min(*self.rtpi.volume_shape) < 2 ** len(self.rtpi.volume_features):
            raise InputError(
                f"config: rtpi.volume_shape {list(self.rtpi.volume_shape)} is too small for "
                f"{len(self.rtpi.volume_features)} halvings"
            )
        check_memory(sopi_bytes(self), "the SOPI networks")

    def param_sigmas(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(6,)`` standard deviations of the true pose: 3 x radians, then ``(tx, ty, tz)`` mm."""
        rotation = math.radians(self.data.rotation_sigma_deg)
        return torch.tensor([rotation] * 3 + list(self.data.translation_sigma_mm), dtype=dtype)

    def fine_offset_sigmas(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(6,)`` standard deviations of the fine stage's starting offsets (radians, mm)."""
        rotation = math.radians(self.data.fine_rotation_sigma_deg)
        return torch.tensor([rotation] * 3 + list(self.data.fine_translation_sigma_mm), dtype=dtype)


def sopi_bytes(config: SopiConfig) -> int:
    """Estimated bytes of the dominant float32 tensors of one case through the SOPI networks of ``config``.

    ProST's samples (``num_samples`` per pixel of the one view, :data:`~biplanar.config.SAMPLE_VALUES`
    each), RTPI's widest 3D feature map, the widest 2D map and, for phantoms, the volumes on the
    preset's grid (a CT source's grid is its file's). A lower bound of what training needs.
    """
    pixels = math.prod(config.geometry.image_shape)
    rays = config.geometry.num_samples * pixels * SAMPLE_VALUES
    rtpi = math.prod(config.rtpi.volume_shape) * max(config.rtpi.volume_features, default=1)
    images = pixels * max(config.rtpi.image_features + config.fine.level_features + (config.fine.stem_features,))
    phantom = config.data.source == PHANTOM
    volume = math.prod(GRID_SHAPES[config.geometry.grid_preset]) * VOLUME_CHANNELS if phantom else 0
    return FLOAT_BYTES * (rays + rtpi + images + volume)


def load_sopi_config(path_or_preset: str | Path) -> SopiConfig:
    """Read a SOPI YAML config, or a shipped preset by name (``sopi_tiny``, ``sopi_lite``,
    ``sopi_lite_clinical``, ``sopi_lumbar``, ``sopi_lumbar_clinical``).

    Raises:
        InputError: a missing file, invalid YAML, or a field that is unknown, of the wrong type
            or out of range.
    """
    presets = ("sopi_tiny", "sopi_lite", "sopi_lite_clinical", "sopi_lumbar", "sopi_lumbar_clinical")
    return load_yaml_dataclass(path_or_preset, SopiConfig, presets)
