"""The clinical appearance chain, step by step against closed forms, then whole: determinism and range."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from biplanar.geometry import VolumeGrid, biplanar_pair
from biplanar.geometry.projection import ProjectionView
from biplanar.physics.clinical_appearance import (
    APPEARANCE_RANGES,
    MAX_VALUE,
    SCATTER_COMPONENTS,
    ClinicalAppearance,
    clinical_radiograph,
    convolution_scatter,
    detector_blur,
    electronic_noise,
    gaussian_filter,
    gaussian_kernel_1d,
    gaussian_mtf_sigma_mm,
    log_transform,
    patient_scatter,
    percentile_window,
    quantise,
    quantum_noise,
    to_photometric,
    unsharp_mask,
)
from biplanar.physics.drr import RadiographSettings, render_ct_radiograph

DOUBLE = torch.float64


def _impulse(size: int = 121) -> torch.Tensor:
    """``(1, 1, size, size)`` float64: 1 at the centre pixel, 0 elsewhere."""
    image = torch.zeros(1, 1, size, size, dtype=DOUBLE)
    image[0, 0, size // 2, size // 2] = 1.0
    return image


def _phantom_line_integral(rows: int = 96, cols: int = 80) -> torch.Tensor:
    """``(1, 1, rows, cols)`` float64: soft tissue rising left to right (1.5 to 2.5) and a bone disc (+1)."""
    v, u = torch.meshgrid(torch.arange(rows, dtype=DOUBLE), torch.arange(cols, dtype=DOUBLE), indexing="ij")
    soft = 1.5 + u / cols
    disc = ((v - rows / 2) ** 2 + (u - cols / 2) ** 2 < (rows / 5) ** 2).to(DOUBLE)
    return (soft + disc)[None, None]


def test_gaussian_filter_keeps_constants_and_totals():
    kernel = gaussian_kernel_1d(2.5)
    assert kernel.numel() == 2 * math.ceil(4 * 2.5) + 1
    assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-12)
    constant = torch.full((2, 1, 30, 20), 3.7, dtype=DOUBLE)
    torch.testing.assert_close(gaussian_filter(constant, (12.0, 40.0)), constant)  # kernel wider than the image
    blurred = gaussian_filter(_impulse(), (3.0, 5.0))
    assert float(blurred.sum()) == pytest.approx(1.0, abs=1e-10)
    assert float(blurred.min()) > -1e-12
    torch.testing.assert_close(gaussian_filter(constant, (0.0, 0.0)), constant)
    with pytest.raises(ValueError, match="B, C, rows, cols"):
        gaussian_filter(torch.zeros(5, 5), (1.0, 1.0))


def test_scatter_kernel_integrates_to_the_spr():
    """A uniform primary gets S = SPR x P; an impulse's scatter totals SPR, with the kernel's mixture variance."""
    spacing = (2.0, 2.0)
    uniform = torch.full((1, 1, 40, 30), 0.2, dtype=DOUBLE)
    torch.testing.assert_close(convolution_scatter(uniform, 2.5, 30.0, spacing), 2.5 * uniform)
    width = 6.0  # mm: the widest Gaussian (12 mm = 6 px) stays well inside the 121-pixel image
    scatter = convolution_scatter(_impulse(), 1.7, width, spacing)[0, 0]
    assert float(scatter.sum()) == pytest.approx(1.7, rel=1e-9)
    offsets_mm = (torch.arange(121, dtype=DOUBLE) - 60) * spacing[1]
    column_variance = float((scatter.sum(dim=0) * offsets_mm**2).sum() / scatter.sum())
    expected = sum(weight * (scale * width) ** 2 for weight, scale in SCATTER_COMPONENTS)
    assert column_variance == pytest.approx(expected, rel=2e-3)
    assert float(convolution_scatter(uniform, 0.0, 30.0, spacing).abs().max()) == 0.0
    with pytest.raises(ValueError, match="scatter_to_primary"):
        convolution_scatter(uniform, -1.0, 30.0, spacing)


def test_patient_scatter_is_spr_at_the_median_thickness_and_none_from_air():
    spacing = (2.0, 2.0)
    uniform = torch.full((1, 1, 30, 40), 2.2, dtype=DOUBLE)
    torch.testing.assert_close(patient_scatter(uniform, 1.5, 30.0, spacing), 1.5 * torch.exp(-uniform))
    air = torch.zeros(1, 1, 30, 40, dtype=DOUBLE)
    assert float(patient_scatter(air, 1.5, 30.0, spacing).abs().max()) == 0.0
    # Air, then a 2.2 slab: the slab's median sets L_ref, so its far side still sees S / P = SPR,
    # and the air next to it only receives scatter.
    half = torch.zeros(1, 1, 30, 200, dtype=DOUBLE)
    half[..., :, 40:] = 2.2
    scatter = patient_scatter(half, 1.5, 5.0, spacing)
    assert float(scatter[0, 0, 15, 150] / torch.exp(-half[0, 0, 15, 150])) == pytest.approx(1.5, rel=1e-6)
    assert 0.0 < float(scatter[0, 0, 15, 0]) < float(scatter[0, 0, 15, 150])


def test_detector_blur_preserves_the_mean():
    sigma = gaussian_mtf_sigma_mm(1.5)
    assert math.exp(-2 * math.pi**2 * sigma**2 * 1.5**2) == pytest.approx(0.5, rel=1e-12)
    blurred = detector_blur(_impulse(41) * 1000.0, 1.0, (0.1, 0.1))
    assert float(blurred.sum()) == pytest.approx(1000.0, rel=1e-10)
    # The pixel aperture adds spacing^2 / 12 to the converter's variance (about 1.9 pixels, well sampled).
    offsets = (torch.arange(41, dtype=DOUBLE) - 20) * 0.1
    variance = float((blurred[0, 0].sum(dim=0) * offsets**2).sum() / blurred.sum())
    assert variance == pytest.approx(gaussian_mtf_sigma_mm(1.0) ** 2 + 0.1**2 / 12, rel=1e-3)
    flat = torch.full((1, 1, 20, 20), 7.0, dtype=DOUBLE)
    torch.testing.assert_close(detector_blur(flat, 2.0, (0.93, 0.93)), flat)


def test_quantum_noise_is_poisson():
    expected = torch.full((400_000,), 250.0, dtype=DOUBLE)
    counts = quantum_noise(expected, torch.Generator().manual_seed(1))
    assert torch.equal(counts, counts.round())
    assert float(counts.mean()) == pytest.approx(250.0, rel=2e-3)
    assert float(counts.var()) == pytest.approx(250.0, rel=0.015)
    assert torch.equal(counts, quantum_noise(expected, torch.Generator().manual_seed(1)))


def test_electronic_noise_is_gaussian():
    signal = torch.full((400_000,), 100.0, dtype=DOUBLE)
    noisy = electronic_noise(signal, 3.0, torch.Generator().manual_seed(2))
    assert float(noisy.mean()) == pytest.approx(100.0, abs=0.03)
    assert float(noisy.var()) == pytest.approx(9.0, rel=0.015)
    kurtosis = float(((noisy - noisy.mean()) ** 4).mean() / noisy.var() ** 2)
    assert kurtosis == pytest.approx(3.0, abs=0.05)  # Gaussian, not Poisson-like
    assert torch.equal(noisy, electronic_noise(signal, 3.0, torch.Generator().manual_seed(2)))


def test_log_transform_inverts_beer_lambert():
    line_integral = _phantom_line_integral()
    torch.testing.assert_close(log_transform(5e4 * torch.exp(-line_integral), 5e4), line_integral)
    assert float(log_transform(torch.zeros(1, 1, 1, 1, dtype=DOUBLE), 100.0)) == pytest.approx(math.log(200.0))


def test_unsharp_mask_gains_follow_the_gaussian_transfer():
    """A cosine of frequency f is multiplied by 1 + sum g (1 - exp(-2 pi^2 sigma^2 f^2)) away from the borders."""
    spacing, frequency = (1.0, 1.0), 1.0 / 20.0  # cycles/mm
    columns = torch.arange(240, dtype=DOUBLE)
    image = torch.cos(2 * math.pi * frequency * columns).expand(1, 1, 8, 240).clone()
    bands = ((0.8, 3.0), (2.0, 6.0))
    gain = 1 + sum(g * (1 - math.exp(-2 * math.pi**2 * s**2 * frequency**2)) for g, s in bands)
    enhanced = unsharp_mask(image, bands, spacing)
    interior = slice(60, 180)  # beyond 4 sigma of the wider band from both borders
    torch.testing.assert_close(enhanced[..., interior], gain * image[..., interior], atol=2e-3, rtol=0)
    constant = torch.full((1, 1, 16, 16), 2.0, dtype=DOUBLE)
    torch.testing.assert_close(unsharp_mask(constant, bands, spacing), constant)
    assert torch.equal(unsharp_mask(image, ((0.0, 3.0),), spacing), image)


def test_percentile_window():
    image = torch.rand(2, 1, 100, 100, generator=torch.Generator().manual_seed(3), dtype=DOUBLE)
    windowed = percentile_window(image, 2.0, 97.0)
    assert float(windowed.min()) == 0.0 and float(windowed.max()) == 1.0
    for item in windowed:
        assert float((item == 0).double().mean()) == pytest.approx(0.02, abs=2e-3)
        assert float((item == 1).double().mean()) == pytest.approx(0.03, abs=2e-3)
    torch.testing.assert_close(percentile_window(3.0 * image - 7.0, 2.0, 97.0), windowed)
    first = image[:1]
    region = first > 0.5  # the percentiles of the upper half only: everything below it clips to 0
    upper = percentile_window(first, 0.0, 100.0, region)
    assert torch.equal(upper == 0, first <= first[region].min())
    empty = torch.zeros_like(region)
    torch.testing.assert_close(percentile_window(image, 2.0, 97.0, empty), windowed)
    with pytest.raises(ValueError, match="percentiles"):
        percentile_window(image, 50.0, 40.0)


def test_quantisation_to_4096_levels():
    unit = torch.linspace(-0.1, 1.1, 200_001, dtype=DOUBLE)
    levels = quantise(unit)
    assert torch.equal(levels, levels.round())
    assert float(levels.min()) == 0.0 and float(levels.max()) == MAX_VALUE == 4095.0
    assert levels.unique().numel() == 4096
    inside = (unit >= 0) & (unit <= 1)
    assert float((levels[inside] / 4095.0 - unit[inside]).abs().max()) <= 0.5 / 4095.0 + 1e-12


def test_monochrome1_inverts():
    values = torch.tensor([0.0, 1.0, 2000.0, 4095.0])
    assert torch.equal(to_photometric(values, "MONOCHROME2"), values)
    assert torch.equal(to_photometric(values, "MONOCHROME1"), torch.tensor([4095.0, 4094.0, 2095.0, 0.0]))
    assert torch.equal(to_photometric(to_photometric(values, "MONOCHROME1"), "MONOCHROME1"), values)
    np.testing.assert_array_equal(to_photometric(values.numpy(), "MONOCHROME1"), 4095.0 - values.numpy())
    with pytest.raises(ValueError, match="photometric"):
        to_photometric(values, "RGB")


def test_appearance_draws_are_reproducible_and_in_range():
    draws = [ClinicalAppearance.draw(np.random.default_rng(seed)) for seed in range(40)]
    assert ClinicalAppearance.draw(np.random.default_rng(5)) == draws[5]
    assert len(set(draws)) == 40
    for appearance in draws:
        for name, (low, high) in APPEARANCE_RANGES.items():
            assert low <= getattr(appearance, name) <= high
        assert appearance.kvp == round(appearance.kvp)
    assert {a.photometric for a in draws} == {"MONOCHROME1", "MONOCHROME2"}
    assert ClinicalAppearance(**draws[0].to_dict()) == draws[0]
    with pytest.raises(ValueError, match="scatter_to_primary: expected 1 to 3"):
        ClinicalAppearance(scatter_to_primary=5.0)
    with pytest.raises(ValueError, match="photometric"):
        ClinicalAppearance(photometric="PALETTE")


def test_appearance_ranges_come_from_the_fields():
    numeric = [f for f in dataclasses.fields(ClinicalAppearance) if f.name != "photometric"]
    assert list(APPEARANCE_RANGES) == [f.name for f in numeric]
    for f in numeric:
        low, high = APPEARANCE_RANGES[f.name]
        assert low <= f.default <= high, f.name  # the defaults lie in their ranges


def test_appearance_draws_are_unchanged_for_a_fixed_seed():
    """Seed 0's draw (simulated datasets are reproducible from their seeds: it must not move)."""
    drawn = ClinicalAppearance.draw(np.random.default_rng(0))
    assert (drawn.kvp, drawn.aluminium_mm, drawn.photometric) == (81.0, 2.9, "MONOCHROME2")
    assert (drawn.scatter_to_primary, drawn.window_high_percent) == (1.0819470478723894, 99.77166384892882)


