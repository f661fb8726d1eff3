"""Field constraints declared with the fields (:func:`biplanar.config.bounded` and the others) and the one
walker that checks them (:func:`biplanar.config.check_fields`): the configs and the optimisation settings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from biplanar.config import (
    CONSTRAINTS,
    ExperimentConfig,
    bounded,
    check_fields,
    choice,
    entries,
    fraction,
    non_negative,
    positive,
)
from biplanar.errors import InputError
from biplanar.models.sopi.config import SopiConfig
from biplanar.optimisation.intensity_registration import RefineSettings
from biplanar.optimisation.volume_registration import VolumeRegistrationSettings


@dataclass(frozen=True)
class Section:
    """One of each constraint."""

    mode: str = choice("a", ("a", "b"))
    size: int = bounded(4, 1, 64)
    count: int = bounded(0, 0)
    shape: tuple[int, int] = bounded((8, 8), 2, 512, lengths=(2, 2))
    sigmas: tuple[float, float, float] = entries((1.0, 2.0, 3.0), 3)
    rate: float = positive(0.1)
    weight: float = non_negative(0.0)
    decrease: float = fraction(0.5)
    free: float = -1.0


@dataclass(frozen=True)
class Whole:
    """A config of one section."""

    section: Section = field(default_factory=Section)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"mode": "c"}, "section.mode: expected one of a, b, got 'c'"),
        ({"size": 65}, "section.size: expected an integer in 1..64, got 65"),
        ({"count": -1}, "section.count: expected an integer >= 0, got -1"),
        ({"shape": (8, 8, 8)}, "section.shape: expected 2 values, got [8, 8, 8]"),
        ({"shape": (8, 1)}, "section.shape: expected integers in 2..512, got [8, 1]"),
        ({"sigmas": (1.0,)}, "section.sigmas: expected 3 values, got [1.0]"),
        ({"rate": 0.0}, "section.rate: expected a number > 0, got 0.0"),
        ({"rate": float("inf")}, "section.rate: expected a number > 0, got inf"),
        ({"weight": -0.5}, "section.weight: expected a number >= 0, got -0.5"),
        ({"weight": float("nan")}, "section.weight: expected a number >= 0, got nan"),
        ({"decrease": 1.0}, "section.decrease: expected a number in (0, 1), got 1.0"),
    ],
)
def test_each_constraint_names_the_field_in_one_line(change, message):
    whole = Whole(dataclasses.replace(Section(), **change))
    with pytest.raises(InputError) as refused:
        check_fields(whole, "config: ")
    assert str(refused.value) == f"config: {message}"


def test_the_defaults_pass_and_unconstrained_fields_are_free():
    check_fields(Whole())
    assert not dataclasses.fields(Section)[-1].metadata.get(CONSTRAINTS)
    assert Section().shape == (8, 8) and Section().decrease == 0.5  # the helpers keep the defaults


@pytest.mark.parametrize("config_class", [ExperimentConfig, SopiConfig])
def test_configs_are_checked_when_built_and_round_trip(config_class):
    config = config_class()
    assert config_class.from_dict(config.to_dict()) == config
    with pytest.raises(InputError, match=r"^config: training\.batch_size: expected an integer in 1\.\.1024, got 0$"):
        dataclasses.replace(config, training=dataclasses.replace(config.training, batch_size=0))


def test_a_sopi_search_step_decrease_is_a_fraction():
    with pytest.raises(InputError, match=r"^x\.yaml: search\.step_decrease: expected a number in \(0, 1\), got 1\.5$"):
        SopiConfig.from_dict({"search": {"step_decrease": 1.5}}, "x.yaml")


def test_the_optimisation_settings_use_the_same_constraints():
    with pytest.raises(InputError, match=r"^iterations: expected an integer >= 0, got -1$"):
        RefineSettings(iterations=-1)
    with pytest.raises(InputError, match=r"^affine_iterations: expected 0 to iterations \(2\), got 3$"):
        RefineSettings(iterations=2, affine_iterations=3)
    with pytest.raises(InputError, match=r"^lr_velocity_mm: expected a number >= 0, got nan$"):
        RefineSettings(lr_velocity_mm=float("nan"))
    assert RefineSettings(lr_velocity_mm=0.0).lr_velocity_mm == 0.0  # a rate of 0 freezes that part
    with pytest.raises(InputError, match=r"^ncc_window: expected an odd number, got 4$"):
        VolumeRegistrationSettings(ncc_window=4)
    with pytest.raises(InputError, match=r"^ncc_window: expected an integer >= 1, got -1$"):
        VolumeRegistrationSettings(ncc_window=-1)
    with pytest.raises(InputError, match=r"^label_weight: expected a number >= 0, got -1\.0$"):
        VolumeRegistrationSettings(label_weight=-1.0)
    with pytest.raises(InputError, match=r"^levels: expected \(factor >= 1, steps >= 0\) pairs, got \[\(4, -1\)\]$"):
        VolumeRegistrationSettings(levels=((4, -1),))
