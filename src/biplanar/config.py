"""Experiment configuration: YAML presets validated into dataclasses.

A config fixes every size, width and depth of the network and its training; it travels inside each
checkpoint so that a checkpoint alone rebuilds its model. Presets live in ``configs/*.yaml``
(``paper``, ``lite``, ``tiny``) and are also shipped in ``biplanar/resources/configs``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from biplanar.errors import InputError, one_line, shown

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
# Voxels ``(I, J, K)`` of each grid preset, the names a config's ``grid_preset`` may take (never a path);
# biplanar.data.grid_presets gives them their spacings.
GRID_SHAPES: dict[str, tuple[int, int, int]] = {"paper": (192, 128, 192), "lite": (96, 64, 96), "tiny": (48, 32, 48)}
# Bounds of the sizes a config (a YAML file or a checkpoint's stored config) may ask for: physics and memory
# (a file from someone else must not make biplanar allocate tens of GB or loop for ever).
MAX_IMAGE_SIDE = 4096  # detector pixels per side (a 43 cm flat panel at 0.1 mm)
MAX_SAMPLES = 4096  # ProST samples per ray
MAX_FEATURES = 1024  # channels of any layer
MAX_LEVELS = 12  # strided levels (2^12 = MAX_IMAGE_SIDE)
MAX_ITERATIONS = 10_000  # iterations of an inference-time search
MAX_SUBJECTS = 1_000_000  # subjects of a simulated dataset (its ids are listed up front)
MAX_WORKERS = 256  # worker processes of a command
# The memory a config's network may need (:func:`check_memory`), GiB; the environment variable overrides it.
MAX_MEMORY_ENV = "BIPLANAR_MAX_MEMORY_GB"
DEFAULT_MAX_MEMORY_GB = 16.0
FLOAT_BYTES = 4  # float32
VIEWS = 2  # AP and LAT
SAMPLE_VALUES = 4  # per ProST sample: 3 grid coordinates and the sampled value
VOLUME_CHANNELS = 24  # atlas and label buffers, affine / velocity / displacement fields, warped volumes


# The key of a field's :class:`Constraint` tuple in its ``dataclasses.field`` metadata.
CONSTRAINTS = "biplanar.constraints"
FieldT = TypeVar("FieldT")


class Constraint(ABC):
    """What a config field may hold, declared with the field (:func:`choice`, :func:`bounded`,
    :func:`entries`, :func:`positive`, :func:`non_negative`, :func:`fraction`) and checked by
    :func:`check_fields`."""

    @abstractmethod
    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` (``expected ..., got ...``), or ``None`` when it is allowed."""


@dataclass(frozen=True)
class OneOf(Constraint):
    """A string that is one of ``options``."""

    options: tuple[str, ...]

    def problem(self, value: Any) -> str | None:
        """``expected one of a, b, got 'c'``, or ``None``."""
        if value in self.options:
            return None
        return f"expected one of {', '.join(self.options)}, got {shown(value)}"


@dataclass(frozen=True)
class Length(Constraint):
    """A list of ``low..high`` entries."""

    low: int
    high: int

    def problem(self, value: Any) -> str | None:
        """``expected 2 values, got [1, 2, 3]``, ``expected 1 to 12 values, got [...]``, or ``None``."""
        if self.low <= len(value) <= self.high:
            return None
        expected = f"{self.low}" if self.low == self.high else f"{self.low} to {self.high}"
        return f"expected {expected} values, got {shown(value)}"


@dataclass(frozen=True)
class Integers(Constraint):
    """An integer, or a list of integers, each in ``low..high`` (``high`` ``None``: at least ``low``)."""

    low: int
    high: int | None = None

    def problem(self, value: Any) -> str | None:
        """``expected an integer in 1..4096, got 0``, ``expected integers >= 1, got [0, 2]``, or ``None``."""
        values = value if isinstance(value, tuple) else (value,)
        if all(isinstance(v, int) and self.low <= v and (self.high is None or v <= self.high) for v in values):
            return None
        kind = "integers" if isinstance(value, tuple) else "an integer"
        span = f">= {self.low}" if self.high is None else f"in {self.low}..{self.high}"
        return f"expected {kind} {span}, got {shown(value)}"


