"""``register``: a trained network registers the atlas to one calibrated AP + LAT pair of radiographs.

Inputs: a geometry file with exactly the views ``AP`` and ``LAT`` (a ``carm`` without isocentre is
centred on the atlas volume), the two radiographs (each of its view's ``image_shape``, which must
also be the model's), optional 2D femur masks (the network was trained on radiograph x mask), a
checkpoint (default: the bundled model), optionally another atlas folder on the model's atlas grid,
optionally the true femur labels (on the atlas grid) to score the result.

With ``estimate_pose`` the views' calibration is corrected before the network runs
(:func:`correct_calibration`): for each view alone, a rotation of the atlas about that view's
isocentre (3 DoF, :func:`biplanar.pose.estimate.estimate_view_rotations`) that best matches the
radiograph, the model of an erroneous C-arm angle; the network then sees the corrected views.

With ``refine = N > 0`` the network's transform is refined by ``N`` Adam steps of test-time
intensity registration (:mod:`biplanar.optimisation.intensity_registration`) before anything is
written.

Outputs (``shared/CONTRACT.md`` section 6), written into a temporary sibling folder that is renamed
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
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from biplanar.errors import InputError
from biplanar.geometry.geometry_file import read_geometry, require_views, write_geometry
from biplanar.geometry.projection import ProjectionView
from biplanar.io.images import read_image
from biplanar.io.json_files import write_json
from biplanar.io.volumes import read_volume, write_volume

if TYPE_CHECKING:
    from biplanar.geometry.volume_grid import VolumeGrid
    from biplanar.pose.baselines import OptimisationConfig

VIEW_NAMES = ("AP", "LAT")
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
FEMUR_LABEL = 1
PARTIAL_SUFFIX = ".partial"
TRANSFORM_CONVENTION = (
    "pull: the matrix maps a point p of the registered (patient) frame to the atlas point it takes "
    "its value from, warped(p) = atlas(matrix @ p), world RAS+ mm; x' = c + s * Rx(rx) Ry(ry) Rz(rz) "
    "(x - c) + t about the centre c = centre_world_mm"
)


@dataclass(frozen=True)
class RegistrationReport:
    """What :func:`register` did.

    Attributes:
        out_dir: the folder holding :data:`OUTPUT_FILES`.
        report: the contents of ``report.json``.
    """

    out_dir: Path
    report: dict[str, Any]

    @property
    def files(self) -> dict[str, Path]:
        """Output name -> path."""
        return {name: self.out_dir / name for name in OUTPUT_FILES}


def _stage(progress: bool, message: str) -> None:
    if progress:
        print(f"register: {message}", file=sys.stderr, flush=True)


def require_empty_out_dir(out_dir: Path) -> None:
    """Refuse an output folder that is a file or a non-empty folder (results are never overwritten).

    Args:
        out_dir: the folder a command will create (or fill, when it exists and is empty).

    Raises:
        InputError: ``out_dir`` is a file or a folder with something in it.
    """
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"{out_dir}: already exists and is not an empty folder (will not overwrite)")


def _read_views(
    geometry_path: Path, default_isocenter_mm: np.ndarray, model_image_shape: tuple[int, int]
) -> dict[str, ProjectionView]:
    """The AP and LAT views of the geometry file, checked against the model's detector shape."""
    views = read_geometry(geometry_path, default_isocenter_mm)
    require_views(views, list(VIEW_NAMES), str(geometry_path))
    extra = sorted(set(views) - set(VIEW_NAMES))
    if extra:
        raise InputError(f"{geometry_path}: views: register takes exactly AP and LAT, got also {', '.join(extra)}")
    for name in VIEW_NAMES:
        if views[name].image_shape != tuple(model_image_shape):
            raise InputError(
                f"{geometry_path}: views.{name}.image_shape {list(views[name].image_shape)} "
                f"differs from the model's {list(model_image_shape)}"
            )
    return views


