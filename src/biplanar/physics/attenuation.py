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
    """CT numbers under which every voxel above :data:`BONE_THRESHOLD_HU` attenuates ``factor``
    times as much through :func:`hu_to_mu`: ``1000 (factor (1 + HU / 1000) - 1)`` there, ``HU``
    elsewhere. This is DiffDRR's ``bone_attenuation_multiplier`` (its ``transform_hu_to_density``
    multiplies the density of voxels above 350 HU), the way another renderer may weigh bone.

    Args:
        hu: any shape, Hounsfield units.
        factor: ``>= 1``, how many times as much bone attenuates.

    Returns:
        same shape, Hounsfield units.
    """
    bone = hu > BONE_THRESHOLD_HU
    return hu.where(~bone, 1000.0 * (factor * (1.0 + hu / 1000.0) - 1.0))
