"""Registration atlases: the phantom's mean shape (shipped), one subject's CT, or the mean of a
simulated dataset.

Which atlas to register (``biplanar register --atlas``; the shipped one, :func:`atlas_from_phantom`,
is the default):

- **one subject's CT** (:func:`atlas_from_ct`, the paper's choice: Van Houtte et al. 2022 use one
  training subject's CT as the atlas): real, sharp texture (cortex, trabeculae, the pelvis around
  the head) that the radiographs' DRRs can match, but one individual's shape, so every registration
  starts from that individual's offset, neck-shaft angle and head size. Choose a subject close to
  the population mean (head radius, neck-shaft angle), scanned without metal or fractures.
- **a mean atlas** (:func:`atlas_from_dataset`): the population's mean shape, so the displacement
  the network must find is smallest on average, but the texture is blurred (trabeculae and the
  cortex averaged over subjects, the pelvis smeared). Choose it when the model was trained on a
  population whose individuals differ more from any one subject than the blur costs, or when no
  good single CT is at hand.

Either atlas lies on a preset grid in the atlas frame (:mod:`biplanar.data.preprocess`): the femur
frame (``l`` lateral, ``a`` anterior, ``s`` proximal, origin the head centre) placed as
``SubjectSpec.atlas().femur_to_world()`` places the shipped atlas's, so a model trained with the
shipped atlas can register either (the grid must be the model's).

Landmarks (:func:`femur_landmarks`, world mm, the keys of the shipped ``landmarks.json``):

- head sphere, shaft axis and neck axis: :func:`biplanar.data.preprocess.measure_femur_axes`
  (an atlas from a CT takes them from the CT itself, at its own resolution and over its whole
  shaft, carried to the atlas grid);
- greater trochanter tip: the centroid of the label points within ``TIP_CAP_MM`` of the most
  proximal (along the shaft axis) label point lateral of the shaft axis;
- lesser trochanter tip: the centroid of the label points within ``TIP_CAP_MM`` of the farthest
  along the lesser trochanter's mean direction (``FemurParameters.mean().lt_angle_deg`` from
  medial towards posterior, across the shaft) between ``LT_BAND_MM`` below the head centre;
- ``condylar_axis``: the atlas frame's ``+l`` axis in world (the femur frame's stand-in for the
  posterior condylar axis, :mod:`biplanar.evaluation.hip`): the preprocessing turns every femur
  about its shaft axis onto the atlas frame, so its ``l`` axis is the atlas's.

Lateral and posterior are those of the femur frame of the measured axes: ``s`` the shaft axis,
``l`` the atlas's ``+l`` made perpendicular to ``s``, ``a = s x l``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from biplanar.data.atlas import IMAGE_FILE, LABELS_FILE, LANDMARKS_FILE, require_preset, write_atlas_surface
from biplanar.data.datasets import split_subject_ids
from biplanar.data.femur_shape import FemurParameters
from biplanar.data.grid_presets import GRID_PRESETS, grid_preset
from biplanar.data.phantom import Pose, SubjectSpec, make_atlas
from biplanar.data.preprocess import (
    AIR_HU,
    FemurAxes,
    measure_femur_axes,
    preprocess_arrays,
    read_femur,
    resample,
)
from biplanar.errors import InputError
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.io.atomic import atomic_folder, require_empty_out_dir
from biplanar.io.json_files import read_json, write_json
from biplanar.io.volumes import read_volume, write_volume
from biplanar.progress import progress_bar, ticker

TIP_CAP_MM = 1.0  # a trochanter tip is the centroid of the label points this close to the extreme
LT_BAND_MM = (40.0, 80.0)  # the lesser trochanter's tip lies this far below the head centre (45-68 mm)
HEAD_RADIUS_LIMITS_MM = (18.0, 30.0)  # adult femoral heads
NECK_SHAFT_LIMITS_DEG = (110.0, 150.0)
MAJORITY = 0.5  # a mean-atlas voxel is femur where at least this fraction of the subjects' is
MIN_COVERAGE = 1e-3  # mean-atlas voxels covered by less (summed trilinear weight) are air


# --- landmarks -----------------------------------------------------------------------------------
def _atlas_lateral() -> np.ndarray:
    """``(3,)`` the atlas frame's ``+l`` axis in world (the condylar-axis stand-in)."""
    return SubjectSpec.atlas().femur_rotation()[:, 0]


