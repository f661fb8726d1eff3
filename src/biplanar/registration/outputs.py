"""What ``register`` writes (docs/contract.md section 6).

Everything is written into a temporary sibling folder that is renamed
to ``out_dir`` once complete, so a failure leaves nothing behind:

    warped_atlas.nii.gz   atlas HU warped by Psi (float32), atlas grid and affine
    warped_labels.nii.gz  atlas labels warped by Psi (uint8, nearest neighbour)
    displacement.nii.gz   Psi's displacement (X, Y, Z, 1, 3) float32, vector intent, world mm:
                          warped(p) = atlas(p + displacement(p))
    transform.json        T's 7 parameters (degrees, mm, scale), its 4x4 pull matrix, convention
    surface.stl           surface of the warped femur label, world mm, binary STL
    overlay_AP.png, overlay_LAT.png
                          each radiograph with the outline of the warped labels' projection
    report.json           timings_s; projection_ncc per view (DRR of the warped atlas femur vs the
                          network's inputs); hip: measurements of the atlas landmarks carried
                          through Psi and the carried landmarks (:mod:`biplanar.evaluation.hip`);
                          with truth labels dice, jaccard, assd_mm, hd95_mm; with refine > 0,
                          refine: iterations, time_s, projection_ncc_before/after and
                          objective_before/after (the refinement objective's own NCC, whole atlas
                          DRR x soft femur mask, see :mod:`biplanar.optimisation.intensity_registration`),
                          hip_before, and with truth labels metrics_before (the network's result's);
                          with estimate_pose, pose_correction (:func:`correct_calibration`)
    geometry_corrected.json
                          with estimate_pose only: the corrected AP and LAT views (projection
                          matrices), the geometry the network was given
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from biplanar.data.atlas import FEMUR_LABEL, warped_atlas_hu, warped_atlas_labels
from biplanar.data.simulate import MASK_MIN_PATH_MM
from biplanar.evaluation.metrics import segmentation_metrics
from biplanar.evaluation.overlays import write_contour_overlay
from biplanar.geometry.presets import VIEW_NAMES
from biplanar.geometry.projection import ProjectionView
from biplanar.io.atomic import require_empty_out_dir
from biplanar.io.json_files import write_json
from biplanar.io.mesh import label_surface, write_stl
from biplanar.io.volumes import write_volume
from biplanar.layers.similarity import global_ncc

OUTPUT_FILES = (
    "warped_atlas.nii.gz",
    "warped_labels.nii.gz",
    "displacement.nii.gz",
    "transform.json",
    "surface.stl",
    "overlay_AP.png",
    "overlay_LAT.png",
    "report.json",
)


CORRECTED_GEOMETRY = "geometry_corrected.json"


PARTIAL_SUFFIX = ".partial"


TRANSFORM_CONVENTION = (
    "pull: the matrix maps a point p of the registered (patient) frame to the atlas point it takes "
    "its value from, warped(p) = atlas(matrix @ p), world RAS+ mm; x' = c + s * Rx(rx) Ry(ry) Rz(rz) "
    "(x - c) + t about the centre c = centre_world_mm"
)


def transform_document(params: Tensor, matrix: Tensor, centre_world: Tensor) -> dict[str, Any]:
    """``transform.json``'s contents.

    Args:
        params: ``(7,)`` ``(rx, ry, rz)`` radians, ``(tx, ty, tz)`` mm, ``log_s``.
        matrix: ``(4, 4)`` pull matrix, world mm.
        centre_world: ``(3,)`` mm, the centre the rotation and scale act about.
    """
    params = params.double().cpu()
    return {
        "rotation_deg": torch.rad2deg(params[:3]).tolist(),
        "translation_mm": params[3:6].tolist(),
        "scale": float(torch.exp(params[6])),
        "centre_world_mm": centre_world.double().cpu().tolist(),
        "matrix": matrix.double().cpu().tolist(),
        "convention": TRANSFORM_CONVENTION,
    }


def truth_metrics(truth: np.ndarray, warped_labels: np.ndarray, atlas) -> dict[str, Any]:
    """Dice, Jaccard, ASSD (mm), HD95 (mm) of the warped femur against the true femur."""

    metrics = segmentation_metrics(warped_labels == FEMUR_LABEL, truth, tuple(float(s) for s in atlas.grid.spacing_mm))
    # JSON has no inf / nan (an empty warped or true femur): those become null.
    return {key: float(value) if np.isfinite(value) else None for key, value in metrics.items()}


def write_volumes(folder: Path, output, network, atlas) -> np.ndarray:
    """Write the warped atlas and labels, the displacement, the transform and the surface.

    Returns:
        the warped labels, ``(I, J, K)`` uint8 on the atlas grid.
    """

    grid = atlas.grid
    displacement = output.total_displacement.float()  # (1, 3, I, J, K) mm, world components
    warped_hu = warped_atlas_hu(atlas, displacement)
    warped_labels = warped_atlas_labels(atlas, displacement)
    write_volume(folder / "warped_atlas.nii.gz", warped_hu[0, 0].cpu().numpy(), grid)
    write_volume(folder / "warped_labels.nii.gz", warped_labels, grid)
    # (1, 3, I, J, K) -> (I, J, K, 1, 3): NIfTI vector layout, components (x, y, z) last.
    vectors = displacement[0].permute(1, 2, 3, 0)[:, :, :, None, :].cpu().numpy()
    write_volume(folder / "displacement.nii.gz", np.ascontiguousarray(vectors), grid, intent="vector")
    document = transform_document(output.params[0], output.affine_matrix[0], network.atlas_centre)
    write_json(folder / "transform.json", document)
    write_stl(folder / "surface.stl", label_surface(warped_labels, grid, FEMUR_LABEL))
    return warped_labels


def write_projections(
    folder: Path,
    output,
    network,
    warped_labels: np.ndarray,
    radiographs: dict[str, np.ndarray],
    inputs: dict[str, np.ndarray],
    views: dict[str, ProjectionView],
) -> dict[str, float]:
    """Write the overlays; return the projection NCC per view.

    The overlays draw, on ``radiographs``, the outline of the pixels whose ray crosses more than
    the mask rule's path length of warped femur (:data:`biplanar.data.simulate.MASK_MIN_PATH_MM`);
    the NCC compares the DRR of the warped atlas femur with ``inputs`` (the network's inputs:
    masked radiographs when masks were given).
    """

    pair = [(views["AP"], views["LAT"])]
    device = output.warped_image.device
    femur = torch.from_numpy(warped_labels == FEMUR_LABEL).float()[None, None].to(device)  # (1, 1, I, J, K)
    path_mm = network.projectors.project(femur, pair)[0].cpu().numpy()  # (2, rows, cols) mm of femur
    drrs = network.projectors.project(output.warped_image * femur, pair)[0].cpu()  # (2, rows, cols)
    ncc = {}
    for index, name in enumerate(VIEW_NAMES):
        write_contour_overlay(folder / f"overlay_{name}.png", radiographs[name], path_mm[index] > MASK_MIN_PATH_MM)
        ncc[name] = float(global_ncc(drrs[index][None, None], torch.from_numpy(inputs[name])[None, None])[0])
    return ncc


def publish(partial: Path, out_dir: Path) -> None:
    """Rename the finished ``partial`` folder to ``out_dir`` (which may exist only as an empty folder)."""
    require_empty_out_dir(out_dir)
    if out_dir.exists():
        out_dir.rmdir()
    os.rename(partial, out_dir)