def test_clinical_radiograph_is_a_12_bit_log_image_and_deterministic():
    line_integral = _phantom_line_integral()
    appearance = ClinicalAppearance()
    first = clinical_radiograph(line_integral, (1.0, 1.0), appearance, torch.Generator().manual_seed(0))
    again = clinical_radiograph(line_integral, (1.0, 1.0), appearance, torch.Generator().manual_seed(0))
    other = clinical_radiograph(line_integral, (1.0, 1.0), appearance, torch.Generator().manual_seed(1))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.shape == line_integral.shape and first.dtype == DOUBLE
    assert torch.equal(first, first.round()) and float(first.min()) == 0.0 and float(first.max()) == 4095.0
    disc = line_integral > line_integral[..., :, :1].max() + 0.5  # the bone disc
    assert float(first[disc].mean()) > float(first[~disc].mean()) + 500.0  # bone bright
    correlation = np.corrcoef(first.flatten().numpy(), line_integral.flatten().numpy())[0, 1]
    assert correlation > 0.8
    with pytest.raises(ValueError, match="rows, cols"):
        clinical_radiograph(line_integral[0], (1.0, 1.0), appearance)


def test_render_ct_radiograph_clinical_mode():
    """A bone cube in water: the clinical mode renders a 12-bit image through the polychromatic DRR."""
    grid = VolumeGrid.from_spacing((24, 24, 24), (4.0, 4.0, 4.0))
    hu = torch.zeros(1, 1, 24, 24, 24)
    hu[..., 8:16, 8:16, 8:16] = 1500.0
    view = biplanar_pair(image_shape=(40, 32), pixel_spacing_mm=(3.0, 3.0), isocenter_mm=grid.centre_world)["AP"]
    appearance = dataclasses.replace(ClinicalAppearance(), kvp=70.0, photometric="MONOCHROME2")
    settings = RadiographSettings("clinical", 64)
    image = render_ct_radiograph(hu, view, grid, settings, torch.Generator().manual_seed(0), appearance)
    assert image.shape == (1, 1, 40, 32)
    assert torch.equal(image, image.round()) and float(image.min()) >= 0.0 and float(image.max()) <= 4095.0
    assert float(image[0, 0, 20, 16]) > float(image[0, 0, 2, 2])  # the cube is brighter than the margin
    bare = ProjectionView(view.matrix, view.image_shape, "AP")  # no C-arm pose: no pixel spacing
    with pytest.raises(ValueError, match="C-arm pose"):
        render_ct_radiograph(hu, bare, grid, settings)
