"""Datasets from real CTs and their segmentations: ``biplanar simulate --from-ct``.

The input folder holds CT + label-map pairs, given by one of:

- ``manifest.csv`` with columns ``id``, ``ct``, ``labels`` (paths relative to the folder, or
  absolute), one row per scan;
- otherwise every ``<id>.nii.gz`` (or ``.nii``) that has a ``<id>_labels.nii.gz`` (or ``.nii``)
  beside it.

Ids are names (:data:`biplanar.data.datasets.SUBJECT_ID`), never paths. The femur labels map a side to its value in the
label maps: by default TotalSegmentator v2's (``femur_right`` 76, ``femur_left`` 75, read from
``biplanar/resources/labels/totalsegmentator_v2.json``); ``right=N,left=M`` for another
segmentation (one side alone is fine).

Each femur present becomes one subject ``<id>_<side>``:

1. **preprocessed** as ``biplanar preprocess`` does (:mod:`biplanar.data.preprocess`: the paper's
   alignment of the femur frame onto the atlas femur, crop and trilinear resampling onto the
   preset's grid, left femurs mirrored to right ones). With ``keep_sides`` a left femur stays left:
   it lands on the atlas femur mirrored about the grid's midsagittal plane ``x = 0``.
2. **rendered** as :mod:`biplanar.data.simulate` renders its subjects (:func:`render_radiographs`
   in the config's mode, :func:`femur_masks` by the same mask rule, the same files): the case seed
   ``subject_seed(seed, crc32(name))`` draws the views (``config.geometry``), the noise and the
   clinical appearance, so a subject keeps its seed when scans are added to the folder. The
   radiographs project, by ``config.scene``:

   - ``body``: the whole CT around the registration grid (the grid's lattice extended to the CT's
     box across, and along z to the rays' reach within it; ``AIR_HU`` beyond the CT), as the
     simulator's body scene projects the patient around the grid;
   - ``grid``: the registration grid's CT alone (``AIR_HU`` where the grid leaves the CT).

A femur is **skipped**, with a one-line reason, when its label is absent, when it is too small or
its head or shaft is cut by the scan's field of view (:mod:`biplanar.data.preprocess`'s checks),
when the label touches the CT's side faces (cut across), or when a file cannot be read. The
reasons are printed and kept in ``from_ct.json``.

Splits go by scan, not by femur: both femurs of one patient land in the same part.

Layout: as :mod:`biplanar.data.simulate`'s (``dataset.json``, ``split.json``, ``subjects/<name>/``
with the same files), plus ``from_ct.json`` (the scans, the femur labels and the skipped femurs)
and ``dataset.json``'s ``from_ct`` entry. A subject's ``subject.json`` holds its source (scan,
files, label, side), the recovered frame, the measured femur (``parameters.femur``: head radius,
neck-shaft angle, femoral offset; the anteversion is the atlas's, which the alignment imposes)
and its landmarks on the grid (world RAS+ mm). A re-run resumes: complete subjects are kept.
"""

from __future__ import annotations

import csv
import functools
import json
import shutil
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from biplanar.data.datasets import SUBJECT_ID
from biplanar.data.femur_shape import FemurParameters
from biplanar.data.grid_presets import grid_preset
from biplanar.data.masks import femur_masks
from biplanar.data.preprocess import (
    AIR_HU,
    PreprocessResult,
    femur_mask,
    preprocess_arrays,
    read_ct_and_labels,
    resample,
)
from biplanar.data.scene import visible_z_range
from biplanar.data.simulate import (
    RenderedCase,
    SimulationConfig,
    WrittenSubjects,
    case_appearance,
    case_noise_seed,
    case_views,
    in_workers,
    is_complete,
    render_radiographs,
    split_names,
    subject_files,
    subject_seed,
    write_case,
    write_dataset_manifest,
)
from biplanar.errors import InputError
from biplanar.geometry.projection import ProjectionView
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.io.atomic import remove_partial_folders
from biplanar.io.json_files import write_json
from biplanar.physics.clinical_appearance import ClinicalAppearance
from biplanar.progress import progress_bar

