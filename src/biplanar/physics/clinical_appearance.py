"""A radiograph as a clinic hands it over: scatter, noise, detector blur and "for presentation" processing.

The chain, for each view (:func:`clinical_radiograph`), after the polychromatic two-material DRR of
:mod:`biplanar.physics.polychromatic` gave the effective line integral ``L``:

1. **Primary**: ``P = exp(-L)``, the transmitted fraction of the unattenuated beam (dimensionless).
   The *anatomy* is where ``L > DIRECT_EXPOSURE_LINE_INTEGRAL``; elsewhere the beam reaches the
   detector unattenuated (direct exposure).
2. **Scatter** (:func:`patient_scatter`): ``S = k * (P L / L_ref)``, a scatter source convolved
   with a broad kernel ``k`` whose integral is the scatter-to-primary ratio ``SPR``
   (:func:`convolution_scatter`: a sum of two Gaussians, :data:`SCATTER_COMPONENTS`; the convolution
   scatter model of Love and Kruger, Med Phys 1987, with the Gaussian point spread function Boone,
   Arnold and Seibert measured, Med Phys 1986). The source ``P L`` (a pencil beam scatters in
   proportion to the matter it crosses, the amplitude term of scatter kernel superposition,
   Ohnesorge et al., Eur Radiol 1999) is zero in air; ``L_ref``, the anatomy's median ``L``, makes
   ``S / P = SPR`` over a uniform patch of that thickness. Behind dense bone, where the primary
   dips but the scatter from around it does not, the local ratio is higher.
3. **Exposure** (automatic exposure control): the total ``P + S`` is scaled so that its median over
   the anatomy receives ``detector_kerma_ugy``, converted to X-ray quanta at
   :data:`QUANTA_PER_UGY_MM2` per mm^2 (:func:`quanta_per_pixel`).
4. **Quantum noise** (:func:`quantum_noise`): Poisson counts of those expected quanta.
5. **Detector blur** (:func:`detector_blur`): a Gaussian presampled MTF, the converter's MTF (its
   50 % frequency ``mtf50_per_mm``) combined with the pixel aperture; after the quantum noise, so
   the noise is correlated as a scintillator's is.
6. **Electronic noise** (:func:`electronic_noise`): additive Gaussian noise whose variance equals
   the quantum noise variance at ``electronic_noise_ugy`` (the detector's noise-equivalent kerma).
7. **Log** (:func:`log_transform`): ``-log(signal / q)``, ``q`` the quanta of the unattenuated
   beam, so that without scatter and noise it is ``L`` again (bone high).
8. **Contrast processing** (:func:`unsharp_mask`): unsharp masking at two scales, a fine one that
   sharpens edges (``edge_gain``, ``edge_sigma_mm``) and a coarse one that compresses the dynamic
   range (``latitude_gain``, ``latitude_sigma_mm``), the two-band form of multi-scale contrast
   enhancement (Vuylsteke and Schoeters, MUSICA, Proc SPIE 1994).
9. **Windowing** (:func:`percentile_window`): the ``window_low_percent`` and
   ``window_high_percent`` percentiles of the processed image over the anatomy map to 0 and 1,
   clipped (a clinic's histogram analysis leaves the direct exposure out; it clips to black).
10. **Quantisation** (:func:`quantise`): :data:`BITS_STORED` = 12 bits, 0 to 4095.

The result is the displayed image: higher values are brighter, bone bright (``MONOCHROME2``).
:func:`to_photometric` turns it into a file's stored values for ``photometric``: ``MONOCHROME1``
stores ``4095 - value`` (low values displayed white).

All parameters live in :class:`ClinicalAppearance`, with defaults and documented ranges
(:data:`APPEARANCE_RANGES`, sources in ``docs/data.md``); :meth:`ClinicalAppearance.draw` draws one
case's parameters from a numpy generator. Kernel widths are in mm at the detector.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

BITS_STORED = 12
MAX_VALUE = float(2**BITS_STORED - 1)  # 4095: the brightest displayed value
PHOTOMETRIC_INTERPRETATIONS = ("MONOCHROME1", "MONOCHROME2")
# Pixel Intensity Relationship Sign (DICOM 0028,1041) of the stored values: +1 when a higher value
# means more X-ray intensity. MONOCHROME2 stores the displayed image (bone, little intensity, high).
INTENSITY_SIGN = {"MONOCHROME1": 1, "MONOCHROME2": -1}
# X-ray quanta per mm^2 per uGy of air kerma behind a patient: IEC 62220-1's RQA5 beam (70 kV,
# 21 mm Al added), 29653; SpekPy gives 29585 for that beam.
QUANTA_PER_UGY_MM2 = 29653.0
# The scatter kernel: (weight, standard deviation / scatter_width_mm) of each Gaussian; the weights
# sum to 1, a peaked core and a long tail (approximation).
SCATTER_COMPONENTS = ((0.6, 0.5), (0.4, 2.0))
GAUSSIAN_TRUNCATE = 4.0  # Gaussian kernels are cut at this many standard deviations, then renormalised
MIN_QUANTA = 0.5  # detected quanta floor of the log (a pixel that detected none)
DIRECT_EXPOSURE_LINE_INTEGRAL = 0.1  # L at or below this (about 5 mm of soft tissue): no anatomy on the ray
ArrayT = TypeVar("ArrayT", Tensor, np.ndarray)
_RANGE, _DECIMALS = "appearance_range", "draw_decimals"  # field metadata keys of ClinicalAppearance


def _drawn(default: float, low: float, high: float, decimals: int | None = None) -> Any:
    """A numeric field of :class:`ClinicalAppearance`: its ``default``, its documented range
    ``[low, high]`` (inclusive: checked on construction, draws uniform in it) and the number of
    ``decimals`` a draw is rounded to (``None``: not rounded), in the field's unit."""
    return dataclasses.field(default=default, metadata={_RANGE: (low, high), _DECIMALS: decimals})