def _read_shaped(path: Path, shape: tuple[int, int], view: str) -> np.ndarray:
    image = read_image(path)
    if image.shape != shape:
        raise InputError(
            f"{path}: image shape {list(image.shape)} differs from the geometry's "
            f"views.{view}.image_shape {list(shape)}"
        )
    return image


def _read_radiographs(
    image_paths: dict[str, Path], mask_paths: dict[str, Path | None], views: dict[str, ProjectionView]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The radiographs and the network's inputs (radiograph x (mask > 0), or the radiograph without
    masks), each view name -> ``(rows, cols)`` float32."""
    given = [name for name, path in mask_paths.items() if path is not None]
    if len(given) == 1:
        raise InputError(f"{mask_paths[given[0]]}: a mask for {given[0]} only; give both AP and LAT masks or none")
    images = {name: _read_shaped(path, views[name].image_shape, name) for name, path in image_paths.items()}
    if not given:
        print(
            "warning: no AP/LAT femur masks given: the radiographs are used unmasked "
            "(the network was trained on masked radiographs)",
            file=sys.stderr,
            flush=True,
        )
        return images, images
    return images, {
        name: images[name] * (_read_shaped(mask_paths[name], views[name].image_shape, name) > 0) for name in VIEW_NAMES
    }


def _load_atlas(atlas_dir: Path | None, network):
    """The atlas to register: the model's own, or ``atlas_dir`` on the same grid (then the network's
    atlas buffers are replaced by it)."""
    from biplanar.data.atlas import load_atlas
    from biplanar.physics.attenuation import hu_to_mu

    atlas = load_atlas(network.config.geometry.grid_preset, atlas_dir)
    grid = network.grid
    if atlas.grid.shape != grid.shape or not np.allclose(atlas.grid.affine, grid.affine, atol=1e-4):
        raise InputError(
            f"{atlas_dir}: atlas grid {atlas.grid.shape} differs from the model's atlas grid "
            f"{grid.shape} (or its affine)"
        )
    if atlas_dir is not None:
        device = network.atlas_mu.device
        network.atlas_mu.copy_(hu_to_mu(torch.from_numpy(atlas.ct_hu).float())[None, None].to(device))
        network.atlas_labels.copy_(torch.from_numpy(atlas.labels > 0).float()[None, None].to(device))
    return atlas


def correct_calibration(
    atlas_mu: Tensor,
    grid: VolumeGrid,
    radiographs: dict[str, np.ndarray],
    views: dict[str, ProjectionView],
    method: str = "opt-gc",
    config: OptimisationConfig | None = None,
    progress: bool = False,
) -> tuple[dict[str, ProjectionView], dict[str, Any]]:
    """Correct each view's calibration by a rigid registration of the atlas to its radiograph.

    For each view alone, the rotation ``A_v`` of the atlas about the view's isocentre (3 DoF,
    translations fixed) that best matches the radiograph
    (:func:`biplanar.pose.estimate.estimate_view_rotations`); the corrected view is ``P_v A_v``.
    It models an erroneous C-arm angle: rotating the C-arm by ``Q`` about the isocentre projects
    as rotating the atlas by ``Q^-1``. It also absorbs what the atlas and the patient differ by
    in rotation as seen from that view.

    ``register`` passes the radiographs as given (``--ap`` / ``--lat``), not multiplied by the
    masks. Measured on ``data/lite_heldout`` cases 0-2 with the LAT view stated at 95 deg (true 90)
    and the default search: on the unmasked radiographs Opt-GC put the LAT view back to 89.9-90.8
    deg and left AP within 0.7 deg of 0; on the masked radiographs it ran away (LAT 117-130 deg,
    AP 6-11 deg) and the network's Dice dropped by 0.001-0.013: the atlas DRR holds the soft
    tissue that a masked radiograph lacks.

    Args:
        atlas_mu: ``(1, 1, I, J, K)`` atlas attenuation, 1/mm, on ``grid`` (``hu_to_mu`` of the atlas CT).
        grid: the atlas grid (:class:`~biplanar.geometry.volume_grid.VolumeGrid`).
        radiographs: ``{"AP": image, "LAT": image}``, each ``(rows, cols)`` float32 line integrals.
        views: ``{"AP": view, "LAT": view}``, the stated calibration.
        method: ``opt-gc``, ``opt-ncc`` or ``opt-ngi`` (:data:`biplanar.pose.baselines.METHODS`).
        config: the search's :class:`~biplanar.pose.baselines.OptimisationConfig` (default: its defaults).
        progress: print each search stage on stderr.

    Returns:
        the corrected views, and ``report.json``'s ``pose_correction``: ``method``, ``mode``
        (``per_view``), ``time_s``, and per view ``rotation_deg`` (the atlas rotation ``A_v`` as
        ``(rx, ry, rz)``, ``R = Rx Ry Rz``, degrees), ``angle_deg`` (its total angle),
        ``carm_angles_deg`` ``stated`` / ``corrected`` (LAO/RAO and cranio-caudal angles read from
        the matrices, degrees), ``similarity`` (the search's final similarity).
    """
    from biplanar.evaluation.evaluate import view_angles_deg
    from biplanar.pose.baselines import METHODS
    from biplanar.pose.estimate import compose_view, estimate_view_rotations

    if method not in METHODS:
        raise InputError(f"pose method: expected one of {', '.join(METHODS)}, got {method!r}")
    started = time.perf_counter()
    images = {name: torch.from_numpy(radiographs[name]).to(atlas_mu.device) for name in VIEW_NAMES}
    estimates = estimate_view_rotations(
        atlas_mu,
        grid,
        images,
        {name: views[name] for name in VIEW_NAMES},
        method,
        config,
        progress=(lambda line: _stage(progress, f"pose: {line}")),
    )
    corrected = {name: compose_view(views[name], estimates[name].matrix) for name in VIEW_NAMES}
    per_view = {}
    for name, estimate in estimates.items():
        rotation = estimate.matrix[:3, :3].double().cpu()
        cosine = float(((torch.trace(rotation) - 1.0) / 2.0).clamp(-1.0, 1.0))
        per_view[name] = {
            "rotation_deg": torch.rad2deg(estimate.params[:3].double()).tolist(),
            "angle_deg": float(np.degrees(np.arccos(cosine))),
            "carm_angles_deg": {
                "stated": list(view_angles_deg(views[name])),
                "corrected": list(view_angles_deg(corrected[name])),
            },
            "similarity": estimate.similarity,
        }
    return corrected, {"method": method, "mode": "per_view", "time_s": time.perf_counter() - started, "views": per_view}


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


def _read_truth(truth_path: Path | None, atlas) -> np.ndarray | None:
    """The true femur ``(I, J, K)`` bool on the atlas grid, or ``None`` without ``truth_path``."""
    if truth_path is None:
        return None
    truth, grid = read_volume(truth_path)
    if grid.shape != atlas.grid.shape or not np.allclose(grid.affine, atlas.grid.affine, atol=1e-4):
        raise InputError(
            f"{truth_path}: grid {grid.shape} differs from the atlas grid {atlas.grid.shape} (or its affine)"
        )
    return np.round(truth) == FEMUR_LABEL


def _truth_metrics(truth: np.ndarray, warped_labels: np.ndarray, atlas) -> dict[str, Any]:
    """Dice, Jaccard, ASSD (mm), HD95 (mm) of the warped femur against the true femur."""
    from biplanar.evaluation.metrics import segmentation_metrics

    metrics = segmentation_metrics(warped_labels == FEMUR_LABEL, truth, tuple(float(s) for s in atlas.grid.spacing_mm))
    # JSON has no inf / nan (an empty warped or true femur): those become null.
    return {key: float(value) if np.isfinite(value) else None for key, value in metrics.items()}


def warped_atlas_labels(atlas, displacement: Tensor) -> np.ndarray:
    """The atlas label map warped by a displacement (nearest neighbour), as ``warped_labels.nii.gz``.

    Args:
        atlas: an :class:`~biplanar.data.atlas.Atlas` (``labels`` ``(I, J, K)``, ``grid``).
        displacement: ``(1, 3, I, J, K)`` mm, world components, on the atlas grid (pull:
            warped(p) = labels(p + displacement(p))).

    Returns:
        ``(I, J, K)`` uint8 labels on the atlas grid.
    """
    from biplanar.layers.warp import warp_labels

    atlas_labels = torch.from_numpy(atlas.labels.astype(np.int64))[None, None].to(displacement.device)
    return warp_labels(atlas_labels, displacement, atlas.grid, "nearest")[0, 0].cpu().numpy().astype(np.uint8)


def refine_output(
    network,
    config,
    output,
    radiographs: Tensor,
    views: dict[str, ProjectionView],
    masked: bool,
    iterations: int,
    progress: bool,
):
    """Refine the network's output by test-time intensity registration
    (:func:`biplanar.optimisation.refine_registration`).

    Args:
        network: the :class:`~biplanar.models.network.AtlasRegistrationNet` that made ``output``.
        config: its :class:`~biplanar.config.ExperimentConfig` (smoothness weight, integration steps).
        output: the network's :class:`~biplanar.models.network.RegistrationOutput` (batch of 1).
        radiographs: ``(1, 2, rows, cols)`` the network's inputs, AP then LAT, on its device.
        views: ``{"AP": view, "LAT": view}``, the views the network was given.
        masked: whether ``radiographs`` are masked (the objective compares the femur DRR only then).
        iterations: Adam steps.
        progress: show a progress bar.

    Returns:
        the refined output (the fields :func:`_write_volumes` and :func:`_write_projections` read:
        params, matrices, velocity, displacements, warped images and labels) and the optimisation
        record (:class:`~biplanar.optimisation.RefinementResult`).
    """
    from biplanar.layers.warp import affine_displacement
    from biplanar.optimisation import ProjectionObjective, RefineSettings, refine_registration

    objective = ProjectionObjective(
        network.atlas_mu,
        network.atlas_labels,
        network.grid,
        (views["AP"], views["LAT"]),
        radiographs,
        centre_world=network.atlas_centre,
        smoothness_weight=config.loss.smoothness_weight,
        integration_steps=config.local.integration_steps,
        projectors=network.projectors,
        masked=masked,
    )
    with torch.enable_grad():
        result = refine_registration(
            objective, output.params, output.velocity, RefineSettings(iterations=iterations), progress=progress
        )
    affine_field = affine_displacement(result.matrix, network.grid)
    refined = replace(
        output,
        params=result.params,
        affine_matrix=result.matrix,
        velocity=result.velocity,
        local_displacement=result.local_displacement,
        total_displacement=result.total_displacement,
        affine_image=network.transformer(network.atlas_mu, affine_field),
        warped_image=network.transformer(network.atlas_mu, result.total_displacement),
        affine_labels=network.transformer(network.atlas_labels, affine_field),
        warped_labels=network.transformer(network.atlas_labels, result.total_displacement),
    )
    return refined, result


def hip_report(atlas, displacement: Tensor) -> dict[str, Any]:
    """Hip measurements of the atlas landmarks carried through a displacement, as ``report.json``'s ``hip``.

    Args:
        atlas: an :class:`~biplanar.data.atlas.Atlas` (``landmarks``, ``grid``).
        displacement: ``(1, 3, I, J, K)`` mm, world components, on the atlas grid (pull).

    Returns:
        the measurements of :func:`biplanar.evaluation.hip.hip_measurements` and ``"landmarks"``:
        the carried landmarks (world mm).
    """
    from biplanar.evaluation.hip import carry_landmarks, hip_measurements, with_condylar_axis

    carried = carry_landmarks(with_condylar_axis(atlas.landmarks), displacement, atlas.grid)
    return {**hip_measurements(carried), "landmarks": carried}


def warped_atlas_hu(atlas, displacement: Tensor) -> Tensor:
    """The atlas CT warped by a displacement, as ``warped_atlas.nii.gz``.

    Outside the atlas box the warp takes the nearest border HU (surrounding tissue), not 0 HU.

    Args:
        atlas: an :class:`~biplanar.data.atlas.Atlas` (``ct_hu`` ``(I, J, K)``, ``grid``).
        displacement: ``(1, 3, I, J, K)`` mm, world components, on the atlas grid (pull:
            warped(p) = atlas(p + displacement(p))).

    Returns:
        ``(1, 1, I, J, K)`` float32 HU on the atlas grid, on ``displacement``'s device.
    """
    from biplanar.layers.warp import SpatialTransformer

    displacement = displacement.float()
    atlas_hu = torch.from_numpy(atlas.ct_hu).float()[None, None].to(displacement.device)  # (1, 1, I, J, K)
    return SpatialTransformer(atlas.grid, padding_mode="border").to(displacement.device)(atlas_hu, displacement)


def _write_volumes(folder: Path, output, network, atlas) -> np.ndarray:
    """Write the warped atlas and labels, the displacement, the transform and the surface.

    Returns:
        the warped labels, ``(I, J, K)`` uint8 on the atlas grid.
    """
    from biplanar.io.mesh import label_surface, write_stl

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


def _write_projections(
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
    from biplanar.data.simulate import MASK_MIN_PATH_MM
    from biplanar.evaluation.overlays import write_contour_overlay
    from biplanar.training.losses import global_ncc

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


def synchronise(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall-clock reading covers it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def register(
    geometry_path: str | Path,
    ap_path: str | Path,
    lat_path: str | Path,
    out_dir: str | Path,
    model_path: str | Path | None = None,
    atlas_dir: str | Path | None = None,
    ap_mask_path: str | Path | None = None,
    lat_mask_path: str | Path | None = None,
    truth_labels_path: str | Path | None = None,
    refine: int = 0,
    estimate_pose: bool = False,
    pose_method: str = "opt-gc",
    pose_config: OptimisationConfig | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> RegistrationReport:
    """Register the atlas to an AP + LAT pair of radiographs and write the outputs (module doc).

    Args:
        geometry_path: ``geometry.json`` with exactly the views ``AP`` and ``LAT``.
        ap_path, lat_path: the radiographs (``.npy``, ``.tif``, ``.png``, ``.dcm``), ``(rows, cols)``
            of their view's ``image_shape`` (and the model's).
        out_dir: output folder; must not exist or be empty.
        model_path: a checkpoint (``best.pt``, or weights-only) of a trained network; default: the
            bundled model (:func:`biplanar.training.checkpoints.bundled_model_path`).
        atlas_dir: another atlas folder on the model's atlas grid (default: the model's own atlas).
        ap_mask_path, lat_mask_path: 2D femur masks (both or neither); the network sees
            radiograph x (mask > 0). Without them the radiographs are used as they are (a warning).
        truth_labels_path: true label map (1 = femur) on the atlas grid, to score the result.
        refine: test-time refinement iterations (0: the network's output as it is).
        estimate_pose: correct each view's calibration before the network (:func:`correct_calibration`
            on the radiographs as given); writes ``geometry_corrected.json`` and ``pose_correction``.
        pose_method: the correction's similarity: ``opt-gc``, ``opt-ncc`` or ``opt-ngi``.
        pose_config: the correction's :class:`~biplanar.pose.baselines.OptimisationConfig`
            (default: its defaults).
        device: where to run the network (default: CUDA if available, else CPU).
        progress: print the stages on stderr.

    Returns:
        the output folder and the contents of ``report.json``.

    Raises:
        InputError: a bad input file (named in the message) or a non-empty ``out_dir``; nothing is
            written then.
    """
    from biplanar.training.checkpoints import bundled_model_path, load_model

    if refine < 0:
        raise InputError(f"refine: expected >= 0 iterations, got {refine}")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    require_empty_out_dir(out_dir)
    _stage(progress, "loading the model, atlas and images")
    model_path = bundled_model_path() if model_path is None else model_path
    network, config = load_model(model_path, device or default_device())
    atlas = _load_atlas(None if atlas_dir is None else Path(atlas_dir), network)
    views = _read_views(Path(geometry_path), atlas.grid.centre_world, config.geometry.image_shape)
    raw, inputs = _read_radiographs(
        {"AP": Path(ap_path), "LAT": Path(lat_path)},
        {"AP": ap_mask_path and Path(ap_mask_path), "LAT": lat_mask_path and Path(lat_mask_path)},
        views,
    )
    truth = _read_truth(None if truth_labels_path is None else Path(truth_labels_path), atlas)
    device = network.atlas_mu.device
    radiographs = torch.stack([torch.from_numpy(inputs[name]) for name in VIEW_NAMES])[None].to(device)
    times = {"load": time.perf_counter() - started}
    correction = {}
    if estimate_pose:
        _stage(progress, f"correcting the view calibration ({pose_method}, per view)")
        views, correction = correct_calibration(
            network.atlas_mu, network.grid, raw, views, pose_method, pose_config, progress
        )
        times["pose_correction"] = correction["time_s"]

    _stage(progress, "running the network")
    masked = ap_mask_path is not None
    with torch.no_grad():
        output = network.eval()(radiographs, [(views["AP"], views["LAT"])])
        synchronise(device)
        times["network"] = time.perf_counter() - started - sum(times.values())
        refinement = {}
        if refine > 0:
            _stage(progress, f"refining ({refine} iterations)")
            before = (
                None
                if truth is None
                else _truth_metrics(truth, warped_atlas_labels(atlas, output.total_displacement), atlas)
            )
            hip_before = hip_report(atlas, output.total_displacement)
            hip_before.pop("landmarks")
            output, record = refine_output(network, config, output, radiographs, views, masked, refine, progress)
            synchronise(device)
            times["refine"] = record.time_s
            refinement = {
                "refine": {
                    "iterations": refine,
                    "time_s": record.time_s,
                    "projection_ncc_before": record.ncc_before,
                    "projection_ncc_after": record.ncc_after,
                    "objective_before": record.loss_before,
                    "objective_after": record.loss_after,
                    "hip_before": hip_before,
                    **({} if before is None else {"metrics_before": before}),
                }
            }
        _stage(progress, "writing the outputs")
        written = time.perf_counter()
        partial = out_dir.parent / f".{out_dir.name}.{os.getpid()}{PARTIAL_SUFFIX}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            warped_labels = _write_volumes(partial, output, network, atlas)
            ncc = _write_projections(partial, output, network, warped_labels, raw, inputs, views)
            report = {
                "timings_s": times,
                "projection_ncc": ncc,
                **({} if truth is None else _truth_metrics(truth, warped_labels, atlas)),
                "hip": hip_report(atlas, output.total_displacement),
                **refinement,
                **({"pose_correction": correction} if estimate_pose else {}),
                "inputs": {
                    "geometry": str(geometry_path),
                    "AP": str(ap_path),
                    "LAT": str(lat_path),
                    "masked": masked,
                    "model": str(model_path),
                    "atlas": str(atlas_dir or f"shipped {config.geometry.grid_preset}"),
                    "truth_labels": truth_labels_path and str(truth_labels_path),
                },
                "device": str(device),
            }
            times["writing"] = time.perf_counter() - written
            times["total"] = time.perf_counter() - started
            if estimate_pose:
                write_geometry(partial / CORRECTED_GEOMETRY, views)
            write_json(partial / "report.json", report)
            _publish(partial, out_dir)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    _stage(progress, f"done in {times['total']:.1f} s: {out_dir}")
    return RegistrationReport(out_dir, report)


def _publish(partial: Path, out_dir: Path) -> None:
    """Rename the finished ``partial`` folder to ``out_dir`` (which may exist only as an empty folder)."""
    require_empty_out_dir(out_dir)
    if out_dir.exists():
        out_dir.rmdir()
    os.rename(partial, out_dir)
