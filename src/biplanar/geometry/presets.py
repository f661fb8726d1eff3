"""Named C-arm set-ups: the paper's orthogonal pair and generalized (non-orthogonal) pairs."""

from __future__ import annotations

import numpy as np

from biplanar.geometry.projection import CarmPose, ProjectionView

# Van Houtte et al. 2022: source-detector 1000 mm, source-isocentre 925 mm, 224 x 160 radiographs.
VIEW_NAMES = ("AP", "LAT")  # the two views of a biplanar pair, in the order the networks take them
PAPER_SOURCE_DETECTOR_MM = 1000.0
PAPER_SOURCE_ISOCENTER_MM = 925.0
PAPER_IMAGE_SHAPE = (224, 160)  # (rows, cols)
# 224 rows x 0.93 mm = 208 mm at the detector, 193 mm at the isocentre: the 192 mm paper volume.
PAPER_PIXEL_SPACING_MM = (0.93, 0.93)
AP_LAO_RAO_DEG = 0.0
LAT_LAO_RAO_DEG = 90.0


def biplanar_pair(
    ap_lao_rao_deg: float = AP_LAO_RAO_DEG,
    lat_lao_rao_deg: float = LAT_LAO_RAO_DEG,
    image_shape: tuple[int, int] = PAPER_IMAGE_SHAPE,
    pixel_spacing_mm: tuple[float, float] = PAPER_PIXEL_SPACING_MM,
    isocenter_mm: np.ndarray | None = None,
) -> dict[str, ProjectionView]:
    """An ``AP`` and a ``LAT`` view at the paper's distances.

    Args:
        ap_lao_rao_deg, lat_lao_rao_deg: C-arm angles of the two views, degrees.
        image_shape: ``(rows, cols)`` of both detectors.
        pixel_spacing_mm: ``(row, col)`` detector spacing, mm.
        isocenter_mm: ``(3,)`` world mm; ``None`` leaves it unset in the C-arm description (a
            geometry file then defaults it to the volume's centre) and builds the matrices with
            the isocentre at the world origin, where biplanar's phantom grids are centred.
    """
    isocenter = None if isocenter_mm is None else tuple(np.asarray(isocenter_mm, dtype=float))
    views = {}
    row_spacing_mm, col_spacing_mm = pixel_spacing_mm
    for name, angle in (("AP", ap_lao_rao_deg), ("LAT", lat_lao_rao_deg)):
        carm = CarmPose(
            float(angle),
            0.0,
            PAPER_SOURCE_ISOCENTER_MM,
            PAPER_SOURCE_DETECTOR_MM,
            (row_spacing_mm, col_spacing_mm),
            isocenter,
        )
        views[name] = ProjectionView.from_carm(carm, image_shape, np.zeros(3), name=name)
    return views


def random_generalized_pair(
    rng: np.random.Generator,
    max_offset_deg: float = 30.0,
    **kwargs,
) -> dict[str, ProjectionView]:
    """A generalized pair: each view's LAO/RAO drawn uniformly within ``max_offset_deg`` of 0 and 90."""
    ap, lat = rng.uniform(-max_offset_deg, max_offset_deg, size=2)
    return biplanar_pair(AP_LAO_RAO_DEG + ap, LAT_LAO_RAO_DEG + lat, **kwargs)