@dataclass(frozen=True)
class ClinicalAppearance:
    """How one case's clinical radiographs look (module doc; ranges: :data:`APPEARANCE_RANGES`).

    Each numeric field states its default and its documented range (inclusive; sources:
    ``docs/data.md``, "Clinical appearance"), in which :meth:`draw` draws it uniformly.

    Attributes:
        kvp: tube voltage, kV (draws step in 1 kV, as generators do).
        aluminium_mm: total tube filtration, mm of aluminium (draws step in 0.1 mm).
        scatter_to_primary: scatter-to-primary ratio of a uniform patch (the kernel's integral).
        scatter_width_mm: scale of the scatter kernel at the detector, mm (its Gaussians have
            standard deviations of 0.5 and 2 times it).
        detector_kerma_ugy: air kerma at the detector behind the patient (the median pixel), uGy.
        electronic_noise_ugy: kerma whose quantum noise variance equals the electronic noise's, uGy.
        mtf50_per_mm: spatial frequency at which the converter's Gaussian MTF is 0.5, cycles/mm.
        edge_gain, edge_sigma_mm: gain and Gaussian standard deviation (mm) of the edge band.
        latitude_gain, latitude_sigma_mm: gain and standard deviation (mm) of the coarse band.
        window_low_percent, window_high_percent: percentiles mapped to 0 and to 4095, %.
        photometric: ``MONOCHROME1`` or ``MONOCHROME2``, how a file stores the image.
    """

    kvp: float = _drawn(75.0, 65.0, 90.0, decimals=0)
    aluminium_mm: float = _drawn(3.0, 2.5, 4.0, decimals=1)
    scatter_to_primary: float = _drawn(2.0, 1.0, 3.0)
    scatter_width_mm: float = _drawn(30.0, 15.0, 60.0)
    detector_kerma_ugy: float = _drawn(2.5, 1.25, 5.0)
    electronic_noise_ugy: float = _drawn(0.1, 0.02, 0.3)
    mtf50_per_mm: float = _drawn(1.5, 1.0, 3.0)
    edge_gain: float = _drawn(0.6, 0.0, 1.5)
    edge_sigma_mm: float = _drawn(2.0, 1.0, 4.0)
    latitude_gain: float = _drawn(1.0, 0.0, 3.0)
    latitude_sigma_mm: float = _drawn(25.0, 10.0, 50.0)
    window_low_percent: float = _drawn(1.0, 0.1, 3.0)
    window_high_percent: float = _drawn(99.5, 99.0, 99.9)
    photometric: str = "MONOCHROME1"

    def __post_init__(self) -> None:
        for name, (low, high) in self.ranges().items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"{name}: expected {low:g} to {high:g}, got {value!r}")
        if self.photometric not in PHOTOMETRIC_INTERPRETATIONS:
            raise ValueError(
                f"photometric: expected one of {', '.join(PHOTOMETRIC_INTERPRETATIONS)}, got {self.photometric!r}"
            )

    @classmethod
    def ranges(cls) -> dict[str, tuple[float, float]]:
        """Numeric field name -> its documented ``(low, high)`` range (inclusive), in field order."""
        return {f.name: f.metadata[_RANGE] for f in dataclasses.fields(cls) if _RANGE in f.metadata}

    @classmethod
    def draw(cls, rng: np.random.Generator) -> ClinicalAppearance:
        """One case's parameters: each numeric field uniform in its range (in field order, rounded
        to its decimals), then the photometric interpretation 50/50."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if _RANGE in f.metadata:
                value, decimals = float(rng.uniform(*f.metadata[_RANGE])), f.metadata[_DECIMALS]
                values[f.name] = value if decimals is None else round(value, decimals)
        values["photometric"] = PHOTOMETRIC_INTERPRETATIONS[int(rng.integers(len(PHOTOMETRIC_INTERPRETATIONS)))]
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Field name -> value (JSON-ready)."""
        return dataclasses.asdict(self)