def _cap_centroid(points: np.ndarray, score: np.ndarray) -> np.ndarray:
    """``(3,)`` centroid of the ``(N, 3)`` points whose ``(N,)`` score is within ``TIP_CAP_MM`` of the top."""
    return points[score >= score.max() - TIP_CAP_MM].mean(axis=0)


def femur_landmarks(
    labels: np.ndarray, grid: VolumeGrid, axes: FemurAxes | None = None, name: str = "labels"
) -> dict[str, Any]:
    """The landmarks of a right femur label in the atlas frame (see the module doc).

    Args:
        labels: ``(I, J, K)`` 0/1 (or boolean), the femur, on ``grid``; its largest connected
            part is measured.
        grid: the atlas grid (output world, RAS+ mm).
        axes: the femur's axes in the same world (e.g. measured on the CT it came from);
            ``None``: measured on ``labels`` (:func:`measure_femur_axes`).
        name: what error messages call ``labels``.

    Returns:
        ``landmarks.json`` keys -> values (world mm; directions unit vectors, lists): head_centre_mm,
        head_radius_mm, neck_axis, shaft_axis_point_mm, shaft_axis, greater_trochanter_tip_mm,
        lesser_trochanter_tip_mm, condylar_axis.

    Raises:
        InputError: a label too small or cut off to measure (the message starts with ``name``).
    """
    mask = np.asarray(labels) > 0
    if axes is None:
        axes = measure_femur_axes(mask, grid, name)
    s = axes.shaft_axis
    lateral = _atlas_lateral() - (_atlas_lateral() @ s) * s
    lateral /= np.linalg.norm(lateral)
    anterior = np.cross(s, lateral)
    points = np.argwhere(mask) @ grid.affine[:3, :3].T + grid.affine[:3, 3]  # voxel indices -> world mm
    relative = points - axes.shaft_axis_point_mm
    height = (points - axes.head_centre_mm) @ s  # mm above the head centre
    beyond = relative @ lateral > 0.0
    if not beyond.any():
        raise InputError(f"{name}: no femur lateral of the shaft axis (no greater trochanter)")
    greater = _cap_centroid(points[beyond], height[beyond])
    lt_angle = np.radians(FemurParameters.mean().lt_angle_deg)
    lt_direction = -np.cos(lt_angle) * lateral - np.sin(lt_angle) * anterior  # medial-posterior
    band = (-height >= LT_BAND_MM[0]) & (-height <= LT_BAND_MM[1])
    if not band.any():
        raise InputError(f"{name}: no femur {LT_BAND_MM[0]:g} to {LT_BAND_MM[1]:g} mm below the head centre")
    lesser = _cap_centroid(points[band], relative[band] @ lt_direction)
    return {
        "head_centre_mm": axes.head_centre_mm.tolist(),
        "head_radius_mm": float(axes.head_radius_mm),
        "neck_axis": axes.neck_axis.tolist(),
        "shaft_axis_point_mm": axes.shaft_axis_point_mm.tolist(),
        "shaft_axis": s.tolist(),
        "greater_trochanter_tip_mm": greater.tolist(),
        "lesser_trochanter_tip_mm": lesser.tolist(),
        "condylar_axis": _atlas_lateral().tolist(),
    }


