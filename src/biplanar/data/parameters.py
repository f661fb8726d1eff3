"""Ranged, seeded parameter sets: each field of a frozen dataclass carries its population range.

A field knows its population mean, standard deviation and hard bounds, either from a range table
or from its own :func:`ranged` declaration. A range table is a CSV file of the package,
``biplanar/resources/parameters/<table>.csv`` (header :data:`TABLE_COLUMNS`, a row a field in
declaration order): ``class P(RangedParameters, table="<table>")`` declares its fields by name and
type only and becomes a frozen dataclass whose fields take their ranges (and their means as
defaults) from the table, so each range is stated once. :meth:`RangedParameters.sample` draws
every field from a normal distribution truncated to the bounds (by rejection, so the draws depend
only on the generator), and :meth:`RangedParameters.mean` gives the mean subject.
``docs/data.md`` lists every range with its anatomical source.
"""

from __future__ import annotations

import csv
import dataclasses
import inspect
import sys
from dataclasses import dataclass
from importlib import resources
from typing import Any, ClassVar, TypeVar

import numpy as np

if sys.version_info >= (3, 11):
    from typing import dataclass_transform
else:
    from typing_extensions import dataclass_transform

_RANGE_KEY = "population_range"
TABLE_COLUMNS = ("name", "mean", "sd", "low", "high")  # a range table's header, in this order
Ranged = TypeVar("Ranged", bound="RangedParameters")


@dataclass(frozen=True)
class ParameterRange:
    """Population distribution of one parameter: normal ``(mean, sd)`` truncated to ``[low, high]``."""

    mean: float
    sd: float
    low: float
    high: float

    def __post_init__(self) -> None:
        if not self.low <= self.mean <= self.high or self.sd < 0:
            raise ValueError(f"ParameterRange: need low <= mean <= high and sd >= 0, got {self}")

    def sample(self, rng: np.random.Generator) -> float:
        """One draw from the truncated normal (rejection sampling)."""
        if self.sd == 0:
            return self.mean
        while True:
            value = rng.normal(self.mean, self.sd)
            if self.low <= value <= self.high:
                return float(value)


def ranged(mean: float, sd: float, low: float, high: float) -> Any:
    """A dataclass field whose default is ``mean`` and that carries its :class:`ParameterRange`."""
    return _ranged_field(ParameterRange(mean, sd, low, high))


def _ranged_field(spec: ParameterRange) -> Any:
    return dataclasses.field(default=spec.mean, metadata={_RANGE_KEY: spec})


def read_range_table(table: str) -> dict[str, ParameterRange]:
    """The ranges of the package's table ``biplanar/resources/parameters/<table>.csv``.

    Returns:
        field name -> its range, in the table's row order; ``ValueError`` on a header other than
        :data:`TABLE_COLUMNS`, a repeated name or an inconsistent range.
    """
    source = resources.files("biplanar") / "resources" / "parameters" / f"{table}.csv"
    rows = list(csv.reader(source.read_text(encoding="utf-8").splitlines()))
    if not rows or tuple(rows[0]) != TABLE_COLUMNS:
        raise ValueError(f"{table}.csv: expected the header {','.join(TABLE_COLUMNS)}")
    ranges = {name: ParameterRange(*map(float, numbers)) for name, *numbers in rows[1:]}
    if len(ranges) != len(rows) - 1:
        raise ValueError(f"{table}.csv: a parameter is listed twice")
    return ranges


@dataclass_transform(frozen_default=True)
class RangedParameters:
    """Base of frozen dataclasses whose fields are all ranged.

    Either a subclass names a range table (``class P(RangedParameters, table="femur")``,
    :func:`read_range_table`), declares its fields as ``name: float`` in the table's order and is
    not decorated (it becomes a frozen dataclass here; each field defaults to its table mean, a
    default the type checker does not see: use :meth:`mean`); or it is a ``@dataclass(frozen=True)``
    whose fields are all declared with :func:`ranged`.
    """

    # Declared for the type checker only (subclasses are dataclasses): makes them DataclassInstances.
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def __init_subclass__(cls, table: str | None = None, **kwargs: Any) -> None:
        """Make a subclass that names ``table`` a frozen dataclass with the table's ranges;
        ``TypeError`` unless the table lists exactly the declared fields, in order."""
        super().__init_subclass__(**kwargs)
        if table is None:
            return
        ranges = read_range_table(table)
        declared = list(inspect.get_annotations(cls))
        if declared != list(ranges):
            raise TypeError(f"{cls.__name__}: fields {declared} differ from the rows of {table}.csv: {list(ranges)}")
        for name, spec in ranges.items():
            setattr(cls, name, _ranged_field(spec))
        dataclass(frozen=True)(cls)

    @classmethod
    def ranges(cls) -> dict[str, ParameterRange]:
        """Field name -> its population range, in declaration order."""
        return {f.name: f.metadata[_RANGE_KEY] for f in dataclasses.fields(cls)}

    @classmethod
    def mean(cls: type[Ranged]) -> Ranged:
        """The mean subject: every field at its population mean."""
        return cls(**{name: spec.mean for name, spec in cls.ranges().items()})

    @classmethod
    def sample(cls: type[Ranged], rng: np.random.Generator) -> Ranged:
        """Independent truncated-normal draws of every field, in declaration order."""
        return cls(**{name: spec.sample(rng) for name, spec in cls.ranges().items()})

    def to_dict(self) -> dict[str, float]:
        """Field name -> value (plain floats, JSON-ready)."""
        return {f.name: float(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def check(self) -> None:
        """Raise ``ValueError`` naming every field outside its ``[low, high]`` range."""
        bad = [
            f"{name}={getattr(self, name)} (expected {spec.low}..{spec.high})"
            for name, spec in self.ranges().items()
            if not spec.low <= getattr(self, name) <= spec.high
        ]
        if bad:
            raise ValueError(f"{type(self).__name__}: out of range: {', '.join(bad)}")