# Documented range of each numeric parameter of ClinicalAppearance (inclusive), from its fields.
APPEARANCE_RANGES: dict[str, tuple[float, float]] = ClinicalAppearance.ranges()


def _convolve_last_axis(image: Tensor, kernel: Tensor) -> Tensor:
    """Circular convolution of ``image`` along its last axis with a centred odd ``kernel`` (FFT)."""
    length, radius = image.shape[-1], (kernel.numel() - 1) // 2
    taps = torch.zeros(length, dtype=image.dtype, device=image.device)
    taps[: radius + 1] = kernel[radius:]  # offsets 0..radius
    if radius:
        taps[length - radius :] = kernel[:radius]  # offsets -radius..-1, wrapped
    spectrum = torch.fft.rfft(image, dim=-1) * torch.fft.rfft(taps)
    return torch.fft.irfft(spectrum, n=length, dim=-1)


def gaussian_kernel_1d(sigma_px: float, dtype: torch.dtype = torch.float64) -> Tensor:
    """``(2 r + 1,)`` sampled Gaussian of standard deviation ``sigma_px`` pixels, cut at
    :data:`GAUSSIAN_TRUNCATE` standard deviations (``r >= 1``), summing to 1."""
    radius = max(1, math.ceil(GAUSSIAN_TRUNCATE * sigma_px))
    offsets = torch.arange(-radius, radius + 1, dtype=dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma_px) ** 2)
    return kernel / kernel.sum()


def gaussian_filter(image: Tensor, sigma_px: tuple[float, float]) -> Tensor:
    """A separable Gaussian blur with replicated borders (a constant image stays constant).

    Args:
        image: ``(B, C, rows, cols)``, any unit.
        sigma_px: ``(row, col)`` standard deviations, pixels; 0 leaves that axis alone.

    Returns:
        ``(B, C, rows, cols)``, same unit. Each kernel sums to 1, so an image's total is kept
        wherever the kernel stays inside it.
    """
    if image.dim() != 4:
        raise ValueError(f"image: expected (B, C, rows, cols), got {tuple(image.shape)}")
    result = image
    for axis, sigma in ((-2, sigma_px[0]), (-1, sigma_px[1])):
        if sigma <= 0:
            continue
        kernel = gaussian_kernel_1d(sigma).to(image)
        radius = (kernel.numel() - 1) // 2
        moved = result.transpose(axis, -1)  # the blurred axis last: (..., other, this)
        padded = F.pad(moved, (radius, radius, 0, 0), mode="replicate")  # the last axis only
        blurred = _convolve_last_axis(padded, kernel)[..., radius:-radius]  # the unwrapped part
        result = blurred.transpose(axis, -1)  # back to (B, C, rows, cols)
    return result


