"""Hounsfield units to linear attenuation (``docs/contract.md`` section 3)."""

from __future__ import annotations

from torch import Tensor

MU_WATER_PER_MM = 0.02  # linear attenuation of water, 1/mm (about 70 keV)
# Where a renderer's bone begins: DiffDRR's `transform_hu_to_density` scales the density above it.
BONE_THRESHOLD_HU = 350.0


def hu_to_mu(hu: Tensor, mu_water_per_mm: float = MU_WATER_PER_MM) -> Tensor:
    """Linear attenuation ``mu = mu_water * max(0, 1 + HU / 1000)``.

    Args:
        hu: any shape, Hounsfield units.
        mu_water_per_mm: attenuation of water, 1/mm.

    Returns:
        same shape, 1/mm.
    """
    return mu_water_per_mm * (1.0 + hu / 1000.0).clamp(min=0.0)


def with_bone_contrast(hu: Tensor, factor: float) -> Tensor:
    """CT numbers whose excess above :data:`BONE_THRESHOLD_HU` is ``factor`` times as large:
    ``HU + (factor - 1) max(0, HU - 350)``. Rendered through :func:`hu_to_mu`, bone attenuates that
    much more above the threshold, as in a renderer whose HU-to-attenuation curve is steeper for bone
    (DiffDRR's ``bone_attenuation_multiplier``, a lower tube voltage); the curve stays continuous.

    Args:
        hu: any shape, Hounsfield units.
        factor: ``>= 1``, the slope of the curve above the threshold relative to below it.

    Returns:
        same shape, Hounsfield units.
    """
    return hu + (factor - 1.0) * (hu - BONE_THRESHOLD_HU).clamp(min=0.0)
