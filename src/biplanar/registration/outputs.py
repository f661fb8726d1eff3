"""What ``register`` writes (docs/contract.md section 6).

Everything is written into a temporary sibling folder that is renamed
to ``out_dir`` once complete, so a failure leaves nothing behind:

    warped_atlas.nii.gz   atlas HU warped by Psi (float32), atlas grid and affine
    warped_labels.nii.gz  atlas labels warped by Psi (uint8, nearest neighbour)
    displacement.nii.gz   Psi's displacement (X, Y, Z, 1, 3) float32, vector intent, world mm:
                          warped(p) = atlas(p + displacement(p))
    transform.json        T's 7 parameters (degrees, mm, scale), its 4x4 pull matrix, convention
    surface.stl           the atlas's smooth femur mesh carried through the registration, world mm
                          (:func:`carried_atlas_surface`); with ``mesh_format`` ply / obj / vtk,
                          ``surface.<format>`` (:func:`biplanar.io.mesh.write_mesh`)
    label_surface.stl     marching cubes of the warped femur label, world mm (likewise ``.<format>``)
    overlay_AP.png, overlay_LAT.png
                          each radiograph with the outline of the warped labels' projection
    report.json           timings_s; projection_ncc per view (DRR of the warped atlas femur vs the
                          network's inputs); quality (:func:`quality_report`); hip: measurements
                          of the atlas landmarks carried through Psi and the carried landmarks
                          (:mod:`biplanar.evaluation.hip`);
                          with truth labels dice, jaccard, assd_mm, hd95_mm; with refine > 0,
                          refine: iterations, time_s, projection_ncc_before/after and
                          objective_before/after (the refinement objective's own NCC, whole atlas
                          DRR x soft femur mask, see :mod:`biplanar.optimisation.intensity_registration`),
                          hip_before, and with truth labels metrics_before (the network's result's);
                          with estimate_pose, pose_correction (:func:`correct_calibration`)
    report.html           one self-contained page to open in a browser: the network that ran, the
                          overlays, the hip measurements, the quality, the timings and the mesh with
                          its landmarks in 3D (:mod:`biplanar.io.report_html`, :func:`write_report_page`)
    geometry_corrected.json
                          with estimate_pose only: the corrected AP and LAT views (projection
                          matrices), the geometry the network was given
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from biplanar.data.atlas import FEMUR_LABEL, atlas_surface, warped_atlas_hu, warped_atlas_labels
from biplanar.data.masks import MASK_MIN_PATH_MM
from biplanar.errors import require_choice
from biplanar.evaluation.hip import DIRECTION_KEYS, POINT_KEYS, hip_report, invert_points
from biplanar.evaluation.metrics import segmentation_metrics
from biplanar.evaluation.overlays import write_contour_overlay
from biplanar.geometry.mirror import SagittalMirror
from biplanar.geometry.presets import VIEW_NAMES
from biplanar.io.images import write_mask_png
from biplanar.io.json_files import write_json
from biplanar.io.mesh import MESH_FORMATS, TriangleMesh, label_surface, write_mesh
from biplanar.io.report_html import ReportContents, ReportRow, write_report_html
from biplanar.io.volumes import write_volume
from biplanar.layers.prost import ProST
from biplanar.layers.similarity import global_ncc
from biplanar.registration.inputs import RegistrationInputs

OUTPUT_FILES = (
    "warped_atlas.nii.gz",
    "warped_labels.nii.gz",
    "displacement.nii.gz",
    "transform.json",
    "surface.stl",
    "label_surface.stl",
    "overlay_AP.png",
    "overlay_LAT.png",
    "AP_mask.png",
    "LAT_mask.png",
    "landmarks.json",
    "landmarks.mrk.json",
    "report.html",
    "report.json",
)


def output_files(mesh_format: str = "stl") -> tuple[str, ...]:
    """:data:`OUTPUT_FILES` with the meshes in ``mesh_format`` (one of :data:`~biplanar.io.mesh.MESH_FORMATS`)."""
    require_choice("mesh format", mesh_format, MESH_FORMATS)
    return tuple(
        f"{name.removesuffix('.stl')}.{mesh_format}" if name.endswith(".stl") else name for name in OUTPUT_FILES
    )


CORRECTED_GEOMETRY = "geometry_corrected.json"


# The lowest per-view projection NCC of a registration that is trusted; below it report.json's quality
# flag is set and register warns. Chosen by `python examples/quality_threshold.py --n 8` (docs/clinical.md).
QUALITY_MIN_PROJECTION_NCC = 0.79
# The lowest per-view silhouette Dice trusted: the largest with at most 1 % false alarms on 440 held-out
# registrations, `python examples/silhouette_threshold.py` (docs/clinical.md, "The silhouette check").
QUALITY_MIN_SILHOUETTE_DICE = 0.965
# report.json's quality keys a study of many registrations records per registration.
QUALITY_SUMMARY_KEYS = ("flag", "lowest_projection_ncc", "lowest_silhouette_dice")
QUALITY_DEFINITION = (
    "projection NCC: global normalised cross-correlation, per view, of the DRR of the registered atlas femur "
    "with the network's input (radiograph x femur mask) on the model's detector; silhouette Dice: per view, "
    "the Dice of the registered femur's silhouette (pixels whose ray crosses more than 1 mm of it) with the "
    "femur mask the network used, on the model's detector; flag: the lowest view "
    "below either threshold (wrong side, views swapped, geometry off, not a femur, a femur the network "
    "could not fit)"
)
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


def write_volumes(
    folder: Path, output, network, atlas, mirror: SagittalMirror | None, mesh_format: str = "stl"
) -> tuple[np.ndarray, Any]:
    """Write the warped atlas and labels, the displacement, the transform and the surfaces (``surface`` and
    ``label_surface`` in ``mesh_format``), all in the patient's world (for a left femur the registration
    world's results mirrored back).

    Returns:
        the warped labels in the registration world, ``(I, J, K)`` uint8 on the atlas grid, and the
        carried atlas surface (:func:`carried_atlas_surface`).
    """
    grid = atlas.grid
    displacement = output.total_displacement.float()  # (1, 3, I, J, K) mm, world components
    warped_hu = warped_atlas_hu(atlas, displacement)[0, 0].cpu().numpy()
    warped_labels = warped_atlas_labels(atlas, displacement)
    # (1, 3, I, J, K) -> (I, J, K, 1, 3): NIfTI vector layout, components (x, y, z) last.
    vectors = displacement[0].permute(1, 2, 3, 0)[:, :, :, None, :].cpu().numpy()
    document = transform_document(output.params[0], output.affine_matrix[0], network.atlas_centre)
    patient_labels = warped_labels
    if mirror is not None:
        warped_hu, patient_labels, vectors = (
            mirror.volume(warped_hu),
            mirror.volume(warped_labels),
            mirror.displacement(vectors),
        )
        document["matrix"] = mirror.transform(np.array(document["matrix"])).tolist()
        document["mirror"] = (
            f"a left femur, registered as a right one in the world mirrored through x = {mirror.centre_x:g} mm: "
            "matrix is in the patient's world (S M S); rotation_deg, translation_mm and scale are the "
            "registration world's"
        )
    volumes = [
        ("warped_atlas.nii.gz", warped_hu, None),
        ("warped_labels.nii.gz", patient_labels, None),
        ("displacement.nii.gz", np.ascontiguousarray(vectors), "vector"),
    ]
    # zlib releases the GIL: the volumes' gzip runs on a second thread while the meshes are built.
    with ThreadPoolExecutor(max_workers=1) as writer:
        written = [writer.submit(write_volume, folder / name, data, grid, intent) for name, data, intent in volumes]
        write_json(folder / "transform.json", document)
        surface = carried_atlas_surface(atlas, output.total_displacement, mirror)
        write_mesh(folder / f"surface.{mesh_format}", surface)
        write_mesh(folder / f"label_surface.{mesh_format}", label_surface(patient_labels, grid, FEMUR_LABEL))
        for volume in written:
            volume.result()  # a failed write raises here
    return warped_labels, surface


def carried_atlas_surface(atlas, displacement: Tensor, mirror: SagittalMirror | None):
    """The atlas surface carried through the registration into the patient's world: ``surface.stl``.

    Each atlas vertex ``a`` goes to the patient point ``p`` with ``p + u(p) = a`` (``u`` the pull
    displacement, :func:`biplanar.evaluation.hip.invert_points`), so every patient's mesh has the
    atlas's vertices and faces in the same order (correspondence). A left femur's mesh is mirrored
    back (its faces re-wound, so that the normals still point out). Where the shaft leaves the
    atlas grid, the mesh keeps the atlas's cut end carried along, while the warped label map (and
    ``label_surface.stl``) is cut by the grid.

    Args:
        atlas: the :class:`~biplanar.data.atlas.Atlas` registered.
        displacement: ``(1, 3, I, J, K)`` mm, world components, the registration world's pull field.
        mirror: the mirror of a left femur, else ``None``.
    """
    surface = atlas_surface(atlas)
    field = displacement.detach().double().cpu()
    vertices, _ = invert_points(field, atlas.grid, np.asarray(surface.vertices))
    faces = np.asarray(surface.faces)
    if mirror is not None:
        vertices, faces = mirror.points(vertices), faces[:, ::-1]
    return TriangleMesh(vertices, np.ascontiguousarray(faces))


def patient_hip_report(atlas, displacement: Tensor, mirror: SagittalMirror | None) -> dict[str, Any]:
    """``report.json``'s ``hip``: measured in the registration world (a right femur's conventions),
    the carried landmarks in the patient's world."""
    report = hip_report(atlas, displacement)
    if mirror is not None:
        report["landmarks"] = {
            key: mirror.points(np.asarray(value)).tolist()
            if key in POINT_KEYS
            else mirror.directions(np.asarray(value)).tolist()
            if key in DIRECTION_KEYS
            else value
            for key, value in report["landmarks"].items()
        }
    return report