def _sigma_px(sigma_mm: float, spacing_mm: tuple[float, float]) -> tuple[float, float]:
    """A standard deviation in mm at the detector as ``(row, col)`` pixels."""
    return sigma_mm / spacing_mm[0], sigma_mm / spacing_mm[1]


def convolution_scatter(
    primary: Tensor, scatter_to_primary: float, scatter_width_mm: float, spacing_mm: tuple[float, float]
) -> Tensor:
    """Scatter reaching the detector: the primary convolved with a kernel of integral ``scatter_to_primary``.

    ``S = SPR sum_k w_k G_k * P``, ``G_k`` Gaussians of standard deviation ``s_k scatter_width_mm``
    with ``(w_k, s_k)`` of :data:`SCATTER_COMPONENTS` (``sum w_k = 1``); borders replicated, as if
    the patient continued beyond the detector's edge.

    Args:
        primary: ``(B, 1, rows, cols)`` primary intensity, any unit (e.g. fraction of the unattenuated beam).
        scatter_to_primary: the kernel's integral, dimensionless (``>= 0``).
        scatter_width_mm: the kernel's scale at the detector, mm.
        spacing_mm: ``(row, col)`` detector pixel spacing, mm.

    Returns:
        ``(B, 1, rows, cols)`` scatter intensity, the unit of ``primary``.
    """
    if scatter_to_primary < 0 or scatter_width_mm <= 0:
        raise ValueError(
            f"scatter_to_primary >= 0 and scatter_width_mm > 0 expected, got {scatter_to_primary}, {scatter_width_mm}"
        )
    spread = sum(
        (
            weight * gaussian_filter(primary, _sigma_px(scale * scatter_width_mm, spacing_mm))
            for weight, scale in SCATTER_COMPONENTS
        ),
        torch.zeros_like(primary),
    )
    return scatter_to_primary * spread


def _within(image: Tensor, region: Tensor | None) -> Tensor:
    """``(B, N)`` pixels of each image, NaN outside ``region`` (all of them where it is empty or ``None``)."""
    flat = image.flatten(1)
    if region is None:
        return flat
    inside = region.flatten(1)
    inside = inside | ~inside.any(dim=1, keepdim=True)
    return flat.masked_fill(~inside, float("nan"))


def patient_scatter(
    line_integral: Tensor, scatter_to_primary: float, scatter_width_mm: float, spacing_mm: tuple[float, float]
) -> Tensor:
    """Scatter of a patient (module doc, step 2): the source ``P L / L_ref`` through :func:`convolution_scatter`.

    Args:
        line_integral: ``(B, 1, rows, cols)`` effective line integrals ``L`` (dimensionless).
        scatter_to_primary: ``S / P`` over a uniform patch at ``L_ref``, the median ``L`` of the
            anatomy (``L > DIRECT_EXPOSURE_LINE_INTEGRAL``; all pixels when there is none).
        scatter_width_mm, spacing_mm: see :func:`convolution_scatter`.

    Returns:
        ``(B, 1, rows, cols)`` scatter, as a fraction of the unattenuated beam.
    """
    primary = torch.exp(-line_integral)
    anatomy = line_integral > DIRECT_EXPOSURE_LINE_INTEGRAL
    reference = torch.nanmedian(_within(line_integral, anatomy), dim=1).values.clamp_min(1e-6)  # (B,)
    source = primary * line_integral.clamp_min(0.0) / reference[:, None, None, None]
    return convolution_scatter(source, scatter_to_primary, scatter_width_mm, spacing_mm)


def quanta_per_pixel(kerma_ugy: float, spacing_mm: tuple[float, float]) -> float:
    """Expected X-ray quanta on one pixel at an air kerma (``QUANTA_PER_UGY_MM2 x kerma x pixel area``)."""
    return QUANTA_PER_UGY_MM2 * kerma_ugy * spacing_mm[0] * spacing_mm[1]