MANIFEST = "manifest.csv"
NIFTI_SUFFIXES = (".nii.gz", ".nii")
LABELS_SUFFIX = "_labels"
LABEL_CONVENTION = "totalsegmentator_v2"
SIDES = ("right", "left")
MAX_SCENE_VOXELS = 200_000_000  # a body scene beyond this (0.8 GB of float32) is refused
SCENE_SLAB_VOX = 32  # the body scene is resampled this many k-slices at a time (bounded memory)
SUMMARY_FILE = "from_ct.json"


@dataclass(frozen=True)
class CtScan:
    """One CT and its label map.

    Attributes:
        id: the scan's name (a plain name, :data:`biplanar.data.datasets.SUBJECT_ID`).
        ct: the CT file (NIfTI, HU).
        labels: its label map on the CT's grid (NIfTI).
    """

    id: str
    ct: Path
    labels: Path


@dataclass(frozen=True)
class CtCase(RenderedCase):
    """One femur of a CT, preprocessed and rendered (the attributes :func:`write_case` writes).

    Attributes:
        name: the subject's name, ``<scan id>_<side>``.
        seed: its case seed.
        scan: where it comes from.
        label: the femur's value in the label map.
        preprocessed: CT (HU) and labels on the preset grid, and the recovered frame.
        views: ``AP`` and ``LAT`` views, isocentre at the grid centre.
        radiographs: view name -> ``(rows, cols)`` float32 (the config's mode).
        masks: view name -> ``(rows, cols)`` float32, 1.0 femur (the simulator's mask rule).
        appearance: the ``clinical`` mode's parameters, else ``None``.
        side: the femur's side on the grid: ``right``, or ``left`` when kept (``keep_sides``).
        scene_grid: the grid the radiographs projected (the registration grid for scene ``grid``).
    """

    name: str
    seed: int
    scan: CtScan
    label: int
    preprocessed: PreprocessResult
    views: dict[str, ProjectionView]
    radiographs: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    appearance: ClinicalAppearance | None
    side: str
    scene_grid: VolumeGrid

    @property
    def volumes(self) -> PreprocessResult:
        """The CT and labels on the preset grid."""
        return self.preprocessed

    def record(self) -> dict[str, Any]:
        """Source, seed, frame, measured femur and landmarks (module doc), JSON-ready."""
        frame = self.preprocessed.frame
        axes = frame.axes
        appearance = {} if self.appearance is None else {"appearance": self.appearance.to_dict()}
        return {
            "seed": self.seed,
            "source": {
                "scan": self.scan.id,
                "ct": str(self.scan.ct),
                "labels": str(self.scan.labels),
                "label": self.label,
                "side": frame.side,
                "kept_side": self.side,
            },
            "frame": frame.to_dict(),
            "parameters": {
                "femur": {
                    "head_radius_mm": axes.head_radius_mm,
                    "neck_shaft_angle_deg": axes.neck_shaft_angle_deg,
                    "femoral_offset_mm": axes.femoral_offset_mm,
                    "anteversion_deg": FemurParameters.mean().anteversion_deg,
                }
            },
            "pose": {},
            "landmarks": grid_landmarks(self.preprocessed),
            "scene": {"shape": list(self.scene_grid.shape), "affine": self.scene_grid.affine.tolist()},
            **appearance,
        }


def grid_landmarks(result: PreprocessResult) -> dict[str, Any]:
    """The measured head sphere and axes of a preprocessed femur on its output grid (world mm):
    ``head_centre_mm``, ``head_radius_mm``, ``neck_axis``, ``shaft_axis_point_mm``, ``shaft_axis``."""
    axes = result.frame.output_axes()
    return {
        "head_centre_mm": axes.head_centre_mm.tolist(),
        "head_radius_mm": axes.head_radius_mm,
        "neck_axis": axes.neck_axis.tolist(),
        "shaft_axis_point_mm": axes.shaft_axis_point_mm.tolist(),
        "shaft_axis": axes.shaft_axis.tolist(),
    }


