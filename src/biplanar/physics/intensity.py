"""Radiograph values as they come, turned into what the model compares: line integrals.

docs/contract.md section 7. Two routes:

- ``line-integral``: the values are already ``L = integral of mu ds`` (or a monotone function of it
  in which bone is bright); they are used as they are.
- ``transmission``: the values are proportional to the detected X-ray intensity ``I = I_air
  exp(-L)`` (raw counts; DICOM Pixel Intensity Relationship ``LIN``), so ``L = -log(I / I_air)``.
  ``I_air``, the unattenuated level, is given (``--air-level``) or estimated as the
  :data:`AIR_PERCENTILE` percentile of the image: the brightest pixels of a transmission image are
  those whose rays miss the patient (a high percentile, not the maximum, so that a few hot pixels
  do not set it). Intensities are floored at :data:`INTENSITY_FLOOR` of ``I_air`` (``L <= 11.5``),
  and ``L`` at 0 (brighter than air is air).

:func:`check_radiograph` refuses what is no radiograph: non-finite values, a constant image, or a
clipped one (saturated: many pixels at the maximum line integral).
"""

from __future__ import annotations

import numpy as np

INTENSITY_ROUTES = ("auto", "line-integral", "transmission")
AIR_PERCENTILE = 99.5  # percent: the unattenuated level of a transmission image
INTENSITY_FLOOR = 1e-5  # of I_air: the darkest transmission taken at face value (L = 11.5; a lateral hip reaches 10.5)
# More pixels than this at the maximum line integral: a clipped image (a lateral view through the
# whole body has up to ~3 % at the detector floor).
MAX_CLIPPED_FRACTION = 0.05
RELATIVE_CONSTANT = 1e-6  # standard deviation below this fraction of the magnitude: a constant image


def estimate_air_level(transmission: np.ndarray) -> float:
    """``I_air`` of a transmission image: its :data:`AIR_PERCENTILE` percentile (module doc).

    Args:
        transmission: ``(rows, cols)`` intensities, any positive unit.
    """
    return float(np.percentile(transmission, AIR_PERCENTILE))


def transmission_to_line_integral(transmission: np.ndarray, air_level: float | None = None) -> tuple[np.ndarray, float]:
    """``L = -log(I / I_air)`` of a transmission image (module doc).

    Args:
        transmission: ``(rows, cols)`` intensities proportional to the detected X-ray intensity.
        air_level: ``I_air`` in the image's units; ``None`` estimates it (:func:`estimate_air_level`).

    Returns:
        the ``(rows, cols)`` float32 line integrals (dimensionless, >= 0) and the ``I_air`` used.

    Raises:
        ValueError: a non-positive ``I_air`` (given or estimated).
    """
    level = estimate_air_level(transmission) if air_level is None else float(air_level)
    if not level > 0:
        raise ValueError(f"air level: expected a positive unattenuated intensity, got {level:g}")
    ratio = np.clip(np.asarray(transmission, dtype=np.float64) / level, INTENSITY_FLOOR, 1.0)
    return (-np.log(ratio)).astype(np.float32), level


def check_radiograph(image: np.ndarray) -> None:
    """Refuse an image that is no radiograph (as line integrals): non-finite, constant or clipped.

    Args:
        image: ``(rows, cols)`` line integrals (after :func:`transmission_to_line_integral` where
            the route is ``transmission``).

    Raises:
        ValueError: with a message saying what is wrong (the caller names the file).
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2D radiograph, got shape {list(image.shape)}")
    finite = np.isfinite(image)
    if not finite.all():
        raise ValueError(f"{int((~finite).sum())} pixels are NaN or infinite")
    spread = float(image.std())
    if spread <= RELATIVE_CONSTANT * max(float(np.abs(image).max()), 1e-30):
        raise ValueError(f"the image is constant ({float(image.flat[0]):g} everywhere)")
    clipped = float(np.mean(image >= image.max()))
    if clipped > MAX_CLIPPED_FRACTION:
        raise ValueError(
            f"{100 * clipped:.0f} % of the pixels sit at the maximum value {float(image.max()):g}: "
            "a clipped (saturated) image, or the wrong intensity route (see --intensity)"
        )