def check_landmarks(landmarks: dict[str, Any], source: str) -> None:
    """Raise unless the landmarks are an adult femur's: head radius and neck-shaft angle in range.

    Args:
        landmarks: :func:`femur_landmarks`'s dict.
        source: what the message names (the CT and label file, or the dataset).

    Raises:
        InputError: ``"<source>: head radius 12.0 mm ..."`` or ``"<source>: neck-shaft angle ..."``.
    """
    radius = float(landmarks["head_radius_mm"])
    low, high = HEAD_RADIUS_LIMITS_MM
    if not low <= radius <= high:
        raise InputError(f"{source}: head radius {radius:.1f} mm is not an adult femur's ({low:g} to {high:g} mm)")
    cosine = np.clip(np.dot(landmarks["neck_axis"], landmarks["shaft_axis"]), -1.0, 1.0)
    angle = 180.0 - float(np.degrees(np.arccos(cosine)))
    low, high = NECK_SHAFT_LIMITS_DEG
    if not low <= angle <= high:
        raise InputError(f"{source}: neck-shaft angle {angle:.1f} deg is not a femur's ({low:g} to {high:g} deg)")


# --- writing -------------------------------------------------------------------------------------
def _write_atlas_folder(
    out_dir: Path, ct_hu: np.ndarray, labels: np.ndarray, grid: VolumeGrid, landmarks: dict[str, Any]
) -> None:
    """Write an atlas folder (:mod:`biplanar.data.atlas` layout) all or nothing: into a temporary
    sibling folder renamed to ``out_dir`` once complete (an empty ``out_dir`` is replaced).

    Args:
        out_dir: the atlas folder; must not exist or be empty.
        ct_hu: ``(I, J, K)`` HU on ``grid`` (written rounded, int16).
        labels: ``(I, J, K)`` 0/1 on ``grid`` (written uint8).
        grid: the atlas grid.
        landmarks: the ``landmarks.json`` document.
    """
    with atomic_folder(out_dir, replace=False) as partial:
        write_volume(partial / IMAGE_FILE, np.round(ct_hu).astype(np.int16), grid)
        write_volume(partial / LABELS_FILE, labels.astype(np.uint8), grid)
        write_json(partial / LANDMARKS_FILE, landmarks)
        write_atlas_surface(partial, labels, grid)


# --- the phantom's mean shape -------------------------------------------------------------------
def atlas_from_phantom(out_dir: str | Path, preset: str = "lite") -> Path:
    """Generate the mean-shape phantom atlas on a grid preset (the shipped one) and write it to
    ``out_dir``, atomically per file (into an existing folder: its four files are replaced)."""
    require_preset(preset)
    out_dir = Path(out_dir)
    subject = make_atlas(preset)
    write_volume(out_dir / IMAGE_FILE, np.round(subject.ct_hu).astype(np.int16), subject.grid)
    write_volume(out_dir / LABELS_FILE, subject.labels.astype(np.uint8), subject.grid)
    write_json(out_dir / LANDMARKS_FILE, {"preset": preset, **subject.landmarks.to_dict()})
    write_atlas_surface(out_dir, subject.labels, subject.grid)
    return out_dir


# --- one subject's CT ----------------------------------------------------------------------------
def atlas_from_ct(
    ct_path: str | Path, labels_path: str | Path, label: int, side: str, out_dir: str | Path, preset: str = "lite"
) -> Path:
    """An atlas folder from one femur of a CT (the paper's atlas; module doc).

    The femur is preprocessed (:func:`biplanar.data.preprocess.preprocess_arrays`: its frame onto
    the atlas frame, a left femur mirrored, resampled to the preset grid) and written as
    ``atlas.nii.gz`` (int16 HU, rounded), ``atlas_labels.nii.gz`` (uint8, 1 = femur) and
    ``landmarks.json`` (:func:`femur_landmarks` plus ``preset`` and ``source``: the CT and label
    paths, label, side and the recovered frame, :meth:`FemurFrame.to_dict`), all or nothing.

    Args:
        ct_path: NIfTI CT in HU.
        labels_path: NIfTI label map on the CT's grid (e.g. TotalSegmentator's: 75 femur_left,
            76 femur_right).
        label: the femur's value in ``labels_path``.
        side: ``"left"`` or ``"right"``.
        out_dir: the atlas folder; must not exist or be empty.
        preset: the atlas grid, a name of :data:`biplanar.data.GRID_PRESETS`.

    Returns:
        ``out_dir``.

    Raises:
        InputError: an existing non-empty ``out_dir``, missing or unreadable files, CT and labels
            on different grids, ``label`` absent, bad side or preset, a femur too small, cut off,
            of the other side, or with a head radius or neck-shaft angle out of range.
    """
    out_dir, labels_path = Path(out_dir), Path(labels_path)
    require_empty_out_dir(out_dir)
    ct_hu, ct_grid, mask = read_femur(ct_path, labels_path, label)
    name = f"{labels_path} (label {label})"
    result = preprocess_arrays(ct_hu, ct_grid, mask, side, preset, name)
    landmarks = femur_landmarks(result.labels, result.grid, result.frame.output_axes(), name)
    check_landmarks(landmarks, f"{ct_path}, {name}")
    source = {"ct": str(ct_path), "labels": str(labels_path), "label": int(label), "frame": result.frame.to_dict()}
    _write_atlas_folder(
        out_dir, result.ct_hu, result.labels, result.grid, {"preset": preset, **landmarks, "source": source}
    )
    return out_dir