# --- the input folder and the labels -----------------------------------------------------------
def default_femur_labels() -> dict[str, int]:
    """Side -> femur label of TotalSegmentator v2 (``femur_right``, ``femur_left``), from the
    shipped class map."""
    path = resources.files("biplanar") / "resources" / "labels" / f"{LABEL_CONVENTION}.json"
    names = {name: int(value) for value, name in json.loads(path.read_text()).items()}
    return {side: names[f"femur_{side}"] for side in SIDES}


def parse_femur_labels(text: str) -> dict[str, int]:
    """``"right=76,left=75"`` -> ``{"right": 76, "left": 75}`` (one side alone is fine).

    Raises:
        InputError: a malformed entry, an unknown side, a repeated side or a value outside 1-65535.
    """
    labels: dict[str, int] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        side, _, value = entry.partition("=")
        side = side.strip()
        if side not in SIDES or not value.strip().isdigit() or side in labels:
            raise InputError(f"femur-labels: expected side=value entries like right=76,left=75, got {text!r}")
        labels[side] = int(value)
        if not 1 <= labels[side] <= 65535:
            raise InputError(f"femur-labels: {side}: label {labels[side]} outside 1-65535")
    if not labels:
        raise InputError("femur-labels: empty; expected e.g. right=76,left=75")
    return labels


def find_scans(ct_dir: str | Path) -> list[CtScan]:
    """The CT + label pairs of a folder (module doc), sorted by id.

    Raises:
        InputError: no folder, a bad manifest (missing column, bad or repeated id, missing file),
            or no pair found.
    """
    ct_dir = Path(ct_dir)
    if not ct_dir.is_dir():
        raise InputError(f"{ct_dir}: not a folder of CTs")
    scans = _manifest_scans(ct_dir / MANIFEST) if (ct_dir / MANIFEST).is_file() else _named_scans(ct_dir)
    if not scans:
        raise InputError(
            f"{ct_dir}: no CT + label pairs (<id>.nii.gz with <id>{LABELS_SUFFIX}.nii.gz, or a {MANIFEST})"
        )
    return sorted(scans, key=lambda scan: scan.id)


def _is_name(text: str) -> bool:
    """Whether ``text`` is a plain name (:data:`biplanar.data.datasets.SUBJECT_ID`, no ``..``)."""
    return bool(SUBJECT_ID.fullmatch(text)) and ".." not in text


def _check_id(name: str, where: str) -> str:
    if not _is_name(name):
        raise InputError(f"{where}: id {name!r} is not a plain name (letters, digits, _ - .)")
    return name


def _manifest_scans(manifest: Path) -> list[CtScan]:
    """The rows of ``manifest.csv`` (columns ``id``, ``ct``, ``labels``)."""
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"id", "ct", "labels"} <= set(rows[0]):
        raise InputError(f"{manifest}: expected a header with the columns id, ct, labels and one row per scan")
    scans, seen = [], set()
    for number, row in enumerate(rows, start=2):
        name = _check_id((row["id"] or "").strip(), f"{manifest} line {number}")
        if name in seen:
            raise InputError(f"{manifest} line {number}: id {name!r} repeated")
        seen.add(name)
        files = [manifest.parent / (row[column] or "").strip() for column in ("ct", "labels")]
        for path in files:
            if not path.is_file():
                raise InputError(f"{manifest} line {number}: {path}: file not found")
        scans.append(CtScan(name, files[0], files[1]))
    return scans


def _named_scans(ct_dir: Path) -> list[CtScan]:
    """``<id>.nii[.gz]`` files with a ``<id>_labels.nii[.gz]`` beside them."""
    scans = []
    for path in sorted(ct_dir.iterdir()):
        suffix = next((s for s in NIFTI_SUFFIXES if path.name.endswith(s)), None)
        stem = path.name[: -len(suffix)] if suffix else ""
        if not suffix or stem.endswith(LABELS_SUFFIX) or not _is_name(stem):
            continue
        candidates = [ct_dir / f"{stem}{LABELS_SUFFIX}{ending}" for ending in NIFTI_SUFFIXES]
        labels = next((candidate for candidate in candidates if candidate.is_file()), None)
        if labels is not None:
            scans.append(CtScan(stem, path, labels))
    return scans