def quantum_noise(expected_quanta: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Poisson counts (variance = mean) of ``expected_quanta`` (any shape, quanta, ``>= 0``)."""
    return torch.poisson(expected_quanta, generator=generator)


def electronic_noise(signal: Tensor, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """``signal`` (any shape) plus zero-mean Gaussian noise of standard deviation ``sigma`` (its unit)."""
    noise = torch.randn(signal.shape, generator=generator, dtype=signal.dtype, device=signal.device)
    return signal + sigma * noise


def gaussian_mtf_sigma_mm(mtf50_per_mm: float) -> float:
    """Standard deviation (mm) of the Gaussian whose MTF ``exp(-2 pi^2 sigma^2 f^2)`` is 0.5 at ``mtf50_per_mm``."""
    return math.sqrt(math.log(2.0) / 2.0) / (math.pi * mtf50_per_mm)


def detector_blur(image: Tensor, mtf50_per_mm: float, spacing_mm: tuple[float, float]) -> Tensor:
    """The detector's presampled MTF as a Gaussian: the converter's (:func:`gaussian_mtf_sigma_mm`)
    and the pixel aperture's (a box one pixel wide: variance ``spacing^2 / 12``), variances added.

    Args:
        image: ``(B, 1, rows, cols)`` detected signal, any unit.
        mtf50_per_mm: the converter's 50 % MTF frequency, cycles/mm.
        spacing_mm: ``(row, col)`` pixel spacing, mm.

    Returns:
        ``(B, 1, rows, cols)``, same unit and mean (the kernel sums to 1).
    """
    converter = gaussian_mtf_sigma_mm(mtf50_per_mm)
    sigma_px = tuple(math.sqrt(converter**2 + spacing**2 / 12.0) / spacing for spacing in spacing_mm)
    return gaussian_filter(image, (sigma_px[0], sigma_px[1]))


def log_transform(signal: Tensor, unattenuated: float | Tensor) -> Tensor:
    """``-log(signal / unattenuated)``, the signal floored at :data:`MIN_QUANTA` (dimensionless, bone high).

    Args:
        signal: ``(B, 1, rows, cols)`` detected quanta.
        unattenuated: quanta of the unattenuated beam, a number or ``(B, 1, 1, 1)``.
    """
    return -torch.log(signal.clamp(min=MIN_QUANTA) / unattenuated)


def unsharp_mask(image: Tensor, bands: tuple[tuple[float, float], ...], spacing_mm: tuple[float, float]) -> Tensor:
    """Multi-scale unsharp masking: ``x + sum_k g_k (x - G_k * x)``.

    A band of gain ``g`` and Gaussian ``sigma`` multiplies a spatial frequency ``f`` by
    ``1 + g (1 - exp(-2 pi^2 sigma^2 f^2))``: a small ``sigma`` sharpens edges, a large one lifts
    everything finer than it against the coarse background (dynamic range compression, once windowed).

    Args:
        image: ``(B, 1, rows, cols)`` log image, dimensionless.
        bands: ``((gain, sigma_mm), ...)``.
        spacing_mm: ``(row, col)`` pixel spacing, mm.

    Returns:
        ``(B, 1, rows, cols)``; a constant image is unchanged.
    """
    result = image
    for gain, sigma_mm in bands:
        if gain != 0.0:
            result = result + gain * (image - gaussian_filter(image, _sigma_px(sigma_mm, spacing_mm)))
    return result


def percentile_window(image: Tensor, low_percent: float, high_percent: float, region: Tensor | None = None) -> Tensor:
    """Each image's ``low_percent`` and ``high_percent`` percentiles mapped to 0 and 1, clipped.

    Args:
        image: ``(B, 1, rows, cols)``, any unit.
        low_percent, high_percent: percentiles, ``0 <= low < high <= 100``.
        region: ``(B, 1, rows, cols)`` bool, the pixels whose percentiles count (an empty one, or
            ``None``: all of them).

    Returns:
        ``(B, 1, rows, cols)`` in ``[0, 1]``; the same for any ``a x + b`` with ``a > 0``.
    """
    if not 0.0 <= low_percent < high_percent <= 100.0:
        raise ValueError(f"percentiles: expected 0 <= low < high <= 100, got {low_percent}, {high_percent}")
    levels = torch.tensor([low_percent / 100.0, high_percent / 100.0], dtype=image.dtype, device=image.device)
    low, high = torch.nanquantile(_within(image, region), levels, dim=1)  # (B,) each
    scale = (high - low).clamp_min(torch.finfo(image.dtype).tiny)
    return ((image - low[:, None, None, None]) / scale[:, None, None, None]).clamp(0.0, 1.0)


def quantise(unit: Tensor, bits: int = BITS_STORED) -> Tensor:
    """``round(unit x (2^bits - 1))`` of values clipped to ``[0, 1]``: integers 0 to ``2^bits - 1`` (as floats)."""
    return torch.round(unit.clamp(0.0, 1.0) * (2**bits - 1))


def to_photometric(values: ArrayT, photometric: str) -> ArrayT:
    """Displayed values (0 to :data:`MAX_VALUE`, bright high) as stored under ``photometric``.

    ``MONOCHROME2`` stores them as they are, ``MONOCHROME1`` as ``MAX_VALUE - values`` (its own
    inverse). Works on tensors and arrays of any shape.
    """
    if photometric not in PHOTOMETRIC_INTERPRETATIONS:
        raise ValueError(f"photometric: expected one of {', '.join(PHOTOMETRIC_INTERPRETATIONS)}, got {photometric!r}")
    return MAX_VALUE - values if photometric == "MONOCHROME1" else values


def clinical_radiograph(
    line_integral: Tensor,
    spacing_mm: tuple[float, float],
    appearance: ClinicalAppearance,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The displayed clinical image of an effective line integral (module doc, steps 1-10).

    Args:
        line_integral: ``(B, 1, rows, cols)`` effective line integrals ``-log(D / D0)`` of the
            detector (dimensionless), e.g. :func:`biplanar.physics.polychromatic.render_polychromatic_drr`
            at ``appearance.kvp`` and ``appearance.aluminium_mm``.
        spacing_mm: ``(row, col)`` detector pixel spacing, mm.
        appearance: scatter, exposure, noise, blur and processing parameters.
        generator: the random generator of the quantum and electronic noise.

    Returns:
        ``(B, 1, rows, cols)`` displayed values, integers 0 to 4095 (as the input's float dtype),
        bone bright (``MONOCHROME2``; :func:`to_photometric` for the stored values).
    """
    if line_integral.dim() != 4 or line_integral.shape[1] != 1:
        raise ValueError(f"line_integral: expected (B, 1, rows, cols), got {tuple(line_integral.shape)}")
    anatomy = line_integral > DIRECT_EXPOSURE_LINE_INTEGRAL
    total = torch.exp(-line_integral) + patient_scatter(
        line_integral, appearance.scatter_to_primary, appearance.scatter_width_mm, spacing_mm
    )
    median = torch.nanmedian(_within(total, anatomy), dim=1).values[:, None, None, None]  # (B, 1, 1, 1)
    unattenuated = quanta_per_pixel(appearance.detector_kerma_ugy, spacing_mm) / median  # quanta at P = 1
    counts = quantum_noise(total * unattenuated, generator)
    blurred = detector_blur(counts, appearance.mtf50_per_mm, spacing_mm)
    electronic_sigma = math.sqrt(quanta_per_pixel(appearance.electronic_noise_ugy, spacing_mm))
    detected = electronic_noise(blurred, electronic_sigma, generator)
    processed = unsharp_mask(
        log_transform(detected, unattenuated),
        ((appearance.edge_gain, appearance.edge_sigma_mm), (appearance.latitude_gain, appearance.latitude_sigma_mm)),
        spacing_mm,
    )
    windowed = percentile_window(processed, appearance.window_low_percent, appearance.window_high_percent, anatomy)
    return quantise(windowed)