@dataclass(frozen=True)
class ProjectionChecks:
    """How well a registration's projections fit the network's inputs, per view (``AP``, ``LAT``).

    Attributes:
        ncc: the global NCC of the DRR of the registered atlas femur with radiograph x mask.
        silhouette_dice: the Dice of the registered femur's silhouette with the mask.
    """

    ncc: dict[str, float]
    silhouette_dice: dict[str, float]


def projection_checks(output, network, warped_labels: np.ndarray, inputs: RegistrationInputs) -> ProjectionChecks:
    """Per view, on the model's detector in the registration world, the projection NCC and the
    silhouette Dice of the warped atlas femur (``warped_labels``: ``(I, J, K)`` on the atlas grid,
    registration world) against the network's inputs (radiograph x mask, the mask).

    The silhouette is the mask rule's (:mod:`biplanar.data.masks`: the ray crosses more than
    :data:`MASK_MIN_PATH_MM` of femur), over the whole model detector (its field of view is the atlas
    grid's projection, so a mask running on down the shaft adds a row or two at most). One ProST call
    per view (the network's own) projects the femur's attenuation and its path length.
    """
    device = output.warped_image.device
    femur = torch.from_numpy(warped_labels == FEMUR_LABEL).float()[None, None].to(device)  # (1, 1, I, J, K)
    channels = torch.cat([output.warped_image * femur, femur], dim=1)
    ncc, silhouette_dice = {}, {}
    for name in VIEW_NAMES:
        view = inputs.views[name]
        prost = network.projectors.layers(view.view, device)[0]
        femur_drr, femur_path_mm = prost(channels)[0].cpu()  # each (rows, cols)
        masked_image = torch.from_numpy(view.image * view.mask)[None, None]
        ncc[name] = float(global_ncc(femur_drr[None, None], masked_image)[0])
        silhouette_dice[name] = _mask_dice(femur_path_mm.numpy() > MASK_MIN_PATH_MM, view.mask)
    return ProjectionChecks(ncc, silhouette_dice)