# --- one femur -----------------------------------------------------------------------------------
class Skipped(InputError):
    """A femur that does not become a subject; the message is the one-line reason."""


@dataclass(frozen=True)
class LoadedScan:
    """A scan read into memory.

    Attributes:
        scan: its files.
        ct_hu: ``(I, J, K)`` float32 HU.
        grid: the CT's grid (input world, RAS+ mm).
        labels: ``(I, J, K)`` float32 label values on ``grid``.
    """

    scan: CtScan
    ct_hu: np.ndarray
    grid: VolumeGrid
    labels: np.ndarray


def load_scan(scan: CtScan) -> LoadedScan:
    """Read a scan's CT and label map; :class:`Skipped` when they cannot be read or disagree."""
    try:
        return LoadedScan(scan, *read_ct_and_labels(scan.ct, scan.labels))
    except InputError as error:
        raise Skipped(str(error)) from None


def _femur_mask(loaded: LoadedScan, side: str, label: int) -> np.ndarray:
    """``(I, J, K)`` bool, the femur; :class:`Skipped` when absent or cut across by the field of view."""
    try:
        mask = femur_mask(loaded.labels, label, loaded.scan.labels)
    except InputError as error:
        raise Skipped(f"{side} femur: {error}") from None
    across = (mask[0], mask[-1], mask[:, 0], mask[:, -1])
    if any(face.any() for face in across):
        raise Skipped(f"the {side} femur (label {label}) touches the CT's side faces: cut by the scan's field of view")
    return mask


def scene_of_ct(
    ct_grid: VolumeGrid, output_to_input: np.ndarray, grid: VolumeGrid, views: dict[str, ProjectionView]
) -> VolumeGrid:
    """The body scene of a CT around the registration grid (module doc): ``grid``'s lattice
    extended to the CT's box across and along z to the rays' reach within it.

    Args:
        ct_grid: the CT's grid (input world mm).
        output_to_input: ``(4, 4)`` output world mm -> input world mm.
        grid: the registration grid (output world, axis-aligned RAS+).
        views: the views the scene is rendered for.

    Raises:
        Skipped: the scene would exceed :data:`MAX_SCENE_VOXELS`.
    """
    to_output = np.linalg.inv(output_to_input)
    corners = ct_grid.corners_world() @ to_output[:3, :3].T + to_output[:3, 3]
    start, spacing = grid.affine[:3, 3], grid.spacing_mm
    low = np.minimum(np.floor((corners.min(axis=0) - start) / spacing), 0).astype(int)
    high = np.maximum(np.ceil((corners.max(axis=0) - start) / spacing), np.asarray(grid.shape) - 1).astype(int)
    reach = visible_z_range(views, start[:2] + low[:2] * spacing[:2], start[:2] + high[:2] * spacing[:2])
    if reach is not None:
        low[2] = min(0, max(low[2], int(np.floor((reach[0] - start[2]) / spacing[2]))))
        high[2] = max(grid.shape[2] - 1, min(high[2], int(np.ceil((reach[1] - start[2]) / spacing[2]))))
    shape = (int(high[0] - low[0] + 1), int(high[1] - low[1] + 1), int(high[2] - low[2] + 1))
    if int(np.prod(shape)) > MAX_SCENE_VOXELS:
        raise Skipped(f"the CT's body scene would hold {np.prod(shape):,} voxels (limit {MAX_SCENE_VOXELS:,})")
    offset = np.eye(4)
    offset[:3, 3] = low
    return VolumeGrid(shape, grid.affine @ offset)


