"""HU to attenuation and the DRR modes against their closed forms."""

import numpy as np
import pytest
import torch

from biplanar.geometry import VolumeGrid, biplanar_pair
from biplanar.physics import beer_lambert_intensity, hu_to_mu, poisson_line_integral, render_drr
from biplanar.physics.attenuation import BONE_THRESHOLD_HU, with_bone_contrast


def test_hu_to_mu_closed_form():
    hu = torch.tensor([-1000.0, -1200.0, 0.0, 1000.0, 1500.0])
    torch.testing.assert_close(hu_to_mu(hu), torch.tensor([0.0, 0.0, 0.02, 0.04, 0.05]))
    torch.testing.assert_close(hu_to_mu(hu, 0.03), 1.5 * hu_to_mu(hu))


def test_with_bone_contrast_multiplies_the_attenuation_above_the_threshold_only():
    hu = torch.tensor([-1000.0, 0.0, BONE_THRESHOLD_HU, 400.0, 1000.0])
    torch.testing.assert_close(with_bone_contrast(hu, 1.0), hu)
    torch.testing.assert_close(with_bone_contrast(hu, 2.5), torch.tensor([-1000.0, 0.0, 350.0, 2500.0, 4000.0]))
    torch.testing.assert_close(hu_to_mu(with_bone_contrast(hu, 2.5)), hu_to_mu(hu) * torch.tensor([1, 1, 1, 2.5, 2.5]))


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


def test_polychromatic_monoenergetic_is_beer_lambert():
    """With a single energy, the effective line integral is (mu/rho)(E) x mass line integral exactly."""
    from biplanar.physics.polychromatic import TubeSpectrum, effective_line_integral, mass_attenuation

    mass = torch.tensor([[[[1.0, 3.0]], [[0.5, 0.0]]]], dtype=torch.float64)  # (1, 2, 1, 2) g/cm^2
    soft, bone = (float(mass_attenuation(name, [60.0])[0]) for name in ("soft_tissue", "cortical_bone"))
    expected = torch.tensor([[[[soft * 1.0 + bone * 0.5, soft * 3.0]]]], dtype=torch.float64)
    torch.testing.assert_close(effective_line_integral(mass, TubeSpectrum.monoenergetic(60.0)), expected)


def test_polychromatic_beam_hardening_and_reference_values():
    """Soft tissue at 60 keV is near water (0.2059 cm^2/g); bone attenuates more; an 80 kVp beam hardens."""
    from biplanar.physics.polychromatic import effective_line_integral, mass_attenuation, tube_spectrum

    assert abs(float(mass_attenuation("soft_tissue", [60.0])[0]) - 0.2059) < 0.01
    assert float(mass_attenuation("cortical_bone", [60.0])[0]) > 1.3 * 0.2059
    thickness = torch.tensor([1.0, 5.0, 20.0], dtype=torch.float64)  # g/cm^2 of soft tissue
    mass = torch.stack([thickness, torch.zeros(3, dtype=torch.float64)]).view(1, 2, 1, 3)
    effective_mu = effective_line_integral(mass, tube_spectrum(80.0, 2.5))[0, 0, 0] / thickness
    assert torch.all(effective_mu[1:] < effective_mu[:-1])  # harder beam, lower effective attenuation


def test_material_split():
    from biplanar.physics.polychromatic import material_densities

    hu = torch.tensor([-1000.0, 0.0, 40.0, 1900.0]).view(1, 1, 4, 1, 1)
    densities = material_densities(hu)[0, :, :, 0, 0]
    torch.testing.assert_close(densities[1], torch.tensor([0.0, 0.0, 0.0, 1.92]))
    torch.testing.assert_close(densities[0], torch.tensor([0.0, 1.06 / 1.04, 1.06, 0.0]))
