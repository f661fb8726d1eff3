"""Digitally reconstructed radiographs of a CT: attenuation, projection and a DRR mode."""

from __future__ import annotations

import torch
from torch import Tensor

from biplanar.geometry.projection import ProjectionView
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.layers.prost import ProST
from biplanar.physics.drr_modes import DRR_MODES, beer_lambert_intensity, poisson_line_integral


def render_drr(
    mu_per_mm: Tensor,
    view: ProjectionView,
    grid: VolumeGrid,
    mode: str = "line_integral",
    num_samples: int = 256,
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