@dataclass(frozen=True)
class Numbers(Constraint):
    """A finite number above ``low`` (or at least ``low`` unless ``exclusive``) and, unless ``high`` is
    ``None``, below ``high`` (a NaN is neither; a file's infinities are refused when it is read,
    :func:`build_dataclass`)."""

    low: float
    high: float | None = None
    exclusive: bool = True

    def problem(self, value: Any) -> str | None:
        """``expected a number >= 0, got -1.0``, ``expected a number in (0, 1), got 1.5``, or ``None``."""
        above = value > self.low if self.exclusive else value >= self.low
        if above and (self.high is None or value < self.high) and math.isfinite(value):
            return None
        if self.high is None:
            expected = f"{'>' if self.exclusive else '>='} {self.low:g}"
        else:
            expected = f"in {'(' if self.exclusive else '['}{self.low:g}, {self.high:g})"
        return f"expected a number {expected}, got {shown(value)}"


def constrained(default: FieldT, *constraints: Constraint) -> FieldT:
    """A dataclass field with ``default`` whose values :func:`check_fields` checks against each of
    ``constraints`` in turn."""
    return field(default=default, metadata={CONSTRAINTS: constraints})


def choice(default: str, options: Iterable[str]) -> str:
    """A string field that is one of ``options``."""
    return constrained(default, OneOf(tuple(options)))


def bounded(default: FieldT, low: int, high: int | None = None, *, lengths: tuple[int, int] | None = None) -> FieldT:
    """An integer field (a list: each entry) in ``low..high`` (no ``high``: at least ``low``); a list
    has ``lengths[0]..lengths[1]`` entries (checked first)."""
    if lengths is None:
        return constrained(default, Integers(low, high))
    return constrained(default, Length(*lengths), Integers(low, high))


def entries(default: FieldT, count: int) -> FieldT:
    """A list field of exactly ``count`` entries."""
    return constrained(default, Length(count, count))


def positive(default: float) -> float:
    """A finite number field > 0."""
    return constrained(default, Numbers(0.0))


def non_negative(default: float) -> float:
    """A finite number field >= 0 (a weight of 0: no such term)."""
    return constrained(default, Numbers(0.0, exclusive=False))


def fraction(default: float) -> float:
    """A number field strictly between 0 and 1."""
    return constrained(default, Numbers(0.0, 1.0))


def check_fields(instance: Any, prefix: str = "") -> None:
    """Check each field of the dataclass ``instance`` against its constraints (:class:`Constraint`), and the fields
    of its nested dataclasses the same way (in field order, depth first).

    Args:
        instance: a dataclass instance (a config, a settings object).
        prefix: the start of each message and of the field names (``"config: "``).

    Raises:
        InputError: ``<prefix>section.name: expected an integer in 1..4096, got 1000000000``.
    """
    for config_field in dataclasses.fields(instance):
        value = getattr(instance, config_field.name)
        if dataclasses.is_dataclass(value):
            check_fields(value, f"{prefix}{config_field.name}.")
            continue
        for constraint in config_field.metadata.get(CONSTRAINTS, ()):
            problem = constraint.problem(value)
            if problem is not None:
                raise InputError(f"{prefix}{config_field.name}: {problem}")