def resample_in_slabs(
    volume: np.ndarray, source: VolumeGrid, target: VolumeGrid, target_to_source: np.ndarray, outside: float
) -> np.ndarray:
    """:func:`biplanar.data.preprocess.resample` onto ``target`` :data:`SCENE_SLAB_VOX` k-slices
    at a time (the same values, bounded memory)."""
    slabs = []
    for first in range(0, target.shape[2], SCENE_SLAB_VOX):
        depth = min(SCENE_SLAB_VOX, target.shape[2] - first)
        shift = np.eye(4)
        shift[2, 3] = first
        slab = VolumeGrid((*target.shape[:2], depth), target.affine @ shift)
        slabs.append(resample(volume, source, slab, target_to_source, outside))
    return np.concatenate(slabs, axis=2)


def ct_case(loaded: LoadedScan, side: str, label: int, seed: int, config: SimulationConfig, keep_sides: bool) -> CtCase:
    """Femur ``label`` (``side``) of a scan as a subject (module doc), case seed ``seed``.

    Raises:
        Skipped: the femur cannot be used (the message says why).
    """
    mask = _femur_mask(loaded, side, label)
    ct_hu, ct_grid = loaded.ct_hu, loaded.grid
    grid = grid_preset(config.preset)
    kept = "left" if keep_sides and side == "left" else "right"
    try:
        result = preprocess_arrays(
            ct_hu, ct_grid, mask, side, config.preset, f"{side} femur (label {label})", keep_side=kept == "left"
        )
    except InputError as error:
        raise Skipped(str(error)) from None
    views = case_views(seed, config, grid)
    scene_grid = grid if config.scene == "grid" else scene_of_ct(ct_grid, result.frame.output_to_input, grid, views)
    projected = (
        result.ct_hu
        if scene_grid is grid
        else resample_in_slabs(ct_hu, ct_grid, scene_grid, result.frame.output_to_input, AIR_HU)
    )
    appearance = case_appearance(seed, config)
    radiographs = render_radiographs(projected, scene_grid, views, config, case_noise_seed(seed), appearance)
    masks = femur_masks(result.labels, grid, views, config.num_samples)
    name = f"{loaded.scan.id}_{side}"
    return CtCase(name, seed, loaded.scan, label, result, views, radiographs, masks, appearance, kept, scene_grid)


# --- the dataset ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class FemurTask:
    """One femur to turn into a subject (what a worker receives)."""

    scan: CtScan
    side: str
    label: int
    seed: int

    @property
    def name(self) -> str:
        """The subject's name, ``<scan id>_<side>``."""
        return f"{self.scan.id}_{self.side}"


@dataclass(frozen=True)
class FromCtSummary(WrittenSubjects):
    """What :func:`simulate_from_ct` did.

    Attributes:
        out_dir, written: the dataset folder and the subjects made by this run (:class:`WrittenSubjects`).
        kept: subjects already complete (resume).
        skipped: subject name -> the one-line reason it was skipped.
    """

    kept: tuple[str, ...]
    skipped: dict[str, str]


def case_seed(dataset_seed: int, name: str) -> int:
    """The case seed of subject ``name``: ``subject_seed(dataset_seed, crc32(name))``."""
    return subject_seed(dataset_seed, zlib.crc32(name.encode()))


def _make_subjects(
    subjects_dir: Path, config: SimulationConfig, keep_sides: bool, tasks: tuple[FemurTask, ...]
) -> list[tuple[str, str]]:
    """Make and write the subjects of one scan's femurs (the scan read once): ``(name, "")`` for
    each written, ``(name, reason)`` for each skipped."""
    try:
        loaded = load_scan(tasks[0].scan)
    except Skipped as reason:
        return [(task.name, str(reason)) for task in tasks]
    outcomes = []
    for task in tasks:
        try:
            case = ct_case(loaded, task.side, task.label, task.seed, config, keep_sides)
        except Skipped as reason:
            outcomes.append((task.name, str(reason)))
            continue
        write_case(subjects_dir / task.name, case, {"subject_id": task.name})
        outcomes.append((task.name, ""))
    return outcomes


