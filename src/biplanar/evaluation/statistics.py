"""Summary statistics of per-case scores, shared by the evaluation, pose and experiment reports."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (``nan`` below two values) and count of the finite values."""

    mean: float
    sd: float
    n: int


def summarise(values: Iterable[float]) -> Summary:
    """:class:`Summary` of the finite ``values``."""
    finite = np.array([value for value in values if math.isfinite(value)], dtype=np.float64)
    mean = float(finite.mean()) if len(finite) else math.nan
    sd = float(finite.std(ddof=1)) if len(finite) > 1 else math.nan
    return Summary(mean, sd, len(finite))