class DictConfig:
    """A top-level config dataclass: checked when built, and ``to_dict`` / ``from_dict``, the form a
    checkpoint carries."""

    # Declared for the type checker only (subclasses are dataclasses): makes ``self`` a DataclassInstance.
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def __post_init__(self) -> None:
        """Check every field against its constraints (:func:`check_fields`, ``config: section.name: ...``),
        then :meth:`check_across_fields` (so that it computes with sizes in range only)."""
        check_fields(self, "config: ")
        self.check_across_fields()

    def check_across_fields(self) -> None:
        """The checks that involve several fields (a subclass's; none here).

        Raises:
            InputError: ``config: ...``.
        """

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
        image_shape: ``(rows, cols)`` of the radiographs, each 8 to 4096.
        pixel_spacing_mm: detector pixel spacing, mm (both directions).
        num_samples: ProST samples per ray (``prost_samples`` in older files and checkpoints).
    """

    grid_preset: str = choice("lite", GRID_SHAPES)
    image_shape: tuple[int, int] = bounded((112, 80), 8, MAX_IMAGE_SIDE, lengths=(2, 2))
    pixel_spacing_mm: float = 1.86
    num_samples: int = bounded(DEFAULT_NUM_SAMPLES, 1, MAX_SAMPLES)


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

    levels: int = bounded(4, 1, MAX_LEVELS)
    base_features: int = bounded(8, 1, MAX_FEATURES)
    encoders: str = choice("combined", ("combined", "separate"))
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

    encoder_features: tuple[int, ...] = bounded((8, 16, 16, 32), 1, MAX_FEATURES, lengths=(1, MAX_LEVELS))
    ray_copies: int = bounded(4, 1, 64)
    decoder_features: tuple[int, ...] = bounded((32, 16, 16, 8, 8), 1, MAX_FEATURES, lengths=(2, 2 * MAX_LEVELS))
    skip: bool = True
    decoder: str = choice("dual", ("dual", "single"))
    inv_prost: bool = True
    integration_steps: int = bounded(7, 0, 20)
    velocity_init_std: float = 1e-5


@dataclass(frozen=True)
class LossConfig:
    """Eq. 4: -NCC(V o T, V_f) - NCC(V o Psi, V_f) + smoothness_weight * L_smooth(phi).

    Attributes:
        ncc: ``local`` (windowed) or ``global``.
        ncc_window: window size (voxels) of the local NCC.
        smoothness_weight: ``delta``.
        masked: compare label-masked volumes (semi-supervised, the paper).
        label_dice_weight: weight of ``1 - Dice`` of the warped atlas label against the patient's
            (VoxelMorph's auxiliary segmentation term; 0, the paper's loss, leaves it out).
    """

    ncc: str = choice("local", ("local", "global"))
    ncc_window: int = bounded(9, 1, 64)
    smoothness_weight: float = non_negative(0.01)
    masked: bool = True
    label_dice_weight: float = non_negative(0.0)


@dataclass(frozen=True)
class TrainingConfig:
    """Optimiser, schedule and run settings."""

    learning_rate: float = positive(1e-4)
    batch_size: int = bounded(1, 1, 1024)
    epochs: int = bounded(50, 1, MAX_ITERATIONS)
    seed: int = 0
    checkpoint_minutes: float = non_negative(10.0)
    bf16: bool = False
    activation_checkpointing: bool = False
    num_workers: int = bounded(0, 0, MAX_WORKERS)


@dataclass(frozen=True)
class ExperimentConfig(DictConfig):
    """Everything that defines a model and its training."""

    name: str = "lite"
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    affine: AffineConfig = field(default_factory=AffineConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def check_across_fields(self) -> None:
        """The image shape divisible by ``2^levels`` of both modules, more decoder than encoder steps,
        and the network's memory (:func:`check_memory`)."""
        rows, cols = self.geometry.image_shape
        for section, levels in (("affine", self.affine.levels), ("local", len(self.local.encoder_features))):
            if rows % 2**levels or cols % 2**levels:
                raise InputError(
                    f"config: geometry.image_shape {rows}x{cols} is not divisible by 2^{levels} ({section} levels)"
                )
        if len(self.local.decoder_features) <= len(self.local.encoder_features):
            raise InputError("config: local.decoder_features: needs more entries than local.encoder_features")
        check_memory(network_bytes(self), "the network")


def network_bytes(config: ExperimentConfig) -> int:
    """Estimated bytes of the dominant float32 tensors of one case through the network of ``config``.

    The full-size beam-space decoder maps (``ray_copies * 2^levels`` deep, per view), ProST's samples
    (``num_samples`` per pixel and view, :data:`SAMPLE_VALUES` each) and the volumes on the atlas grid
    (:data:`VOLUME_CHANNELS` plus the back-projected features of both views). A lower bound of what
    training needs (activations kept for backward, batches), an upper one of the weights.
    """
    pixels = math.prod(config.geometry.image_shape)
    local = config.local
    widest = max(local.encoder_features + local.decoder_features)
    beam = VIEWS * local.ray_copies * 2 ** len(local.encoder_features) * pixels * widest
    rays = VIEWS * config.geometry.num_samples * pixels * SAMPLE_VALUES
    volume = math.prod(GRID_SHAPES[config.geometry.grid_preset]) * (VOLUME_CHANNELS + VIEWS * widest)
    return FLOAT_BYTES * (beam + rays + volume)