def write_projections(folder: Path, output, network, warped_labels: np.ndarray, inputs: RegistrationInputs) -> None:
    """Write the overlays and the masks the network used, in the user's pixels.

    The overlays draw, on each radiograph as the user gave it (its own detector and orientation),
    the outline of the pixels whose ray crosses more than the mask rule's path length of warped femur
    (:data:`biplanar.data.masks.MASK_MIN_PATH_MM`); ``AP_mask.png`` / ``LAT_mask.png`` are the
    masks the network used, brought back onto the user's pixels (nearest model pixel).
    """
    device = output.warped_image.device
    femur = torch.from_numpy(warped_labels == FEMUR_LABEL).float()[None, None].to(device)  # (1, 1, I, J, K)
    patient_femur = femur if inputs.mirror is None else femur.flip(2)  # the i axis runs along x
    for name in VIEW_NAMES:
        view = inputs.views[name]
        prost = ProST(view.user_view, network.grid, network.projectors.num_samples).to(device)
        path_mm = prost(patient_femur)[0, 0].cpu().numpy()  # (rows, cols) mm of femur, user's detector
        file_axes = view.flips
        write_contour_overlay(
            folder / f"overlay_{name}.png",
            np.flip(view.user_image, file_axes),
            np.flip(path_mm > MASK_MIN_PATH_MM, file_axes),
        )
        write_mask_png(folder / f"{name}_mask.png", view.mask_in_file_pixels(inputs.mirror))


