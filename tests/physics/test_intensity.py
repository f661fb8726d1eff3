"""Radiograph values into line integrals: the transmission route and the refusals."""

import numpy as np
import pytest

from biplanar.physics.intensity import (
    AIR_PERCENTILE,
    INTENSITY_FLOOR,
    check_radiograph,
    estimate_air_level,
    transmission_to_line_integral,
)


def line_integrals(air_fraction: float = 0.1) -> np.ndarray:
    """A (64, 48) line-integral image: a smooth body (0.5-4) with a band of air on the left."""
    rows, cols = np.mgrid[0:64, 0:48]
    image = 0.5 + 3.5 * np.exp(-(((rows - 32) / 20.0) ** 2 + ((cols - 28) / 14.0) ** 2))
    image[:, : round(48 * air_fraction)] = 0.0
    return image.astype(np.float32)


def test_transmission_round_trip_with_a_given_air_level():
    truth = line_integrals()
    counts = 4000.0 * np.exp(-truth)
    recovered, level = transmission_to_line_integral(counts, air_level=4000.0)
    assert level == 4000.0
    np.testing.assert_allclose(recovered, truth, atol=1e-5)


def test_air_level_is_estimated_from_the_unattenuated_pixels():
    truth = line_integrals(air_fraction=0.1)  # 10 % air: more than 100 - AIR_PERCENTILE
    assert 100 - AIR_PERCENTILE < 10
    counts = 1234.0 * np.exp(-truth)
    assert estimate_air_level(counts) == pytest.approx(1234.0)
    recovered, _ = transmission_to_line_integral(counts)
    np.testing.assert_allclose(recovered, truth, atol=1e-5)


def test_intensities_brighter_than_air_and_below_the_floor_are_bounded():
    recovered, _ = transmission_to_line_integral(np.array([[2.0, 1.0, 0.0]]), air_level=1.0)
    assert recovered[0, 0] == 0.0 and recovered[0, 1] == 0.0
    assert recovered[0, 2] == pytest.approx(-np.log(INTENSITY_FLOOR)) == pytest.approx(11.513, abs=1e-3)
    with pytest.raises(ValueError, match="air level"):
        transmission_to_line_integral(np.zeros((4, 4)))


def test_a_radiograph_passes_and_non_radiographs_are_refused():
    check_radiograph(line_integrals())
    with_nan = line_integrals()
    with_nan[3, 4] = np.nan
    with pytest.raises(ValueError, match="1 pixels are NaN"):
        check_radiograph(with_nan)
    with pytest.raises(ValueError, match="constant"):
        check_radiograph(np.full((8, 8), 2.5, dtype=np.float32))
    clipped = np.minimum(line_integrals(), 2.0)
    with pytest.raises(ValueError, match="clipped"):
        check_radiograph(clipped)
    with pytest.raises(ValueError, match="2D"):
        check_radiograph(np.zeros((2, 3, 4)))