def memory_limit_bytes() -> float:
    """The most bytes a config's network may need: :data:`MAX_MEMORY_ENV` GiB, else :data:`DEFAULT_MAX_MEMORY_GB`.

    Raises:
        InputError: the environment variable is not a positive number.
    """
    text = os.environ.get(MAX_MEMORY_ENV, str(DEFAULT_MAX_MEMORY_GB))
    try:
        gib = float(text)
    except ValueError:
        gib = math.nan
    if not 0.0 < gib < math.inf:
        raise InputError(f"{MAX_MEMORY_ENV}: expected a positive number of GiB, got {text!r}")
    return gib * 2**30


def check_memory(needed_bytes: int, what: str) -> None:
    """Refuse a config whose ``what`` needs more than :func:`memory_limit_bytes`.

    Raises:
        InputError: ``config: the network needs about 1234.5 GiB, above the 16 GiB limit (...)``.
    """
    limit = memory_limit_bytes()
    if needed_bytes > limit:
        raise InputError(
            f"config: {what} needs about {needed_bytes / 2**30:.1f} GiB, above the {limit / 2**30:g} GiB limit "
            f"(raise it with biplanar --max-memory GiB or {MAX_MEMORY_ENV})"
        )


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
        InputError: ``document`` is not a mapping, a field is unknown or of the wrong type (the message
            names the field as ``where.section.name``), or ``cls`` refuses the values (its messages'
            ``config:`` replaced by ``where:``).
    """
    if not isinstance(document, dict):
        raise InputError(f"{where}: expected a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    document = _renamed(document, set(fields), where)
    unknown = set(document) - set(fields)
    if unknown:
        raise InputError(f"{where}: unknown field(s) {sorted(unknown)}")
    values = {name: _coerce(_default(fields[name]), value, f"{where}.{name}") for name, value in document.items()}
    try:
        return cls(**values)
    except InputError as error:  # a __post_init__ check: name the file, not "config"
        raise InputError(f"{where}: {str(error).removeprefix('config: ')}") from None


def _default(config_field: dataclasses.Field[Any]) -> Any:
    """The default of a config dataclass field (without building, and so validating, the whole class)."""
    if config_field.default_factory is not dataclasses.MISSING:
        return config_field.default_factory()
    return config_field.default


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
    """``value`` checked against the type of the field's ``default`` (a list: each entry against the first
    entry of ``default``); integers where ``default`` is one, finite numbers where it is a float."""
    if dataclasses.is_dataclass(default):
        return build_dataclass(type(default), value, where)
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where}: expected a list, got {shown(value)}")
        if not default:  # no entry to check against
            return tuple(value)
        return tuple(_coerce(default[0], entry, f"{where}[{i}]") for i, entry in enumerate(value))
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise InputError(f"{where}: expected true or false, got {shown(value)}")
        return value
    if isinstance(default, (int, float)):
        return _number(isinstance(default, float), value, where)
    if not isinstance(value, str):
        raise InputError(f"{where}: expected a string, got {shown(value)}")
    return value


def _number(is_float: bool, value: Any, where: str) -> int | float:
    """``value`` as a finite float (``is_float``) or an integer (a whole float is one)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise InputError(f"{where}: expected a number, got {shown(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{where}: expected a finite number, got {shown(value)}")
    if is_float:
        if abs(value) > 1e300:  # float() of a larger integer overflows or is infinite
            raise InputError(f"{where}: expected a finite number, got {shown(value)}")
        return float(value)
    if isinstance(value, float) and not value.is_integer():
        raise InputError(f"{where}: expected an integer, got {shown(value)}")
    return int(value)


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
        raise InputError(f"{path}: not valid YAML ({one_line(str(error))})") from None
    return build_dataclass(cls, document, str(path))


def load_config(path_or_preset: str | Path) -> ExperimentConfig:
    """Read a YAML config file, or a shipped preset by name (``paper``, ``lite``, ``tiny``).

    Raises:
        InputError: a missing file, invalid YAML, or a field that is unknown or of the wrong type.
    """
    return load_yaml_dataclass(path_or_preset, ExperimentConfig, PRESETS)
