"""Digitally reconstructed radiographs of a CT: attenuation, projection and a DRR mode."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from biplanar.config import DEFAULT_NUM_SAMPLES
from biplanar.geometry.projection import ProjectionView
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.layers.prost import ProST
from biplanar.physics.attenuation import MU_WATER_PER_MM, hu_to_mu
from biplanar.physics.clinical_appearance import ClinicalAppearance, clinical_radiograph
from biplanar.physics.drr_modes import DRR_MODES, beer_lambert_intensity, poisson_line_integral
from biplanar.physics.polychromatic import render_polychromatic_drr, tube_spectrum


def render_drr(
    mu_per_mm: Tensor,
    view: ProjectionView,
    grid: VolumeGrid,
    mode: str = "line_integral",
    num_samples: int = DEFAULT_NUM_SAMPLES,
    photons: float = 1e5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Render a DRR of an attenuation volume.

    Args:
        mu_per_mm: ``(B, 1, I, J, K)`` linear attenuation, 1/mm, on ``grid``.
        view: the calibrated view.
        grid: the volume's voxel grid.
        mode: one of :data:`DRR_MODES`: ``line_integral`` (dimensionless), ``beer_lambert``
            (intensity ``exp(-L)``, ``I0 = 1``) or ``poisson`` (noisy line integral at ``photons``).
        num_samples: samples per ray.
        photons: incident photons per pixel for ``poisson``.
        generator: random generator for ``poisson``.

    Returns:
        ``(B, 1, rows, cols)``.
    """
    if mode not in DRR_MODES:
        raise ValueError(f"mode: expected one of {', '.join(DRR_MODES)}, got {mode!r}")
    line_integral = ProST(view, grid, num_samples).to(mu_per_mm.device)(mu_per_mm)
    if mode == "beer_lambert":
        return beer_lambert_intensity(line_integral)
    if mode == "poisson":
        return poisson_line_integral(line_integral, photons, generator)
    return line_integral


RADIOGRAPH_MODES = (*DRR_MODES, "polychromatic", "clinical")


@dataclass(frozen=True)
class RadiographSettings:
    """How a radiograph of a CT is rendered: the settings :func:`render_ct_radiograph` takes, as
    ``biplanar drr`` (:func:`biplanar.api.drr`) and the simulated datasets
    (:attr:`biplanar.data.simulate.SimulationConfig.radiograph`) give them.

    Attributes:
        mode: one of :data:`RADIOGRAPH_MODES`: ``line_integral``, ``beer_lambert``, ``poisson`` (of
            ``mu = hu_to_mu(hu)``), ``polychromatic`` (two materials, a ``kvp`` tube with
            ``aluminium_mm`` filtration; see :mod:`biplanar.physics.polychromatic`) or ``clinical``
            (the polychromatic DRR at the appearance's tube, then scatter, noise, blur and a clinic's
            processing, displayed values 0 to 4095; see :mod:`biplanar.physics.clinical_appearance`).
        num_samples: samples per ray.
        photons: incident photons per pixel (``poisson``).
        kvp: tube voltage, kV (``polychromatic``).
        aluminium_mm: tube filtration, mm of aluminium (``polychromatic``).
        mu_water_per_mm: attenuation of water for the monochromatic modes, 1/mm.
    """

    mode: str = "line_integral"
    num_samples: int = DEFAULT_NUM_SAMPLES
    photons: float = 1e5
    kvp: float = 80.0
    aluminium_mm: float = 2.5
    mu_water_per_mm: float = MU_WATER_PER_MM


def render_ct_radiograph(
    hu: Tensor,
    view: ProjectionView,
    grid: VolumeGrid,
    settings: RadiographSettings = RadiographSettings(),
    generator: torch.Generator | None = None,
    appearance: ClinicalAppearance | None = None,
) -> Tensor:
    """A radiograph of a CT in HU in any of :data:`RADIOGRAPH_MODES`.

    Args:
        hu: ``(B, 1, I, J, K)`` Hounsfield units on ``grid``.
        view, grid: see :func:`render_drr`.
        settings: the mode and its settings (:class:`RadiographSettings`); in the ``clinical``
            mode ``view`` must carry its C-arm pose, whose pixel spacing sets the kernels' widths.
        generator: random generator of the ``poisson`` and ``clinical`` noise.
        appearance: the ``clinical`` mode's parameters (default: :class:`ClinicalAppearance`'s defaults).

    Returns:
        ``(B, 1, rows, cols)``.
    """
    mode, num_samples = settings.mode, settings.num_samples
    if mode == "clinical":
        if view.carm is None:
            raise ValueError(f"view {view.name or '?'}: the clinical mode needs the C-arm pose (its pixel spacing)")
        appearance = appearance or ClinicalAppearance()
        spectrum = tube_spectrum(appearance.kvp, appearance.aluminium_mm)
        line_integral = render_polychromatic_drr(hu, view, grid, spectrum, num_samples)
        return clinical_radiograph(line_integral, view.carm.pixel_spacing_mm, appearance, generator)
    if mode == "polychromatic":
        spectrum = tube_spectrum(settings.kvp, settings.aluminium_mm)
        return render_polychromatic_drr(hu, view, grid, spectrum, num_samples)
    mu_per_mm = hu_to_mu(hu, settings.mu_water_per_mm)
    return render_drr(mu_per_mm, view, grid, mode, num_samples, settings.photons, generator)