# --- the mean of a dataset -----------------------------------------------------------------------
def _split_ids(data_dir: Path, split: str) -> list[str]:
    """The subject ids of ``split`` in ``data_dir/split.json``; ``InputError`` if none."""
    ids = split_subject_ids(data_dir, split)
    if not ids:
        raise InputError(f"{data_dir / 'split.json'}: no subjects in split {split!r}")
    return ids


def _dataset_preset(data_dir: Path, preset: str | None) -> str:
    """The dataset's grid preset (``dataset.json``'s config); ``InputError`` if ``preset`` differs."""
    path = data_dir / "dataset.json"
    found = read_json(path).get("config", {}).get("preset")
    if found not in GRID_PRESETS:
        raise InputError(f"{path}: config.preset: expected one of {', '.join(GRID_PRESETS)}, got {found!r}")
    if preset is not None and preset != found:
        raise InputError(f"preset: {preset!r} given, but the dataset {data_dir} is on the {found!r} grid")
    return found


def _atlas_to_subject(path: Path) -> np.ndarray:
    """``(4, 4)`` atlas world mm -> subject world mm, from a subject's ``subject.json``: its pose
    (angles about the head centre ``landmarks.head_centre_mm``; none, as from ``simulate
    --from-ct``: the atlas's) and, for a left femur kept left (``source.kept_side``), the mirror
    ``x -> -x`` about the grid's midsagittal plane (the pose then is the right femur's it mirrors)."""
    record = read_json(path)
    try:
        angles = record.get("pose") or {}
        flexion, abduction, rotation = (
            float(angles.get(key, 0.0)) for key in ("flexion_deg", "abduction_deg", "external_rotation_deg")
        )
        pose = Pose(flexion, abduction, rotation)
        head = np.asarray(record["landmarks"]["head_centre_mm"], dtype=np.float64).reshape(3)
        mirror = np.diag([-1.0 if (record.get("source") or {}).get("kept_side") == "left" else 1.0, 1.0, 1.0, 1.0])
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise InputError(f"{path}: no readable pose and head centre ({error})") from None
    femur_to_world = np.eye(4)  # of the right femur (mirrored back for a kept left one)
    femur_to_world[:3, :3] = pose.rotation() @ SubjectSpec.atlas().femur_rotation()  # canonical frame, posed
    femur_to_world[:3, 3] = mirror[:3, :3] @ head
    return mirror @ femur_to_world @ np.linalg.inv(SubjectSpec.atlas().femur_to_world())


