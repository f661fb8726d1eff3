"""Hounsfield units to linear attenuation (``docs/contract.md`` section 3)."""

from __future__ import annotations

from torch import Tensor

MU_WATER_PER_MM = 0.02  # linear attenuation of water, 1/mm (about 70 keV)


def hu_to_mu(hu: Tensor, mu_water_per_mm: float = MU_WATER_PER_MM) -> Tensor:
    """Linear attenuation ``mu = mu_water * max(0, 1 + HU / 1000)``.

    Args:
        hu: any shape, Hounsfield units.
        mu_water_per_mm: attenuation of water, 1/mm.

    Returns:
        same shape, 1/mm.
    """
    return mu_water_per_mm * (1.0 + hu / 1000.0).clamp(min=0.0)
