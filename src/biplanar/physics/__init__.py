"""X-ray physics: HU to attenuation, DRR modes (line integral, Beer-Lambert, noise)."""

from biplanar.physics.attenuation import MU_WATER_PER_MM, hu_to_mu
from biplanar.physics.drr import render_drr
from biplanar.physics.drr_modes import DRR_MODES, beer_lambert_intensity, poisson_line_integral

__all__ = [
    "DRR_MODES",
    "MU_WATER_PER_MM",
    "beer_lambert_intensity",
    "hu_to_mu",
    "poisson_line_integral",
    "render_drr",
]