def _largest_part(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected part of a boolean ``(I, J, K)`` mask."""
    parts, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if count <= 1:
        return mask
    return parts == 1 + int(np.argmax(np.bincount(parts.ravel())[1:]))


def _add_subject(sums: dict[str, np.ndarray], folder: Path, grid: VolumeGrid, preset: str) -> None:
    """Add one subject, moved onto the atlas frame, to the running ``coverage``, ``hu`` and ``femur``
    sums (``(I, J, K)`` on ``grid``; each sample weighted by the subject's trilinear coverage)."""
    ct_hu, ct_grid = read_volume(folder / "ct.nii.gz")
    labels, labels_grid = read_volume(folder / "labels.nii.gz")
    for path, subject_grid in ((folder / "ct.nii.gz", ct_grid), (folder / "labels.nii.gz", labels_grid)):
        if subject_grid.shape != grid.shape or not np.allclose(subject_grid.affine, grid.affine, atol=1e-4):
            raise InputError(
                f"{path}: grid (shape {subject_grid.shape}) differs from the {preset} preset's "
                f"(shape {grid.shape}) that the other subjects share"
            )
    atlas_to_subject = _atlas_to_subject(folder / "subject.json")
    # Sampled with 0 outside, a volume's trilinear value is the coverage-weighted sum of its values.
    sums["coverage"] += resample(np.ones(grid.shape, np.float32), grid, grid, atlas_to_subject)
    sums["hu"] += resample(ct_hu, grid, grid, atlas_to_subject)
    sums["femur"] += resample((labels == 1).astype(np.float32), grid, grid, atlas_to_subject)


def atlas_from_dataset(
    data_dir: str | Path,
    out_dir: str | Path,
    preset: str | None = None,
    split: str = "train",
    progress: bool = True,
) -> Path:
    """A mean atlas of the subjects of a simulated dataset (``biplanar simulate``; module doc).

    Every subject is moved rigidly onto the atlas frame (its ``subject.json`` pose undone about
    its head centre, so the femur frames coincide with the atlas's; a left femur kept left by
    ``simulate --from-ct --keep-sides`` mirrored back) and resampled on the dataset's
    preset grid; the atlas is the mean HU (weighted by each subject's coverage of the voxel, air
    where none covers it) and the voxel-wise majority of the femur labels (mean ``>= MAJORITY``,
    largest connected part); landmarks from that label (:func:`femur_landmarks`). Written as
    :func:`atlas_from_ct` writes, ``source`` naming the dataset, split and subjects.

    Args:
        data_dir: the dataset folder (``split.json``, ``dataset.json``, ``subjects/<id>/`` with
            ``ct.nii.gz``, ``labels.nii.gz``, ``subject.json``).
        out_dir: the atlas folder; must not exist or be empty.
        preset: the grid preset (``None``: the dataset's; another than the dataset's is refused).
        split: the split whose subjects are averaged (``train``, ``val`` or ``test``).
        progress: show a progress bar on stderr.

    Returns:
        ``out_dir``.

    Raises:
        InputError: an existing non-empty ``out_dir``, an empty split, missing files, subjects on
            another grid, a mean femur that cannot be measured or is out of range.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    require_empty_out_dir(out_dir)
    ids = _split_ids(data_dir, split)
    preset = _dataset_preset(data_dir, preset)
    grid = grid_preset(preset)
    sums = {name: np.zeros(grid.shape, np.float32) for name in ("coverage", "hu", "femur")}
    with progress_bar(progress, elapsed=True) as bar:
        advance = ticker(bar, f"averaging {split} subjects", len(ids))
        for subject in ids:
            _add_subject(sums, data_dir / "subjects" / subject, grid, preset)
            advance()
    covered = sums["coverage"] > MIN_COVERAGE
    weight = np.where(covered, sums["coverage"], 1.0)
    ct_hu = np.where(covered, sums["hu"] / weight, AIR_HU)
    femur = _largest_part(covered & (sums["femur"] / weight >= MAJORITY))
    name = f"{data_dir} (mean femur of {len(ids)} {split} subjects)"
    landmarks = femur_landmarks(femur, grid, name=name)
    check_landmarks(landmarks, name)
    source = {"dataset": str(data_dir), "split": split, "subjects": ids}
    _write_atlas_folder(out_dir, ct_hu, femur.astype(np.uint8), grid, {"preset": preset, **landmarks, "source": source})
    return out_dir
