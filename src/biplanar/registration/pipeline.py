"""``register``: a trained network registers the atlas to one calibrated AP + LAT pair of radiographs.

Inputs: a geometry file with exactly the views ``AP`` and ``LAT`` (a ``carm`` without isocentre is
centred on the atlas volume), the two radiographs (each of its view's ``image_shape``, which must
also be the model's), optional 2D femur masks (the network was trained on radiograph x mask), a
checkpoint (default: the bundled model), optionally another atlas folder on the model's atlas grid,
optionally the true femur labels (on the atlas grid) to score the result.

With ``estimate_pose`` the views' calibration is corrected before the network runs
(:func:`correct_calibration`): for each view alone, a rotation of the atlas about that view's
isocentre that best matches the radiograph, the model of an erroneous C-arm angle. On a
radiograph of the atlas box alone it is the whole atlas, 3 DoF
(:func:`biplanar.pose.estimate.estimate_view_rotations`). On a radiograph of the whole patient it
is the hip bones of both sides, LAO/RAO only, applied only when the match clearly improves
(:mod:`biplanar.pose.hip_reference`). The network then sees the corrected views.

With ``refine = N > 0`` the network's transform is refined by ``N`` Adam steps of test-time
intensity registration (:mod:`biplanar.optimisation.intensity_registration`) before anything is
written. ``refine=None`` (the default) chooses (:func:`auto_refine_iterations`):
:data:`FLAGGED_REFINE_ITERATIONS` when the network's result is flagged by the quality check
(:func:`~biplanar.registration.outputs.quality_report`: its silhouettes or projections do not fit
the inputs; on a femur rendered alone in air the refinement's silhouette term takes Dice from about
0.85 to 0.93, docs/results.md "Silhouette term in the refinement") or when its silhouette fits
either mask less closely than :data:`REFINE_BELOW_SILHOUETTE_DICE` (femurs of sizes and girths at the
shape model's edges, docs/results.md "Refining loose silhouettes; the tissue fit"); else
:data:`AUTO_REFINE_ITERATIONS` when either view's beam is more than :data:`OBLIQUE_VIEW_DEG` from
its nominal direction (AP: world ``y``; LAT: world ``x``), where the network alone loses Dice and
the refinement wins most of it back (docs/results.md, "View angles inside and outside the trained
ranges"); else none.

Without ``model`` the bundled ``lite`` network runs, or the bundled ``lite_alone`` when the
radiographs show a femur alone in air (:mod:`biplanar.registration.bone_in_air`; the masks, given or
segmented, are read first).

Outputs: :mod:`biplanar.registration.outputs`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from biplanar.config import ExperimentConfig
from biplanar.data.atlas import warped_atlas_labels
from biplanar.devices import default_device, synchronise
from biplanar.errors import InputError, require_choice, require_positive
from biplanar.evaluation.deformation import folding_statistics
from biplanar.geometry.presets import PAPER_SOURCE_DETECTOR_MM, PAPER_SOURCE_ISOCENTER_MM, VIEW_NAMES
from biplanar.geometry.projection import ProjectionView, beam_obliquity_deg, view_angles_deg
from biplanar.geometry.transforms import rigid_params
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.io.atomic import atomic_folder, require_empty_out_dir, require_output_folder
from biplanar.io.geometry_file import write_geometry
from biplanar.io.json_files import write_json
from biplanar.io.mesh import MESH_FORMATS
from biplanar.models.network import AtlasRegistrationNet
from biplanar.models.segmentation import segment
from biplanar.optimisation.intensity_registration import refine_output
from biplanar.pose.baselines import METHODS, OptimisationConfig
from biplanar.pose.estimate import compose_view, estimate_view_rotations
from biplanar.pose.hip_reference import (
    ATLAS_BOX_GC,
    HipReference,
    atlas_box_gc,
    estimate_carm_rotation,
    hip_reference,
)
from biplanar.progress import print_stage
from biplanar.registration.bone_in_air import BODY_MODEL, choose_bundled_model
from biplanar.registration.inputs import (
    ModelDetector,
    load_model_atlas,
    read_inputs,
    read_truth,
)
from biplanar.registration.outputs import (
    CORRECTED_GEOMETRY,
    output_files,
    patient_hip_report,
    projection_checks,
    quality_report,
    truth_metrics,
    write_landmarks,
    write_projections,
    write_report_page,
    write_volumes,
)
from biplanar.training.checkpoints import bundled_model_path, load_model
from biplanar.training.segmentation_model import BUNDLED_IMAGE_SHAPE, load_segmentation_model

if TYPE_CHECKING:  # the type of annotations only: importing monai costs seconds
    from monai.networks.nets import UNet


OBLIQUE_VIEW_DEG = 22.5  # between the pairs measured: 20 deg off gained nothing, 30 deg off up to 0.035 Dice
AUTO_REFINE_ITERATIONS = 25  # as much Dice on the oblique pairs as 50 (docs/results.md), in half the time
FLAGGED_REFINE_ITERATIONS = 50  # the silhouette weight's validation (intensity_registration.SILHOUETTE_WEIGHT)
# Below this lowest per-view silhouette Dice of the network's result (above the quality flag's 0.965)
# `register` refines too: chosen on validation subjects at the shape model's edges (dataset seed 2026),
# `python examples/shape_extremes.py --n 8 --seed 2026 --refine 0` against `--refine 50` (docs/results.md).
REFINE_BELOW_SILHOUETTE_DICE = 0.985
NOMINAL_BEAMS = {"AP": np.array([0.0, 1.0, 0.0]), "LAT": np.array([1.0, 0.0, 0.0])}  # world axes (RAS+)


def auto_refine_iterations(views: dict[str, ProjectionView], network_quality: dict[str, Any]) -> dict[str, Any]:
    """What ``refine=None`` runs (module doc), as ``report.json``'s ``inputs.refine``: the iterations,
    the rule, each view's beam obliquity (deg) from its nominal direction
    (:func:`~biplanar.geometry.projection.beam_obliquity_deg`), whether the network's result was
    flagged and its lowest silhouette Dice (``network_quality``: the network's
    :func:`~biplanar.registration.outputs.quality_report`)."""
    obliquity = {name: beam_obliquity_deg(views[name], axis) for name, axis in NOMINAL_BEAMS.items()}
    oblique = max(obliquity.values()) > OBLIQUE_VIEW_DEG
    flagged = bool(network_quality["flag"])
    loose = network_quality["lowest_silhouette_dice"] < REFINE_BELOW_SILHOUETTE_DICE
    iterations = FLAGGED_REFINE_ITERATIONS if flagged or loose else AUTO_REFINE_ITERATIONS if oblique else 0
    return {
        "iterations": iterations,
        "rule": f"auto: {FLAGGED_REFINE_ITERATIONS} iterations if the network's result is flagged by the quality "
        f"check or its lowest silhouette Dice is below {REFINE_BELOW_SILHOUETTE_DICE:g}, else "
        f"{AUTO_REFINE_ITERATIONS} if a beam is more than {OBLIQUE_VIEW_DEG:g} deg from AP (world y) "
        "or lateral (world x), else 0",
        "beam_obliquity_deg": obliquity,
        "network_flagged": flagged,
        "network_lowest_silhouette_dice": float(network_quality["lowest_silhouette_dice"]),
    }


def _refine_reason(choice: dict[str, Any]) -> str:
    """Why ``refine=None`` refines (:func:`auto_refine_iterations`'s record), for the stage line."""
    if choice.get("network_flagged"):
        return "; the network's result was flagged"
    if choice.get("network_lowest_silhouette_dice", 1.0) < REFINE_BELOW_SILHOUETTE_DICE:
        return f"; the network's silhouette Dice is {choice['network_lowest_silhouette_dice']:.3f}"
    if "beam_obliquity_deg" in choice:
        return f"; a beam {max(choice['beam_obliquity_deg'].values()):.0f} deg from AP / lateral"
    return ""


@dataclass(frozen=True)
class RegistrationReport:
    """What :func:`register` did.

    Attributes:
        out_dir: the folder holding the outputs (:func:`~biplanar.registration.outputs.output_files`).
        report: the contents of ``report.json``.
        mesh_format: the meshes' format (``surface.<mesh_format>``).
    """

    out_dir: Path
    report: dict[str, Any]
    mesh_format: str = "stl"

    @property
    def files(self) -> dict[str, Path]:
        """Output name -> path."""
        return {name: self.out_dir / name for name in output_files(self.mesh_format)}


def correct_calibration(
    atlas_mu: Tensor,
    grid: VolumeGrid,
    radiographs: dict[str, np.ndarray],
    views: dict[str, ProjectionView],
    method: str = "opt-gc",
    config: OptimisationConfig | None = None,
    progress: bool = False,
    reference: HipReference | None = None,
) -> tuple[dict[str, ProjectionView], dict[str, Any]]:
    """Correct each view's calibration by a rigid registration of an atlas reference to its radiograph.

    For each view alone, a rotation ``A_v`` of the atlas about the view's isocentre; the corrected
    view is ``P_v A_v``. It models an erroneous C-arm angle: rotating the C-arm by ``Q`` about the
    isocentre projects as rotating the atlas by ``Q^-1``. What the atlas is compared with depends
    on what the radiograph shows (:func:`~biplanar.pose.hip_reference.atlas_box_gc`, the gradient
    correlation of the radiograph with the DRR of the atlas box, threshold
    :data:`~biplanar.pose.hip_reference.ATLAS_BOX_GC`):

    - **the atlas box** (at or above the threshold, or ``reference`` is ``None``): the radiograph is a
      DRR of a CT the size of the atlas grid, such as the simulator's ``grid`` scene. The whole
      atlas is rotated, 3 DoF, translations fixed
      (:func:`biplanar.pose.estimate.estimate_view_rotations`), over the whole radiograph. The box's
      edges fix the view. Measured on 10 held-out ``grid`` cases with the LAT view stated at 95
      degrees (true 90): Opt-GC put it back to 89.6-91.3 degrees (docs/pose.md). On 4 ``grid`` cases
      of seed 6061 with the true geometry it moved the views by 0.1-1.8 degrees, and with the LAT
      view stated 5 degrees off it left the LAT view 0.1-1.0 degrees from the true one.
    - **the patient** (below the threshold): a radiograph of the whole patient (body, thighs, both
      hips; the simulator's ``body`` scene, a clinic's image). There the whole-atlas search moved
      correct views by 17-42 degrees, and a femur-only search by 9-23 degrees (the femur's own pose
      differs from the atlas's by up to 10 degrees per axis). Instead ``reference``, the atlas's
      pelvis and femoral head with their mirror image (:func:`~biplanar.pose.hip_reference.hip_reference`),
      is compared inside its own projection dilated by 5 mm. After a search over the translations
      across the beam, one rotation about world z (the LAO/RAO angle) is searched. It is applied only
      if it raises the similarity by at least
      :data:`~biplanar.pose.hip_reference.MIN_GAIN` (:func:`~biplanar.pose.hip_reference.estimate_carm_rotation`).
      Measured with the bundled model on 8 held-out ``body`` cases (seed 6060,
      ``examples/estimate_pose_study.py``, docs/pose.md): with the true geometry no view was moved
      (the whole-atlas search moved them by 17-42 degrees, Dice 0.934 -> 0.782). With the LAT view
      stated 5 degrees off, the LAT view was left 0.0-2.1 degrees from the true one (mean 1.0) and
      the Dice went from 0.925 to 0.933 (0.934 with the true geometry). On 8 fresh cases (seed 6064)
      one correct LAT view of 16 views was moved by 3.1 degrees.

    ``register`` passes the radiographs as given (``--ap`` / ``--lat``), not multiplied by the
    masks: on a masked radiograph the atlas's DRR holds tissue that the radiograph lacks (in the old
    measurements the search then ran away, LAT 117-130 degrees).

    Args:
        atlas_mu: ``(1, 1, I, J, K)`` atlas attenuation, 1/mm, on ``grid`` (``hu_to_mu`` of the atlas CT).
        grid: the atlas grid (:class:`~biplanar.geometry.volume_grid.VolumeGrid`).
        radiographs: ``{"AP": image, "LAT": image}``, each ``(rows, cols)`` float32 line integrals.
        views: ``{"AP": view, "LAT": view}``, the stated calibration.
        method: ``opt-gc``, ``opt-ncc`` or ``opt-ngi`` (:data:`biplanar.pose.baselines.METHODS`).
        config: the search's :class:`~biplanar.pose.baselines.OptimisationConfig` (default: its defaults).
        progress: print each search stage on stderr.
        reference: the atlas's hip reference; ``None``: every view is treated as showing the atlas box.

    Returns:
        the corrected views, and ``report.json``'s ``pose_correction``: ``method``, ``mode``
        (``per_view``), ``time_s``, and per view ``reference`` (``atlas box`` or ``hip bones``),
        ``atlas_box_gc``, ``rotation_deg`` (the applied rotation ``A_v`` as ``(rx, ry, rz)``,
        ``R = Rx Ry Rz``, degrees), ``angle_deg`` (its total angle), ``carm_angles_deg`` ``stated`` /
        ``corrected`` (LAO/RAO and cranio-caudal angles read from the matrices, degrees),
        ``similarity`` (the search's final similarity); for ``hip bones`` also ``found_deg`` (the
        rotation found about +z), ``applied``, ``gain`` and ``similarity_translations``.
    """

    require_choice("pose method", method, METHODS)
    started = time.perf_counter()
    say = lambda line: print_stage("register", progress, f"pose: {line}")  # noqa: E731
    centre = torch.as_tensor(grid.centre_world, dtype=torch.float64)
    corrected, per_view = {}, {}
    for name in VIEW_NAMES:
        view, radiograph = views[name], radiographs[name]
        box_gc = atlas_box_gc(radiograph, view, grid)
        record: dict[str, Any]
        if reference is None or box_gc >= ATLAS_BOX_GC:
            image = torch.from_numpy(radiograph).to(atlas_mu.device)
            estimate = estimate_view_rotations(atlas_mu, grid, {name: image}, {name: view}, method, config, say)[name]
            matrix = estimate.matrix
            record = {"reference": "atlas box", "similarity": estimate.similarity}
        else:
            found = estimate_carm_rotation(reference, radiograph, view, method, config, progress=say)
            matrix = found.matrix
            record = {
                "reference": "hip bones",
                "similarity": found.similarity,
                "found_deg": found.found_deg,
                "applied": found.applied,
                "gain": found.gain,
                "similarity_translations": found.similarity_translations,
            }
        corrected[name] = compose_view(view, matrix)
        rotation = matrix[:3, :3].double().cpu()
        cosine = float(((torch.trace(rotation) - 1.0) / 2.0).clamp(-1.0, 1.0))
        per_view[name] = {
            **record,
            "atlas_box_gc": box_gc,
            "rotation_deg": torch.rad2deg(rigid_params(matrix.double().cpu(), centre)[:3]).tolist(),
            "angle_deg": float(np.degrees(np.arccos(cosine))),
            "carm_angles_deg": {
                "stated": list(view_angles_deg(view)),
                "corrected": list(view_angles_deg(corrected[name])),
            },
        }
    return corrected, {"method": method, "mode": "per_view", "time_s": time.perf_counter() - started, "views": per_view}


def model_detector(network: AtlasRegistrationNet, config: ExperimentConfig) -> ModelDetector:
    """The registration network's detector and atlas (all training data used the paper's distances)."""

    def atlas_drr(view: ProjectionView) -> np.ndarray:
        return network.projectors.project(network.atlas_mu, [(view, view)])[0, 0].cpu().numpy()

    return ModelDetector(
        config.geometry.image_shape,
        config.geometry.pixel_spacing_mm * PAPER_SOURCE_ISOCENTER_MM / PAPER_SOURCE_DETECTOR_MM,
        network.grid,
        atlas_drr,
    )


def segmenter(path: str | Path | None, device: torch.device | str) -> Callable[[np.ndarray], np.ndarray]:
    """The 2D femur segmentation of a model-detector radiograph (the bundled network by default),
    loaded on its first use, so that the inputs are checked before it is read."""
    loaded: list[UNet] = []

    def segment_image(image: np.ndarray) -> np.ndarray:
        if not loaded:
            loaded.append(load_segmentation_model(path, device)[0])
        # The bundled network works at the lite detector's size: other sizes are resampled to it and back.
        return segment(loaded[0], image, working_shape=BUNDLED_IMAGE_SHAPE if path is None else None)

    return segment_image


def register(
    geometry: str | Path | None,
    ap: str | Path,
    lat: str | Path,
    out: str | Path,
    model: str | Path | None = None,
    atlas: str | Path | None = None,
    ap_mask: str | Path | None = None,
    lat_mask: str | Path | None = None,
    truth_labels: str | Path | None = None,
    refine: int | None = None,
    estimate_pose: bool = False,
    pose_method: str = "opt-gc",
    progress: bool = True,
    side: str | None = None,
    intensity: str = "auto",
    air_level: float | None = None,
    segmentation_model: str | Path | None = None,
    mesh_format: str = "stl",
    pose_config: OptimisationConfig | None = None,
    device: str | torch.device | None = None,
) -> RegistrationReport:
    """Register the atlas to two radiographs (``biplanar register``): DICOM files as they come from
    the clinic (docs/contract.md section 7), or arrays with a geometry file (module doc).

    Writes into ``out`` the outputs of ``docs/contract.md`` section 6: ``warped_atlas.nii.gz``,
    ``warped_labels.nii.gz``, ``displacement.nii.gz`` (mm), ``transform.json``, ``surface.stl`` and
    ``label_surface.stl`` (or ``.ply`` / ``.obj`` / ``.vtk``), ``overlay_AP.png``, ``overlay_LAT.png``,
    the masks used (``AP_mask.png``, ``LAT_mask.png``), ``landmarks.json``, ``landmarks.mrk.json``,
    ``report.json`` (timings, similarity, hip measurements, side and what was assumed; with
    ``truth_labels`` also Dice, Jaccard, ASSD and HD95) and ``report.html`` (all of it on one
    self-contained page, with the mesh and landmarks in 3D), all at once (nothing on an error).

    Args:
        geometry: ``geometry.json`` with exactly the views ``AP`` and ``LAT``; ``None``: the views
            from the DICOM radiographs' tags (docs/contract.md section 7).
        ap: the AP radiograph (``.dcm``, ``.npy``, ``.tif``, ``.png``), ``(rows, cols)`` of its view's
            ``image_shape``: any detector, resampled onto the model's (:mod:`biplanar.registration.inputs`).
        lat: the LAT radiograph, likewise.
        out: the output folder; must be new or empty.
        model: a checkpoint from :func:`~biplanar.api.train` (``best.pt``, or weights-only); default:
            the bundled ``lite`` model (:func:`biplanar.training.checkpoints.bundled_model_path`), or
            the bundled ``lite_alone`` when both radiographs show a bone in air
            (:mod:`biplanar.registration.bone_in_air`; ``report.json``'s ``inputs.model_choice``).
        atlas: an atlas folder (:func:`~biplanar.api.write_atlas`) on the model's atlas grid
            (default: the model's own atlas).
        ap_mask: 2D femur mask of the AP radiograph (an image file of its shape); with ``lat_mask``
            (both or neither) the network sees radiograph x (mask > 0). Without them the bundled 2D
            segmentation network (or ``segmentation_model``) makes them.
        lat_mask: 2D femur mask of the LAT radiograph.
        truth_labels: true femur labels (NIfTI, 1 = femur) on the atlas grid: adds the overlap and
            distance scores.
        refine: test-time optimisation iterations after the network (0: the network's output as it
            is; ``None``: :data:`FLAGGED_REFINE_ITERATIONS` when the network's result is flagged
            or its silhouette Dice below :data:`REFINE_BELOW_SILHOUETTE_DICE`, else
            :data:`AUTO_REFINE_ITERATIONS` for oblique views, else 0, module doc).
        estimate_pose: before the network, correct each view's angle by a rigid registration of the
            atlas to its radiograph (:func:`correct_calibration`); also writes
            ``geometry_corrected.json`` and the report's ``pose_correction``.
        pose_method: similarity of that search: ``opt-gc``, ``opt-ncc`` or ``opt-ngi``.
        progress: print the stages on stderr.
        side: ``"left"`` or ``"right"`` (default: the DICOM laterality, else right). A left femur is
            registered mirrored (:mod:`biplanar.geometry.mirror`); every output is in the patient's world.
        intensity: ``"auto"``, ``"line-integral"`` or ``"transmission"`` (docs/contract.md section 7).
        air_level: unattenuated level of transmission images (default: estimated).
        segmentation_model: 2D segmentation checkpoint used without masks (default: the bundled one).
        mesh_format: ``stl``, ``ply``, ``obj`` or ``vtk``: the meshes' file format
            (:func:`biplanar.io.mesh.write_mesh`).
        pose_config: the correction's :class:`~biplanar.pose.baselines.OptimisationConfig`
            (default: its defaults).
        device: where to run the network (default: CUDA if available, else CPU).

    Returns:
        the output folder and the contents of ``report.json``.

    Raises:
        InputError: a missing or malformed input (the file named), a radiograph that does not fit its
            view or the model, a non-empty ``out``, no bundled model, an unknown ``mesh_format``;
            nothing is written then.
    """

    require_positive("air_level", air_level)
    require_output_folder(out)

    if refine is not None and refine < 0:
        raise InputError(f"refine: expected >= 0 iterations, got {refine}")
    require_choice("pose method", pose_method, METHODS)
    require_choice("mesh format", mesh_format, MESH_FORMATS)
    started = time.perf_counter()
    out_dir = Path(out)
    require_empty_out_dir(out_dir)
    print_stage("register", progress, "loading the model, atlas and images")
    model_path = bundled_model_path(BODY_MODEL) if model is None else model
    network, config = load_model(model_path, device or default_device())
    inputs = read_inputs(
        {"AP": Path(ap), "LAT": Path(lat)},
        {
            "AP": None if ap_mask is None else Path(ap_mask),
            "LAT": None if lat_mask is None else Path(lat_mask),
        },
        None if geometry is None else Path(geometry),
        model_detector(network, config),
        None if ap_mask is not None else segmenter(segmentation_model, network.atlas_mu.device),
        side,
        intensity,
        air_level,
    )
    views, raw = inputs.network_views(), inputs.radiographs()
    model_choice = {"model": str(model_path), "rule": "given"}
    if model is None:
        model_choice = choose_bundled_model(raw, inputs.femur_masks())
        if model_choice["model"] != BODY_MODEL:
            print_stage("register", progress, f"a bone in air: the bundled {model_choice['model']} network")
            model_path = bundled_model_path(model_choice["model"])
            network, config = load_model(model_path, network.atlas_mu.device)
    model_atlas = load_model_atlas(None if atlas is None else Path(atlas), network)
    truth = read_truth(None if truth_labels is None else Path(truth_labels), model_atlas)
    device = network.atlas_mu.device
    network_inputs = inputs.network_inputs()
    radiographs = torch.stack([torch.from_numpy(network_inputs[name]) for name in VIEW_NAMES])[None].to(device)
    times = {"load": time.perf_counter() - started}
    correction: dict[str, Any] = {}
    if estimate_pose:
        print_stage("register", progress, f"correcting the view calibration ({pose_method}, per view)")
        reference = hip_reference(
            network.atlas_mu,
            network.atlas_labels,
            network.grid,
            model_atlas.landmarks["head_centre_mm"],
            model_atlas.landmarks["head_radius_mm"],
        )
        views, correction = correct_calibration(
            network.atlas_mu, network.grid, raw, views, pose_method, pose_config, progress, reference
        )
        times["pose_correction"] = correction["time_s"]

    print_stage("register", progress, "running the network")
    masked = True  # given or segmented, the network always sees radiograph x mask
    with torch.no_grad():
        output = network.eval()(radiographs, [(views["AP"], views["LAT"])])
        synchronise(device)
        times["network"] = time.perf_counter() - started - sum(times.values())
        network_labels = warped_atlas_labels(model_atlas, output.total_displacement)
        network_checks = projection_checks(output, network, network_labels, inputs)
        refine_choice: dict[str, Any] = {"iterations": refine, "rule": "given"}
        if refine is None:
            refine_choice = auto_refine_iterations(views, quality_report(network_checks))
            refine = int(refine_choice["iterations"])
        refinement = {}
        if refine > 0:
            print_stage("register", progress, f"refining ({refine} iterations{_refine_reason(refine_choice)})")
            before = None if truth is None else truth_metrics(truth, inputs.patient_volume(network_labels), model_atlas)
            hip_before = patient_hip_report(model_atlas, output.total_displacement, inputs.mirror)
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
        print_stage("register", progress, "writing the outputs")
        written = time.perf_counter()
        with atomic_folder(out_dir, replace=False) as partial:
            warped_labels, surface = write_volumes(partial, output, network, model_atlas, inputs.mirror, mesh_format)
            write_projections(partial, output, network, warped_labels, inputs)
            # Unrefined, the result is the network's, whose checks are made already.
            checks = network_checks if refine == 0 else projection_checks(output, network, warped_labels, inputs)
            quality = quality_report(checks, network_checks if refine > 0 else None)
            hip = patient_hip_report(model_atlas, output.total_displacement, inputs.mirror)
            write_landmarks(partial, hip, inputs.side)
            report = {
                "timings_s": times,
                "projection_ncc": checks.ncc,
                "quality": quality,
                "deformation": folding_statistics(output.total_displacement, model_atlas.grid),
                **({} if truth is None else truth_metrics(truth, inputs.patient_volume(warped_labels), model_atlas)),
                "side": inputs.side,
                "hip": hip,
                **refinement,
                **({"pose_correction": correction} if estimate_pose else {}),
                "inputs": {
                    "geometry": None if geometry is None else str(geometry),
                    "AP": str(ap),
                    "LAT": str(lat),
                    "masked": masked,
                    "model": str(model_path),
                    "model_choice": model_choice,
                    "atlas": str(atlas or f"shipped {config.geometry.grid_preset}"),
                    "truth_labels": truth_labels and str(truth_labels),
                    "refine": refine_choice,
                    "assumptions": inputs.record(),
                },
                "device": str(device),
            }
            times["writing"] = time.perf_counter() - written
            times["total"] = time.perf_counter() - started
            if estimate_pose:
                write_geometry(partial / CORRECTED_GEOMETRY, views)
            write_report_page(partial, report, surface)
            write_json(partial / "report.json", report)
    if quality["flag"]:
        basis = "" if refine == 0 else " (the lower of the network's and the refined result's)"
        print(
            f"warning: registration quality{basis}: {'; '.join(quality['flag_reasons'])} (wrong side, views "
            f"swapped, geometry off, a femur the network could not fit?): check the overlays in {out_dir}",
            file=sys.stderr,
            flush=True,
        )
    print_stage("register", progress, f"done in {times['total']:.1f} s: {out_dir}")
    return RegistrationReport(out_dir, report, mesh_format)
