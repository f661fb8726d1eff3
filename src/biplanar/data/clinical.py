"""A simulated patient's radiographs as a clinic would hand them over: two DICOM files.

The views are the paper's C-arm (source-detector 1000 mm, source-isocentre 925 mm) on a clinic's
detector (default 448 x 320 pixels of 0.6 mm), the isocentre at the grid's centre; the pixel values
are transmission counts ``I = air_counts exp(-L)`` (Pixel Intensity Relationship ``LIN``, sign +1,
``MONOCHROME1``), and everything ``register`` needs stands in the tags (docs/contract.md section 7):
View Position (``AP``; the LAT as ``RL`` for a right hip, ``LL`` for a left one: the hip against
the detector), Distance Source to Detector / to Patient, Imager Pixel Spacing, Patient Orientation
and Image Laterality. No geometry file and no masks go with them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from biplanar.data.simulate import SimulationConfig, render_radiographs
from biplanar.geometry.presets import PAPER_SOURCE_DETECTOR_MM, PAPER_SOURCE_ISOCENTER_MM, biplanar_pair
from biplanar.geometry.projection import ProjectionView
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.io.dicom import write_dicom_radiograph
from biplanar.io.geometry_file import write_geometry
from biplanar.io.images import write_image

CLINIC_DETECTOR = ((448, 320), (0.6, 0.6))  # (rows, cols), (row, col) mm
AIR_COUNTS = 20000.0  # unattenuated detector counts
LATERAL = {"right": (90.0, "RL"), "left": (-90.0, "LL")}  # LAT lao_rao (deg) and View Position per hip
# Patient Orientation (0020,0020) of the contract's detector axes at each lao_rao (docs/contract.md s7).
ORIENTATION = {0.0: "L\\F", 90.0: "P\\F", -90.0: "A\\F"}


def clinic_views(grid: VolumeGrid, side: str = "right") -> dict[str, ProjectionView]:
    """The AP and LAT views of a clinic's detector, the LAT source on the side away from the hip."""
    lat_angle, _ = LATERAL[side]
    shape, spacing = CLINIC_DETECTOR
    return biplanar_pair(0.0, lat_angle, shape, spacing, grid.centre_world)


def write_clinical_dicoms(
    folder: Path, ct_hu: np.ndarray, grid: VolumeGrid, side: str = "right", config: SimulationConfig | None = None
) -> dict[str, Path]:
    """Render a CT's two clinic radiographs and write them as ``AP.dcm`` and ``LAT.dcm`` (module doc).

    Args:
        folder: where to write (created).
        ct_hu: ``(I, J, K)`` Hounsfield units on ``grid``.
        grid: its grid (world RAS+ mm); the isocentre is its centre.
        side: ``"right"`` or ``"left"``: the hip imaged (Image Laterality and the LAT's side).
        config: the rendering's mode and samples (default: line integrals, as ``simulate``).

    Returns:
        view name -> the file written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    views = clinic_views(grid, side)
    images = render_radiographs(ct_hu, grid, views, config or SimulationConfig(preset="lite"))
    _, lat_position = LATERAL[side]
    files = {}
    for name, position in (("AP", "AP"), ("LAT", lat_position)):
        counts = np.clip(np.round(AIR_COUNTS * np.exp(-images[name].astype(np.float64))), 1.0, 65535.0)
        angle = 0.0 if name == "AP" else LATERAL[side][0]
        files[name] = folder / f"{name}.dcm"
        write_dicom_radiograph(
            files[name],
            counts,
            view_position=position,
            source_detector_mm=PAPER_SOURCE_DETECTOR_MM,
            source_patient_mm=PAPER_SOURCE_ISOCENTER_MM,
            imager_pixel_spacing_mm=CLINIC_DETECTOR[1],
            photometric="MONOCHROME1",
            intensity_relationship="LIN",
            intensity_sign=1,
            patient_orientation=ORIENTATION[angle],
            image_laterality="L" if side == "left" else "R",
        )
    return files


def write_view_files(
    folder: Path, views: dict[str, ProjectionView], images: dict[str, np.ndarray], masks: dict[str, np.ndarray]
) -> None:
    """The array route's inputs of ``register``: ``geometry.json``, ``<view>.npy`` and ``<view>_mask.npy``.

    Args:
        folder: where to write (created).
        views: view name -> view.
        images: view name -> ``(rows, cols)`` radiograph (line integrals, or any values).
        masks: view name -> ``(rows, cols)`` femur mask (0 / 1).
    """
    folder.mkdir(parents=True, exist_ok=True)
    write_geometry(folder / "geometry.json", views)
    for name in views:
        write_image(folder / f"{name}.npy", images[name])
        write_image(folder / f"{name}_mask.npy", masks[name])
