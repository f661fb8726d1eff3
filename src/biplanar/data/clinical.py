"""A simulated patient's radiographs as a clinic would hand them over: two DICOM files.

The views are the paper's C-arm (source-detector 1000 mm, source-isocentre 925 mm) on a clinic's
detector (default 448 x 320 pixels of 0.6 mm), the isocentre at the grid's centre; the pixel values
are transmission counts ``I = air_counts exp(-L)`` (Pixel Intensity Relationship ``LIN``, sign +1,
``MONOCHROME1``), and everything ``register`` needs stands in the tags (docs/contract.md section 7):
View Position (``AP``; the LAT as ``RL`` for a right hip, ``LL`` for a left one: the hip against
the detector), Distance Source to Detector / to Patient, Imager Pixel Spacing, Patient Orientation
and Image Laterality. No geometry file and no masks go with them. Given the subject's parameters,
the radiographs project its whole-body scene around the grid (:func:`biplanar.data.scene.render_scene`,
what ``simulate --scene body`` does), so that no CT box edge shows; else the CT given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from biplanar.data.phantom import SubjectSpec
from biplanar.data.scene import render_scene
from biplanar.data.simulate import SimulationConfig, render_radiographs
from biplanar.geometry.presets import biplanar_pair
from biplanar.geometry.projection import ProjectionView
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.io.dicom import write_dicom_view
from biplanar.io.geometry_file import write_geometry
from biplanar.io.images import write_image

CLINIC_DETECTOR = ((448, 320), (0.6, 0.6))  # (rows, cols), (row, col) mm
AIR_COUNTS = 60000.0  # unattenuated detector counts (a lateral hip's L reaches 10.5: counts stay >= 1)
LATERAL_LAO_RAO_DEG = {"right": 90.0, "left": -90.0}  # the LAT view's angle per hip (View Position RL / LL)


def clinic_views(grid: VolumeGrid, side: str = "right") -> dict[str, ProjectionView]:
    """The AP and LAT views of a clinic's detector, the LAT source on the side away from the hip."""
    shape, spacing = CLINIC_DETECTOR
    return biplanar_pair(0.0, LATERAL_LAO_RAO_DEG[side], shape, spacing, grid.centre_world)


def write_clinical_dicoms(
    folder: Path,
    ct_hu: np.ndarray,
    grid: VolumeGrid,
    side: str = "right",
    config: SimulationConfig | None = None,
    spec: SubjectSpec | None = None,
) -> dict[str, Path]:
    """Render a CT's two clinic radiographs and write them as ``AP.dcm`` and ``LAT.dcm`` (module doc).

    Args:
        folder: where to write (created).
        ct_hu: ``(I, J, K)`` Hounsfield units on ``grid``.
        grid: its grid (world RAS+ mm); the isocentre is its centre.
        side: ``"right"`` or ``"left"``: the hip imaged (Image Laterality and the LAT's side).
        config: the rendering's mode and samples (default: line integrals, as ``simulate``).
        spec: the simulated subject of ``ct_hu`` (a right hip): project its whole-body scene rather
            than ``ct_hu`` alone.

    Returns:
        view name -> the file written.

    Raises:
        ValueError: ``spec`` with ``side="left"`` (scenes are rendered around a right hip).
    """
    if spec is not None and side != "right":
        raise ValueError("spec: the whole-body scene is rendered around a right hip; give side='right'")
    folder.mkdir(parents=True, exist_ok=True)
    views = clinic_views(grid, side)
    if spec is not None:
        rendered = render_scene(spec, grid, views)
        ct_hu, grid = rendered.ct_hu, rendered.scene.grid
    images = render_radiographs(ct_hu, grid, views, config or SimulationConfig(preset="lite"))
    files = {}
    for name, view in views.items():
        counts = np.clip(np.round(AIR_COUNTS * np.exp(-images[name].astype(np.float64))), 1.0, 65535.0)
        files[name] = folder / f"{name}.dcm"
        write_dicom_view(
            files[name],
            counts,
            view,
            side=side,
            photometric="MONOCHROME1",
            intensity_relationship="LIN",
            intensity_sign=1,
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