LANDMARK_POINTS = {  # landmarks.json / markups name -> the carried landmark's key (evaluation.hip)
    "femoral_head_centre": "head_centre_mm",
    "greater_trochanter_tip": "greater_trochanter_tip_mm",
    "lesser_trochanter_tip": "lesser_trochanter_tip_mm",
    "shaft_axis_point": "shaft_axis_point_mm",
}
LANDMARK_AXES = {"neck_axis": "neck_axis", "shaft_axis": "shaft_axis", "condylar_axis": "condylar_axis"}
AXIS_DEFINITIONS = {  # landmarks.json's axes, as biplanar.evaluation.hip measures them
    "neck_axis": "from the centroid of the neck surface 3-10 mm beyond the head sphere to the head centre",
    "shaft_axis": "the diaphysis 35-85 mm below the lesser trochanter, proximal",
    "condylar_axis": "the anteversion reference: the patient's medial-to-lateral axis with the leg in neutral "
    "rotation (the condyles are outside the registration grid; not carried through the registration)",
}
SLICER_MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)


def write_landmarks(folder: Path, hip: dict[str, Any], side: str) -> None:
    """Write ``landmarks.json`` and the 3D Slicer markups file ``landmarks.mrk.json``.

    Both hold the atlas's landmarks carried through the registration, in the patient's world (RAS+
    mm, docs/contract.md section 1; Slicer's ``RAS`` coordinate system): the femoral head centre,
    the greater and lesser trochanter tips and a point of the shaft axis as points; ``landmarks.json``
    adds the head radius, the unit neck, shaft and condylar axes, the side and the hip measurements
    (definitions: :mod:`biplanar.evaluation.hip`).

    Args:
        folder: the output folder.
        hip: ``report.json``'s ``hip`` (:func:`patient_hip_report`).
        side: ``"right"`` or ``"left"``.
    """
    carried = hip["landmarks"]
    document = {
        "side": side,
        "frame": "world RAS+ mm (+x patient's right, +y anterior, +z superior), the atlas NIfTI's frame",
        "points_mm": {name: carried[key] for name, key in LANDMARK_POINTS.items()},
        "head_radius_mm": carried["head_radius_mm"],
        "axes": {name: carried[key] for name, key in LANDMARK_AXES.items()},
        "axis_definitions": AXIS_DEFINITIONS,
        "measurements": {key: value for key, value in hip.items() if key != "landmarks"},
    }
    write_json(folder / "landmarks.json", document)
    points = [
        {"id": str(index), "label": name, "position": carried[key], "positionStatus": "defined"}
        for index, (name, key) in enumerate(LANDMARK_POINTS.items(), start=1)
    ]
    markups = {
        "@schema": SLICER_MARKUPS_SCHEMA,
        "markups": [
            {
                "type": "Fiducial",
                "name": f"{side} femur",
                "coordinateSystem": "RAS",
                "coordinateUnits": "mm",
                "controlPoints": points,
            }
        ],
    }
    write_json(folder / "landmarks.mrk.json", markups)


def _mask_dice(first: np.ndarray, second: np.ndarray) -> float:
    """``2 |A ∩ B| / (|A| + |B|)`` of two ``(rows, cols)`` bool masks, 1 when both are empty (NumPy:
    ``register`` does not import MONAI, whose ``compute_dice`` the tests compare it with)."""
    total = int(first.sum()) + int(second.sum())
    return 1.0 if total == 0 else 2.0 * int((first & second).sum()) / total


