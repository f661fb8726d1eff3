"""Range tables of the anatomical parameter sets (``biplanar/resources/parameters``)."""

from __future__ import annotations

import dataclasses
import typing

import numpy as np
import pytest

from biplanar.data.body_shape import BodyParameters
from biplanar.data.femur_shape import FemurParameters
from biplanar.data.parameters import ParameterRange, RangedParameters, read_range_table
from biplanar.data.pelvis_shape import PelvisParameters

TABLES = {"femur": FemurParameters, "pelvis": PelvisParameters, "body": BodyParameters}


@pytest.mark.parametrize("table", sorted(TABLES))
def test_each_table_row_is_a_float_field_of_its_class_in_order(table):
    cls = TABLES[table]
    ranges = read_range_table(table)
    assert list(ranges) == [f.name for f in dataclasses.fields(cls)]
    assert cls.ranges() == ranges
    hints = typing.get_type_hints(cls)
    assert {hints[name] for name in ranges} == {float}
    assert cls.mean().to_dict() == {name: spec.mean for name, spec in ranges.items()}
    assert all(getattr(cls, name) == spec.mean for name, spec in ranges.items())  # the defaults


def test_table_classes_are_frozen_dataclasses():
    params = FemurParameters.mean()
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.head_radius_mm = 30.0  # type: ignore[misc]
    assert hash(params) == hash(FemurParameters.mean())
    assert FemurParameters(**params.to_dict()) == params


def test_a_class_that_differs_from_its_table_is_refused():
    with pytest.raises(TypeError, match=r"pelvis\.csv"):

        class _Missing(RangedParameters, table="pelvis"):
            joint_space_mm: float

    with pytest.raises(TypeError, match=r"body\.csv"):

        class _Reordered(RangedParameters, table="body"):
            lateral_muscle_mm: float
            inter_acetabular_mm: float
            muscle_half_depth_mm: float
            centre_anterior_mm: float
            subcutaneous_fat_mm: float


def test_sampling_is_unchanged_for_a_fixed_seed():
    """The draws of seed 0 (datasets are reproducible from their seeds: these must not move)."""
    femur = FemurParameters.sample(np.random.default_rng(0))
    assert (femur.head_radius_mm, femur.cortex_shaft_mm) == (23.713741375858767, 5.746978321824479)
    pelvis = PelvisParameters.sample(np.random.default_rng(0))
    assert (pelvis.joint_space_mm, pelvis.pubic_ramus_radius_mm) == (4.075438132656036, 8.361595054909484)
    body = BodyParameters.sample(np.random.default_rng(0))
    assert (body.inter_acetabular_mm, body.subcutaneous_fat_mm) == (181.25730221093394, 14.250314387872223)


def test_a_range_needs_its_mean_inside():
    with pytest.raises(ValueError, match="low <= mean <= high"):
        ParameterRange(5.0, 1.0, 6.0, 8.0)