def simulate_from_ct(
    ct_dir: str | Path,
    out_dir: str | Path,
    seed: int,
    config: SimulationConfig,
    femur_labels: dict[str, int] | None = None,
    keep_sides: bool = False,
    workers: int = 1,
    progress: bool = True,
) -> FromCtSummary:
    """A dataset from a folder of CTs and label maps (module doc), resuming a previous run.

    Args:
        ct_dir: the folder of CT + label pairs.
        out_dir: the dataset folder, created if missing.
        seed: dataset seed, ``>= 0`` (case seeds: :func:`case_seed`; the split).
        config: preset, geometry, mode and scene (``config.shapes`` is not used: the CTs' femurs).
        femur_labels: side -> label value (default :func:`default_femur_labels`).
        keep_sides: keep left femurs left instead of mirroring them.
        workers: processes making subjects in parallel.
        progress: show a progress bar on stderr.

    Raises:
        InputError: a bad folder or setting, ``out_dir`` holding another dataset, or no femur usable.
    """
    if workers < 1 or seed < 0:
        raise InputError(f"workers >= 1 and seed >= 0 expected, got workers={workers}, seed={seed}")
    femur_labels = default_femur_labels() if femur_labels is None else femur_labels
    scans = find_scans(ct_dir)
    tasks = [
        FemurTask(scan, side, label, case_seed(seed, f"{scan.id}_{side}"))
        for scan in scans
        for side, label in sorted(femur_labels.items())
    ]
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    source = {"ct_dir": str(Path(ct_dir).resolve()), "femur_labels": femur_labels, "keep_sides": keep_sides}
    write_dataset_manifest(out_dir, len(tasks), seed, config, {"from_ct": source})
    subjects_dir = out_dir / "subjects"
    subjects_dir.mkdir(parents=True, exist_ok=True)
    remove_partial_folders(subjects_dir)
    files = subject_files(config.mode)
    pending = [task for task in tasks if not is_complete(subjects_dir / task.name, files)]
    kept = tuple(task.name for task in tasks if task not in pending)
    written, skipped = [], {}
    with progress_bar(progress, elapsed=True) as bar:
        counter = bar.add_task("subjects from CTs", total=len(tasks), completed=len(kept))
        by_scan = [tuple(task for task in pending if task.scan == scan) for scan in scans]
        make = functools.partial(_make_subjects, subjects_dir, config, keep_sides)
        for outcomes in in_workers(make, [tasks for tasks in by_scan if tasks], workers, preload=__name__):
            for name, reason in outcomes:
                if reason:
                    skipped[name] = reason
                else:
                    written.append(name)
                bar.advance(counter)
    made = set(written) | set(kept)
    if not made:
        if created:  # nothing to keep
            shutil.rmtree(out_dir, ignore_errors=True)
        reasons = "; ".join(f"{name}: {reason}" for name, reason in sorted(skipped.items())[:4])
        raise InputError(f"{ct_dir}: no usable femur in {len(scans)} scan(s) ({reasons})")
    write_json(
        out_dir / SUMMARY_FILE,
        {"scans": [scan.id for scan in scans], "femur_labels": femur_labels, "skipped": dict(sorted(skipped.items()))},
    )
    write_json(out_dir / "split.json", split_by_scan(tasks, made, seed))
    return FromCtSummary(out_dir, tuple(sorted(written)), tuple(sorted(kept)), dict(sorted(skipped.items())))


def split_by_scan(tasks: list[FemurTask], made: set[str], seed: int) -> dict[str, list[str]]:
    """Train / val / test subjects, drawn by scan (:func:`split_names` of the scan ids) so that
    both femurs of a patient fall in the same part."""
    scans = sorted({task.scan.id for task in tasks if task.name in made})
    parts = split_names(scans, seed)
    return {
        part: sorted(task.name for task in tasks if task.scan.id in set(ids) and task.name in made)
        for part, ids in parts.items()
    }
