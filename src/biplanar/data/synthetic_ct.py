"""Scan-like CTs of simulated subjects: stand-ins for a clinic's hip CTs and their segmentations.

A *synthetic scan* is a subject's body scene (:func:`biplanar.data.scene.render_scene`: body
outline, soft tissue, both hemipelves and both femurs, the left side the right one mirrored about
the midsagittal plane) resampled (trilinear) onto a scanner's grid of ``spacing_mm`` voxels over the
scene's box, stored as int16 HU, with a TotalSegmentator-v2 label map of both femurs
(``femur_right`` 76, ``femur_left`` 75; each the subject's femur label, which ends at the
registration grid's faces, resampled and thresholded at one half). So a folder of them is what
``biplanar simulate --from-ct`` expects (``<id>.nii.gz`` + ``<id>_labels.nii.gz``), with known
truth: the subject's ``SubjectSpec``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from biplanar.data.from_ct import LABELS_SUFFIX, default_femur_labels
from biplanar.data.grid_presets import grid_preset
from biplanar.data.phantom import SubjectSpec
from biplanar.data.preprocess import AIR_HU, resample
from biplanar.data.scene import render_scene
from biplanar.data.simulate import SimulationConfig, case_views, subject_seed
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.io.volumes import write_volume
from biplanar.progress import progress_bar

SCAN_SPACING_MM = (0.8, 0.8, 1.0)  # a clinical hip CT's voxels


def synthetic_scan(
    seed: int, shapes: str = "ssm", spacing_mm: tuple[float, float, float] = SCAN_SPACING_MM
) -> tuple[np.ndarray, np.ndarray, VolumeGrid]:
    """The synthetic scan of subject ``seed`` (module doc).

    Args:
        seed: the subject's seed (:meth:`SubjectSpec.sample`).
        shapes: its femur, ``ssm`` or ``phantom``.
        spacing_mm: the scan's voxel size along x, y, z (axis-aligned RAS+).

    Returns:
        ``(I, J, K)`` int16 HU, ``(I, J, K)`` uint8 labels (76 right femur, 75 left), the scan grid.
    """
    lite = grid_preset("lite")
    views = case_views(seed, SimulationConfig(preset="lite"), lite)
    rendered = render_scene(SubjectSpec.sample(seed, shapes), lite, views)
    scene = rendered.scene
    right = np.zeros(scene.grid.shape, np.float32)
    right[scene.block] = rendered.subject.labels
    extent = (np.asarray(scene.grid.shape) - 1) * scene.grid.spacing_mm
    shape = np.floor(extent / np.asarray(spacing_mm)).astype(int) + 1
    centre = tuple(float(value) for value in scene.grid.centre_world)
    scan = VolumeGrid.from_spacing(
        (int(shape[0]), int(shape[1]), int(shape[2])), spacing_mm, (centre[0], centre[1], centre[2])
    )
    ct_hu = resample(rendered.ct_hu, scene.grid, scan, np.eye(4), AIR_HU)
    values = default_femur_labels()
    labels = np.zeros(scan.shape, np.uint8)
    for side, femur in (("right", right), ("left", right[::-1].copy())):  # the scene is mirror-symmetric
        labels[resample(femur, scene.grid, scan, np.eye(4)) >= 0.5] = values[side]
    return np.round(ct_hu).astype(np.int16), labels, scan


def write_synthetic_scans(
    folder: str | Path, n: int, seed: int, shapes: str = "ssm", progress: bool = True
) -> list[Path]:
    """Write ``n`` synthetic scans ``scan_<i:03d>.nii.gz`` + ``scan_<i:03d>_labels.nii.gz`` into
    ``folder``; scan ``i`` is subject ``subject_seed(seed, i)``. Existing pairs are kept (resume).

    Returns:
        the CT files.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with progress_bar(progress, elapsed=True) as bar:
        task = bar.add_task("synthetic scans", total=n)
        for index in range(n):
            ct_path = folder / f"scan_{index:03d}.nii.gz"
            labels_path = folder / f"scan_{index:03d}{LABELS_SUFFIX}.nii.gz"
            if not labels_path.is_file():
                ct_hu, labels, grid = synthetic_scan(subject_seed(seed, index), shapes)
                write_volume(ct_path, ct_hu, grid)
                write_volume(labels_path, labels, grid)  # last: a pair is complete once it exists
            written.append(ct_path)
            bar.advance(task)
    return written
