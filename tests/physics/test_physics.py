"""HU to attenuation and the DRR modes against their closed forms."""

import numpy as np
import pytest
import torch

from biplanar.geometry import VolumeGrid, biplanar_pair
from biplanar.physics import beer_lambert_intensity, hu_to_mu, poisson_line_integral, render_drr


def test_hu_to_mu_closed_form():
    hu = torch.tensor([-1000.0, -1200.0, 0.0, 1000.0, 1500.0])
    torch.testing.assert_close(hu_to_mu(hu), torch.tensor([0.0, 0.0, 0.02, 0.04, 0.05]))
    torch.testing.assert_close(hu_to_mu(hu, 0.03), 1.5 * hu_to_mu(hu))


def test_beer_lambert():
    line_integral = torch.tensor([0.0, 1.0, 2.5])
    torch.testing.assert_close(beer_lambert_intensity(line_integral, 10.0), 10.0 * torch.exp(-line_integral))


def test_poisson_noise_statistics():
    """Mean of the log-transformed counts is L; its variance is exp(L) / N0 (delta method)."""
    line_integral = torch.full((200_000,), 1.5, dtype=torch.float64)
    photons = 5e4
    noisy = poisson_line_integral(line_integral, photons, torch.Generator().manual_seed(0))
    assert abs(float(noisy.mean()) - 1.5) < 1e-3
    expected_variance = np.exp(1.5) / photons
    assert abs(float(noisy.var()) / expected_variance - 1.0) < 0.02
    again = poisson_line_integral(line_integral, photons, torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)
    with pytest.raises(ValueError, match="photons"):
        poisson_line_integral(line_integral, 0.0)


def test_render_drr_rejects_unknown_modes():
    grid = VolumeGrid.from_spacing((4, 4, 4), (2.0, 2.0, 2.0))
    with pytest.raises(ValueError, match="mode"):
        render_drr(torch.zeros(1, 1, 4, 4, 4), biplanar_pair()["AP"], grid, mode="polychromatic?")
