"""Polychromatic two-material radiographs: a tube spectrum, soft tissue and bone, beam hardening.

Each voxel's HU is split into partial densities of two materials (g/cm^3):

- HU <= ``SOFT_HU``: soft tissue at density ``SOFT_DENSITY * max(0, 1 + HU/1000) / (1 + SOFT_HU/1000)``;
- ``SOFT_HU`` < HU: a mixture with bone volume fraction ``f = clip((HU - SOFT_HU) / (BONE_HU - SOFT_HU), 0, 1)``:
  soft tissue ``(1 - f) * SOFT_DENSITY`` and cortical bone ``f * BONE_DENSITY``.

ProST integrates both channels into mass line integrals ``A_m`` (g/cm^2). An energy-integrating
detector sees ``D = sum_E S(E) E exp(-sum_m (mu/rho)_m(E) A_m)``; the image is the effective line
integral ``-log(D / D0)``, comparable to the monochromatic DRR but with beam hardening.
Spectra come from SpekPy, mass attenuation coefficients from xraydb (Elam tables), both loaded lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from biplanar.config import DEFAULT_NUM_SAMPLES
from biplanar.geometry.projection import ProjectionView
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.layers.prost import ProST

SOFT_HU, BONE_HU = 40.0, 1900.0
SOFT_DENSITY, BONE_DENSITY = 1.06, 1.92  # g/cm^3, ICRU-44 soft tissue and ICRU-46 cortical bone
MM_PER_CM = 10.0
# Elemental mass fractions (ICRU Report 44/46).
MATERIALS = {
    "soft_tissue": {
        "H": 0.102,
        "C": 0.143,
        "N": 0.034,
        "O": 0.708,
        "Na": 0.002,
        "P": 0.003,
        "S": 0.003,
        "Cl": 0.002,
        "K": 0.003,
    },
    "cortical_bone": {
        "H": 0.034,
        "C": 0.155,
        "N": 0.042,
        "O": 0.435,
        "Na": 0.001,
        "Mg": 0.002,
        "P": 0.103,
        "S": 0.003,
        "Ca": 0.225,
    },
}


@dataclass(frozen=True)
class TubeSpectrum:
    """A photon fluence spectrum.

    Attributes:
        energies_kev: ``(E,)`` bin centres, keV.
        fluence: ``(E,)`` relative photon fluence per bin (any scale).
    """

    energies_kev: np.ndarray
    fluence: np.ndarray

    @classmethod
    def monoenergetic(cls, energy_kev: float) -> TubeSpectrum:
        return cls(np.array([float(energy_kev)]), np.array([1.0]))


@lru_cache(maxsize=8)
def tube_spectrum(kvp: float = 80.0, aluminium_mm: float = 2.5, anode_angle_deg: float = 12.0) -> TubeSpectrum:
    """A tungsten-anode tube spectrum from SpekPy (1 keV bins, photons with no fluence dropped)."""
    import spekpy  # lazy: spekpy only for the polychromatic mode

    spek = spekpy.Spek(kvp=kvp, th=anode_angle_deg, dk=1.0)
    spek.filter("Al", aluminium_mm)
    energies, fluence = spek.get_spectrum()
    keep = fluence > fluence.max() * 1e-6
    return TubeSpectrum(np.asarray(energies[keep]), np.asarray(fluence[keep]))


def mass_attenuation(material: str, energies_kev: np.ndarray) -> np.ndarray:
    """``(E,)`` mass attenuation coefficient (cm^2/g) of a material of :data:`MATERIALS` (xraydb, Elam)."""
    import xraydb  # lazy: xraydb only for the polychromatic mode

    energies_ev = np.asarray(energies_kev, dtype=np.float64) * 1000.0
    return sum(
        (
            fraction * np.asarray(xraydb.mu_elam(element, energies_ev))
            for element, fraction in MATERIALS[material].items()
        ),
        np.zeros_like(energies_ev),
    )


def material_densities(hu: Tensor) -> Tensor:
    """Partial densities of soft tissue and bone.

    Args:
        hu: ``(B, 1, I, J, K)`` Hounsfield units.

    Returns:
        ``(B, 2, I, J, K)`` g/cm^3: channel 0 soft tissue, channel 1 cortical bone.
    """
    bone_fraction = ((hu - SOFT_HU) / (BONE_HU - SOFT_HU)).clamp(0.0, 1.0)
    soft_scale = (1.0 + hu.clamp(max=SOFT_HU) / 1000.0).clamp(min=0.0) / (1.0 + SOFT_HU / 1000.0)
    soft = SOFT_DENSITY * soft_scale * (1.0 - bone_fraction)
    return torch.cat([soft, BONE_DENSITY * bone_fraction], dim=1)


def effective_line_integral(mass_line_integrals: Tensor, spectrum: TubeSpectrum) -> Tensor:
    """``-log(D / D0)`` of an energy-integrating detector.

    Args:
        mass_line_integrals: ``(B, 2, rows, cols)`` g/cm^2 of soft tissue and bone.
        spectrum: the incident spectrum.

    Returns:
        ``(B, 1, rows, cols)``, dimensionless.
    """
    dtype, device = mass_line_integrals.dtype, mass_line_integrals.device
    coefficients = torch.as_tensor(
        np.stack([mass_attenuation(name, spectrum.energies_kev) for name in MATERIALS], axis=1),
        dtype=dtype,
        device=device,
    )  # (E, 2) cm^2/g
    weights = torch.as_tensor(spectrum.fluence * spectrum.energies_kev, dtype=dtype, device=device)
    weights = weights / weights.sum()  # energy-weighted detector response, (E,)
    exponent = torch.einsum("em,bmrc->berc", coefficients, mass_line_integrals)
    detected = torch.einsum("e,berc->brc", weights, torch.exp(-exponent))
    return -torch.log(detected.clamp(min=1e-30)).unsqueeze(1)


def render_polychromatic_drr(
    hu: Tensor, view: ProjectionView, grid: VolumeGrid, spectrum: TubeSpectrum, num_samples: int = DEFAULT_NUM_SAMPLES
) -> Tensor:
    """A polychromatic two-material DRR.

    Args:
        hu: ``(B, 1, I, J, K)`` Hounsfield units on ``grid``.
        view: the calibrated view.
        grid: the volume's grid.
        spectrum: the tube spectrum, e.g. :func:`tube_spectrum`.
        num_samples: ProST samples per ray.

    Returns:
        ``(B, 1, rows, cols)`` effective line integrals (dimensionless).
    """
    densities = material_densities(hu)
    mass_line_integrals = ProST(view, grid, num_samples).to(hu.device)(densities) / MM_PER_CM
    return effective_line_integral(mass_line_integrals, spectrum)
