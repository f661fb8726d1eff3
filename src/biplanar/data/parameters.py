"""Ranged, seeded parameter sets: each field of a frozen dataclass carries its population range.

A field declared with :func:`ranged` knows its population mean, standard deviation and hard
bounds; :meth:`RangedParameters.sample` draws every field from a normal distribution truncated
to the bounds (by rejection, so the draws depend only on the generator), and
:meth:`RangedParameters.mean` gives the mean subject. ``docs/data.md`` lists every range with
its anatomical source.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

_RANGE_KEY = "population_range"
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
    return dataclasses.field(default=mean, metadata={_RANGE_KEY: ParameterRange(mean, sd, low, high)})


class RangedParameters:
    """Mixin for frozen dataclasses whose fields are all declared with :func:`ranged`."""

    # Declared for the type checker only (subclasses are dataclasses): makes them DataclassInstances.
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

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
