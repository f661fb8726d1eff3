"""From line integrals to radiograph values: the named DRR modes.

- ``line_integral``: the value of ``ProST`` itself, ``L = integral of mu ds`` (dimensionless).
- ``beer_lambert``: transmitted intensity ``I = I0 exp(-L)``.
- ``poisson``: quantum noise at ``photons`` per pixel, returned as a noisy line integral
  ``-log(N / photons)`` with ``N ~ Poisson(photons exp(-L))`` (the log transform back).
"""

from __future__ import annotations

import torch
from torch import Tensor

DRR_MODES = ("line_integral", "beer_lambert", "poisson")


def beer_lambert_intensity(line_integral: Tensor, i0: float = 1.0) -> Tensor:
    """``I0 exp(-L)`` for line integrals ``L`` of any shape (dimensionless)."""
    return i0 * torch.exp(-line_integral)


def poisson_line_integral(line_integral: Tensor, photons: float, generator: torch.Generator | None = None) -> Tensor:
    """A noisy line integral: Poisson counts at ``photons`` incident photons per pixel, log-transformed.

    Args:
        line_integral: any shape, dimensionless.
        photons: expected incident photons per pixel (``I0``).
        generator: the random generator (for reproducible noise).
    """
    if photons <= 0:
        raise ValueError(f"photons: expected > 0, got {photons}")
    counts = torch.poisson(beer_lambert_intensity(line_integral, photons), generator=generator)
    return -torch.log(counts.clamp(min=0.5) / photons)