def quality_report(checks: ProjectionChecks, network_checks: ProjectionChecks | None = None) -> dict[str, Any]:
    """``report.json``'s ``quality``: the projection NCC and silhouette Dice per view, and a flag when
    the lowest of either is below its threshold (:data:`QUALITY_MIN_PROJECTION_NCC`,
    :data:`QUALITY_MIN_SILHOUETTE_DICE`; calibrated on held-out subjects, docs/clinical.md).

    Args:
        checks: the result's :func:`projection_checks`.
        network_checks: with ``--refine``, the network's result's, before the refinement: the flag
            is then set on the lower of the two per view, so that it still sees what the thresholds
            were calibrated on, the network's result (the refinement makes the projections fit
            without making a failed femur right: docs/results.md, "What the simulator still does
            not model").
    """
    ncc, silhouette = checks.ncc, checks.silhouette_dice
    if network_checks is not None:
        ncc = {name: min(value, network_checks.ncc[name]) for name, value in ncc.items()}
        silhouette = {name: min(value, network_checks.silhouette_dice[name]) for name, value in silhouette.items()}
    lowest_view = min(ncc, key=lambda name: ncc[name])
    lowest_silhouette_view = min(silhouette, key=lambda name: silhouette[name])
    reasons = [
        f"{label} {values[view]:.3f} in {view} is below {threshold:g}"
        for label, values, view, threshold in (
            ("projection NCC", ncc, lowest_view, QUALITY_MIN_PROJECTION_NCC),
            ("silhouette Dice", silhouette, lowest_silhouette_view, QUALITY_MIN_SILHOUETTE_DICE),
        )
        if values[view] < threshold
    ]
    network_values = (
        {}
        if network_checks is None
        else {
            "network_projection_ncc": network_checks.ncc,
            "network_silhouette_dice": network_checks.silhouette_dice,
            "flag_on": "lower of the two",
        }
    )
    return {
        "projection_ncc": checks.ncc,
        "silhouette_dice": checks.silhouette_dice,
        **network_values,
        "lowest_view": lowest_view,
        "lowest_projection_ncc": ncc[lowest_view],
        "threshold": QUALITY_MIN_PROJECTION_NCC,
        "lowest_silhouette_view": lowest_silhouette_view,
        "lowest_silhouette_dice": silhouette[lowest_silhouette_view],
        "silhouette_threshold": QUALITY_MIN_SILHOUETTE_DICE,
        "flag": bool(reasons),
        "flag_reasons": reasons,
        "definition": QUALITY_DEFINITION,
    }


HIP_ROWS = {  # report.json's hip key -> report.html's name, unit, definition (biplanar.evaluation.hip)
    "head_diameter_mm": ("head diameter", "mm", "twice the radius of the sphere fitted to the carried head"),
    "neck_shaft_angle_deg": (
        "neck-shaft angle",
        "deg",
        "180 deg minus the angle between the neck axis (from the centroid of the neck surface 3-10 mm beyond the "
        "head sphere to the head centre) and the shaft axis (the diaphysis 35-85 mm below the lesser trochanter)",
    ),
    "femoral_offset_mm": ("femoral offset", "mm", "distance from the head centre to the shaft axis (a line)"),
    "anteversion_deg": (
        "anteversion",
        "deg",
        "angle, across the shaft axis, from the patient's medial direction (the leg taken in neutral rotation: "
        "the condyles are outside the grid, so the leg's turn about its shaft adds to the error) to the neck axis; "
        "positive anterior",
    ),
}
SCORES = (("dice", "Dice", ""), ("jaccard", "Jaccard", ""), ("assd_mm", "ASSD", "mm"), ("hd95_mm", "HD95", "mm"))


def write_report_page(folder: Path, report: dict[str, Any], surface) -> None:
    """Write ``report.html`` (:mod:`biplanar.io.report_html`): the overlays already in ``folder``, the hip
    measurements, quality, timings and (with truth labels) scores of ``report.json``, and the carried
    surface with the carried landmarks (:data:`LANDMARK_POINTS`) in 3D.

    Args:
        folder: the output folder, holding ``overlay_AP.png`` and ``overlay_LAT.png``.
        report: ``report.json``'s contents.
        surface: the carried atlas surface (:func:`carried_atlas_surface`), world mm.
    """
    hip = report["hip"]
    carried = hip["landmarks"]
    # The head centre of the patient's world (hip's own is the registration world's, mirrored for a left femur).
    measurements = [ReportRow("femoral head centre", carried["head_centre_mm"], "mm", "world RAS+ (x, y, z)")]
    measurements += [ReportRow(name, hip[key], unit, definition) for key, (name, unit, definition) in HIP_ROWS.items()]
    contents = ReportContents(
        title=f"biplanar registration: {report['side']} femur",
        side=report["side"],
        vertices_world=np.asarray(surface.vertices),
        faces=np.asarray(surface.faces),
        landmarks_mm={name.replace("_", " "): carried[key] for name, key in LANDMARK_POINTS.items()},
        images={name: (folder / f"overlay_{name}.png").read_bytes() for name in VIEW_NAMES},
        measurements=measurements,
        quality=report["quality"],
        timings_s=report["timings_s"],
        scores=[ReportRow(label, report[key], unit) for key, label, unit in SCORES if key in report],
        network=network_description(report["inputs"]["model_choice"]),
    )
    write_report_html(folder / "report.html", contents)


def network_description(model_choice: dict[str, Any]) -> str:
    """One line on the network ``register`` ran (``report.json``'s ``inputs.model_choice``)."""
    if model_choice["rule"] == "given":
        return f"{Path(model_choice['model']).name} (given)"
    reason = "a bone in air" if model_choice["bone_in_air"] else "a femur in a body"
    return f"the bundled {model_choice['model']} ({reason})"
