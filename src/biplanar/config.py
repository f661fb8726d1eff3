"""Experiment configuration: YAML presets validated into dataclasses.

A config fixes every size, width and depth of the network and its training; it travels inside each
checkpoint so that a checkpoint alone rebuilds its model. Presets live in ``configs/*.yaml``
(``paper``, ``lite``, ``tiny``) and are also shipped in ``biplanar/resources/configs``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from biplanar.errors import InputError

ConfigT = TypeVar("ConfigT")
# The presets of ExperimentConfig shipped in biplanar/resources/configs (also the simulation presets:
# biplanar.data.simulate takes each one's detector from here).
PRESETS = ("paper", "lite", "tiny")
# ProST samples per ray (``K``) wherever none is given: biplanar.layers.prost.ProST, the renderers and
# simulations built on it, and a config's ``geometry.num_samples`` (every shipped preset states its own).
DEFAULT_NUM_SAMPLES = 256
# Config fields renamed since checkpoints were first written, old name -> new name: a mapping that
# uses the old name (a YAML file, a checkpoint's config dict) is read as if it used the new one.
RENAMED_FIELDS = {"prost_samples": "num_samples"}


class DictConfig:
    """``to_dict`` / ``from_dict`` of a top-level config dataclass: the form a checkpoint carries."""

    # Declared for the type checker only (subclasses are dataclasses): makes ``self`` a DataclassInstance.
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # subclasses are dataclasses

    @classmethod
    def from_dict(cls: type[ConfigT], document: Any, source: str = "config") -> ConfigT:
        """Build the config from a (YAML) mapping, checking every field (:func:`build_dataclass`)."""
        return build_dataclass(cls, document, source)


@dataclass(frozen=True)
class GeometryConfig:
    """Atlas grid and detector.

    Attributes:
        grid_preset: atlas grid (``paper``, ``lite``, ``tiny``; see ``biplanar.data.grid_presets``).
        image_shape: ``(rows, cols)`` of the radiographs.
        pixel_spacing_mm: detector pixel spacing, mm (both directions).
        num_samples: ProST samples per ray (``prost_samples`` in older files and checkpoints).
    """

    grid_preset: str = "lite"
    image_shape: tuple[int, int] = (112, 80)
    pixel_spacing_mm: float = 1.86
    num_samples: int = DEFAULT_NUM_SAMPLES


@dataclass(frozen=True)
class AffineConfig:
    """Affine module: per-view 2D encoders with a combined branch, a dense layer to 7 parameters.

    Attributes:
        levels: strided levels, each halving the size and doubling the features.
        base_features: features of the first level.
        encoders: ``combined`` (AP, LAT and the preceding combined map convolved at every level,
            the paper) or ``separate`` (the ablation: combined only before the dense layer).
        init_std: standard deviation of the dense kernel's normal initialisation.
    """

    levels: int = 4
    base_features: int = 8
    encoders: str = "combined"
    init_std: float = 1e-5


@dataclass(frozen=True)
class LocalConfig:
    """Local module: per-view 2D-encoder / 3D-decoder U-nets in beam space, inv-ProST, velocity field.

    Attributes:
        encoder_features: features per 2D encoder level (each level halves the size).
        ray_copies: ``M``, copies of the last 2D map along the ray axis.
        decoder_features: features per 3D decoder step; the first ``len(encoder_features)`` steps are
            followed by x2 upsampling; must have more entries than ``encoder_features``.
        skip: skip connections from the 2D encoder to the 3D decoder.
        decoder: ``dual`` (one U-net per view, the paper) or ``single`` (one joint encoder-decoder).
        inv_prost: map beam space to the atlas grid with inv-ProST (``False``: the ablation that
            resamples the beam-space maps directly to the atlas grid).
        integration_steps: scaling-and-squaring steps.
        velocity_init_std: standard deviation of the last convolution's initial weights.
    """

    encoder_features: tuple[int, ...] = (8, 16, 16, 32)
    ray_copies: int = 4
    decoder_features: tuple[int, ...] = (32, 16, 16, 8, 8)
    skip: bool = True
    decoder: str = "dual"
    inv_prost: bool = True
    integration_steps: int = 7
    velocity_init_std: float = 1e-5


@dataclass(frozen=True)
class LossConfig:
    """Eq. 4: -NCC(V o T, V_f) - NCC(V o Psi, V_f) + smoothness_weight * L_smooth(phi).

    Attributes:
        ncc: ``local`` (windowed) or ``global``.
        ncc_window: window size (voxels) of the local NCC.
        smoothness_weight: ``delta``.
        masked: compare label-masked volumes (semi-supervised, the paper).
    """

    ncc: str = "local"
    ncc_window: int = 9
    smoothness_weight: float = 0.01
    masked: bool = True


@dataclass(frozen=True)
class TrainingConfig:
    """Optimiser, schedule and run settings."""

    learning_rate: float = 1e-4
    batch_size: int = 1
    epochs: int = 50
    seed: int = 0
    checkpoint_minutes: float = 10.0
    bf16: bool = False
    activation_checkpointing: bool = False
    num_workers: int = 0


@dataclass(frozen=True)
class ExperimentConfig(DictConfig):
    """Everything that defines a model and its training."""

    name: str = "lite"
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    affine: AffineConfig = field(default_factory=AffineConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def __post_init__(self) -> None:
        _validate(self)


_CHOICES = {
    ("affine", "encoders"): ("combined", "separate"),
    ("local", "decoder"): ("dual", "single"),
    ("loss", "ncc"): ("local", "global"),
}


def _validate(config: ExperimentConfig) -> None:
    check_choices(config, _CHOICES)
    rows, cols = config.geometry.image_shape
    for section, levels in (("affine", config.affine.levels), ("local", len(config.local.encoder_features))):
        if rows % 2**levels or cols % 2**levels:
            raise InputError(
                f"config: geometry.image_shape {rows}x{cols} is not divisible by 2^{levels} ({section} levels)"
            )
    if len(config.local.decoder_features) <= len(config.local.encoder_features):
        raise InputError("config: local.decoder_features: needs more entries than local.encoder_features")


def check_choices(config: Any, choices: Mapping[tuple[str, str], tuple[str, ...]]) -> None:
    """Check that each ``config.<section>.<name>`` of ``choices`` is one of its allowed strings.

    Raises:
        InputError: ``config: section.name: expected one of a, b, got 'c'``.
    """
    for (section, name), allowed in choices.items():
        value = getattr(getattr(config, section), name)
        if value not in allowed:
            raise InputError(f"config: {section}.{name}: expected one of {', '.join(allowed)}, got {value!r}")


def build_dataclass(cls: type, document: Any, where: str) -> Any:
    """Build a (nested) frozen config dataclass from a YAML mapping, checking every field.

    Args:
        cls: the dataclass; every field has a default (its type is read from the default).
        document: the mapping (e.g. ``yaml.safe_load`` of a config file); missing fields keep
            their defaults; an old field name of :data:`RENAMED_FIELDS` is read as its new name.
        where: what ``document`` is (a file name, ``"<file>: config"``), the start of every message.

    Returns:
        ``cls(**values)``, nested dataclasses built the same way.

    Raises:
        InputError: ``document`` is not a mapping, or a field is unknown or of the wrong type
            (the message names the field as ``where.section.name``).
    """
    if not isinstance(document, dict):
        raise InputError(f"{where}: expected a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    document = _renamed(document, set(fields), where)
    unknown = set(document) - set(fields)
    if unknown:
        raise InputError(f"{where}: unknown field(s) {sorted(unknown)}")
    defaults = cls()
    values = {name: _coerce(getattr(defaults, name), value, f"{where}.{name}") for name, value in document.items()}
    return cls(**values)


def _renamed(document: dict[str, Any], fields: set[str], where: str) -> dict[str, Any]:
    """``document`` with each old name of :data:`RENAMED_FIELDS` whose new name is one of ``fields`` renamed."""
    renamed = dict(document)
    for old, new in RENAMED_FIELDS.items():
        if old in renamed and new in fields and old not in fields:
            if new in renamed:
                raise InputError(f"{where}: {old} and {new} both given ({old} is the old name of {new})")
            renamed[new] = renamed.pop(old)
    return renamed


def _coerce(default: Any, value: Any, where: str) -> Any:
    """``value`` checked against the type of the field's ``default``."""
    if dataclasses.is_dataclass(default):
        return build_dataclass(type(default), value, where)
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where}: expected a list, got {value!r}")
        return tuple(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise InputError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(default, (int, float)):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise InputError(f"{where}: expected a number, got {value!r}")
        return float(value) if isinstance(default, float) else value
    if not isinstance(value, str):
        raise InputError(f"{where}: expected a string, got {value!r}")
    return value


def shipped_config_path(name: str) -> Path:
    """Path of a preset shipped with the package (:data:`PRESETS`, ``sopi_tiny``, ``sopi_lite``, ``sopi_lumbar``)."""
    return Path(str(resources.files("biplanar") / "resources" / "configs" / f"{name}.yaml"))


def load_yaml_dataclass(path_or_preset: str | Path, cls: type[ConfigT], presets: tuple[str, ...]) -> ConfigT:
    """Read a YAML config file, or a preset shipped in ``biplanar/resources/configs`` by name.

    Args:
        path_or_preset: a YAML file, or the name (no suffix) of a shipped preset.
        cls: the config dataclass, built by :func:`build_dataclass` (its ``__post_init__`` validates).
        presets: the preset names ``cls`` ships with (for the message of a missing file).

    Raises:
        InputError: a missing file, invalid YAML, or a field that is unknown or of the wrong type.
    """
    path = Path(path_or_preset)
    if not path.is_file() and path.suffix == "" and shipped_config_path(str(path_or_preset)).is_file():
        path = shipped_config_path(str(path_or_preset))
    if not path.is_file():
        raise InputError(f"{path}: file not found (nor a preset: {', '.join(presets)})")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise InputError(f"{path}: not valid YAML ({error})") from None
    return build_dataclass(cls, document, str(path))


def load_config(path_or_preset: str | Path) -> ExperimentConfig:
    """Read a YAML config file, or a shipped preset by name (``paper``, ``lite``, ``tiny``).

    Raises:
        InputError: a missing file, invalid YAML, or a field that is unknown or of the wrong type.
    """
    return load_yaml_dataclass(path_or_preset, ExperimentConfig, PRESETS)
