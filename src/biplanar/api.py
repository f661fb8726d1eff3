"""The Python API of biplanar: one function per ``biplanar`` command (``docs/api.md``).

Every command of the command line (:mod:`biplanar.cli`) is a thin wrapper over one function here:
it parses its options, calls the function and prints a summary. The functions take plain Python
values (paths, numbers, names as ``str``), do the command's work by calling the module that holds
it, write the same files and return what they made. They are importable from the package itself::

    import biplanar

    biplanar.write_geometry("geometry.json")
    image = biplanar.drr("CT.nii.gz", "geometry.json", "lat.tif", view="LAT")

Bad input raises :class:`~biplanar.errors.InputError` with a one-line message naming the file or
field (the CLI prints it and exits 2); outputs are written atomically (a temporary name, then a
rename). Frames, units and file formats are those of ``docs/contract.md``.

This module imports the heavy subpackages (torch and everything on it) inside the functions, so
that ``import biplanar`` and ``biplanar --help`` stay fast; each such import says so. A command
whose work is one function of its own module with the API's parameters (:func:`evaluate`,
:func:`register`, :func:`run_experiments`, :func:`train_pose`) is that function itself, not a copy
of its signature: the module's ``__getattr__`` (PEP 562) imports it on first access
(:data:`IMPLEMENTED_IN`).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import biplanar
from biplanar.config import DEFAULT_NUM_SAMPLES, MAX_IMAGE_SIDE, MAX_WORKERS
from biplanar.errors import InputError, require_positive
from biplanar.io.atomic import require_creatable, require_output_folder

if TYPE_CHECKING:  # `name as name`: the functions of IMPLEMENTED_IN, re-exported for type checkers
    import numpy as np
    from rich.table import Table

    from biplanar.data.from_ct import FromCtSummary
    from biplanar.data.preprocess import PreprocessResult
    from biplanar.data.simulate import DatasetSummary
    from biplanar.demo import DemoResult
    from biplanar.evaluation.evaluate import evaluate as evaluate
    from biplanar.experiments import run_experiments as run_experiments
    from biplanar.geometry.projection import ProjectionView
    from biplanar.pose.estimate import PoseReport
    from biplanar.registration import register as register
    from biplanar.training.pose_trainer import train_pose as train_pose
    from biplanar.training.trainer import TrainResult

__all__ = list(biplanar.__all__)  # the package exports exactly this module's functions: one list

# API functions that are their module's own function (same parameters, the output-folder check
# done there): name -> the module holding it, imported on first access (CLI start-up time).
IMPLEMENTED_IN = {
    "evaluate": "biplanar.evaluation.evaluate",
    "register": "biplanar.registration",
    "run_experiments": "biplanar.experiments",
    "train_pose": "biplanar.training.pose_trainer",
}

VOLUME_UNITS = ("hu", "mu")


def __getattr__(name: str) -> Any:
    """The API functions of :data:`IMPLEMENTED_IN`, imported when first asked for (then kept here)."""
    if name in IMPLEMENTED_IN:
        function = getattr(importlib.import_module(IMPLEMENTED_IN[name]), name)
        globals()[name] = function
        return function
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def _check_output_suffix(path: Path, allowed: tuple[str, ...]) -> None:
    if path.suffix.lower() not in allowed:
        raise InputError(f"{path}: unsupported output format {path.suffix!r} (use {', '.join(allowed)})")


def _check_output_file(path: Path) -> None:
    """Refuse an output file that is a folder, or whose folder cannot be made or written (checked before
    any work, so that a command writing two files writes neither)."""
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a file name")
    require_creatable(path)


def _check_not_overwriting(path: Path, overwrite: bool) -> None:
    """Refuse an output file that exists already, unless ``overwrite`` (checked before any work)."""
    if not overwrite and (path.exists() or path.is_symlink()):
        raise InputError(f"{path}: already exists (pass --overwrite to replace it)")


def _check_physics(photons: float, kvp: float, aluminium_mm: float) -> None:
    """Refuse infinite tube settings (their ranges are :class:`~biplanar.data.simulate.SimulationConfig`'s)."""
    for name, value in (("photons", photons), ("kvp", kvp), ("aluminium_mm", aluminium_mm)):
        if math.isinf(value):
            raise InputError(f"{name}: expected a finite number, got {value}")


def _names(values: Sequence[str] | str) -> tuple[str, ...]:
    """A sequence of names as a tuple; one name as a 1-tuple."""
    return (values,) if isinstance(values, str) else tuple(values)


def write_geometry(
    out: str | Path,
    ap_angle_deg: float = 0.0,
    lat_angle_deg: float = 90.0,
    image_shape: tuple[int, int] = (224, 160),
    pixel_spacing_mm: float = 0.93,
    overwrite: bool = False,
) -> dict[str, ProjectionView]:
    """Write an AP + LAT C-arm geometry file at the paper's distances (``biplanar geometry``).

    The source-detector distance is 1000 mm and the source-isocentre distance 925 mm; the file's
    ``carm`` views carry no isocentre, so a view is centred on the volume it is used with.

    Args:
        out: the ``geometry.json`` to write (``docs/contract.md`` section 2).
        ap_angle_deg: LAO/RAO angle of the AP view, degrees.
        lat_angle_deg: LAO/RAO angle of the LAT view, degrees.
        image_shape: ``(rows, cols)`` of both detectors, pixels.
        pixel_spacing_mm: detector pixel spacing (rows and columns), mm.
        overwrite: replace an existing ``out`` (otherwise refused).

    Returns:
        the views written, by name (``"AP"``, ``"LAT"``).

    Raises:
        InputError: ``out`` not ``.json``, not writable or existing (without ``overwrite``), an
            image shape out of 1..4096, a pixel spacing not finite and > 0, an angle not finite.
    """
    from biplanar.geometry.presets import biplanar_pair  # lazy: CLI start-up time
    from biplanar.io.geometry_file import write_geometry as write_geometry_file  # lazy: CLI start-up time

    _check_output_suffix(Path(out), (".json",))
    _check_output_file(Path(out))
    _check_not_overwriting(Path(out), overwrite)
    if len(image_shape) != 2 or not all(1 <= size <= MAX_IMAGE_SIDE for size in image_shape):
        raise InputError(f"image_shape: expected two sizes in 1..{MAX_IMAGE_SIDE}, got {image_shape}")
    require_positive("pixel_spacing_mm", pixel_spacing_mm)
    if not (math.isfinite(ap_angle_deg) and math.isfinite(lat_angle_deg)):
        raise InputError(f"ap_angle_deg, lat_angle_deg: expected finite angles, got {ap_angle_deg}, {lat_angle_deg}")
    rows, cols = (int(size) for size in image_shape)
    spacing = float(pixel_spacing_mm)
    views = biplanar_pair(float(ap_angle_deg), float(lat_angle_deg), (rows, cols), (spacing, spacing))
    write_geometry_file(out, views)
    return views


def geometry_from_dicom(
    ap: str | Path, lat: str | Path, out: str | Path, overwrite: bool = False
) -> dict[str, ProjectionView]:
    """Write the geometry two DICOM radiographs' tags give (``biplanar geometry --from-dicom``).

    The views are C-arms (docs/contract.md section 7: Positioner Primary / Secondary Angle or View
    Position; Distance Source to Detector / to Patient; Imager Pixel Spacing; Rows, Columns) without
    an isocentre, so each is centred on the volume it is used with. A user can check and edit the file
    and give it back with ``register --geometry``, which then overrides the tags.

    Args:
        ap: the AP radiograph (``.dcm``).
        lat: the LAT radiograph (``.dcm``).
        out: the ``geometry.json`` to write.
        overwrite: replace an existing ``out`` (otherwise refused).

    Returns:
        the views written, by name (``"AP"``, ``"LAT"``).

    Raises:
        InputError: not DICOM, or a tag the geometry needs is missing (named, with its number);
            an existing ``out`` (without ``overwrite``).
    """
    import numpy as np  # lazy: CLI start-up time

    from biplanar.io.dicom import views_from_dicom  # lazy: CLI start-up time
    from biplanar.io.geometry_file import write_geometry as write_geometry_file  # lazy: CLI start-up time

    _check_output_suffix(Path(out), (".json",))
    _check_output_file(Path(out))
    _check_not_overwriting(Path(out), overwrite)
    views = views_from_dicom(ap, lat, np.zeros(3))
    write_geometry_file(out, views)
    return views


def drr(
    volume: str | Path,
    geometry: str | Path,
    out: str | Path,
    view: str = "AP",
    mode: str = "line_integral",
    units: str = "hu",
    mu_water_per_mm: float = 0.02,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    photons: float = 1e5,
    seed: int = 0,
    kvp: float = 80.0,
    aluminium_mm: float = 2.5,
    preview: str | Path | None = None,
    overwrite: bool = False,
) -> np.ndarray:
    """Render a DRR of a volume for one view of a geometry file and write it (``biplanar drr``).

    Args:
        volume: NIfTI volume (``.nii``/``.nii.gz``), HU (``units="hu"``) or linear attenuation,
            1/mm (``units="mu"``).
        geometry: ``geometry.json``; a ``carm`` view without isocentre is centred on the volume.
        out: the image to write, ``.npy`` or ``.tif``, float32 ``(rows, cols)``.
        view: the name of the view in the geometry file.
        mode: ``line_integral`` (line integral of mu), ``beer_lambert`` (transmitted intensity
            ``exp(-L)``), ``poisson`` (quantum noise, log-transformed back), ``polychromatic``
            (two materials and a tube spectrum; HU volumes only) or ``clinical`` (a clinic's
            processed image at the default :class:`~biplanar.physics.clinical_appearance.ClinicalAppearance`,
            0 to 4095; HU volumes and C-arm views only); ``docs/contract.md`` section 3.
        units: ``hu`` or ``mu``: the volume's values.
        mu_water_per_mm: attenuation of water, 1/mm (HU volumes: ``mu = mu_water (1 + HU/1000)``).
        num_samples: samples per ray.
        photons: incident photons per pixel (``mode="poisson"``).
        seed: noise seed (``mode="poisson"``).
        kvp: tube voltage, kV (``mode="polychromatic"``).
        aluminium_mm: tube filtration, mm of aluminium (``mode="polychromatic"``).
        preview: also write an 8-bit ``.png`` preview here.
        overwrite: replace an existing ``out`` or ``preview`` (otherwise refused before any work).

    Returns:
        the ``(rows, cols)`` float32 image that was written.

    Raises:
        InputError: an unknown mode or units, an output format other than ``.npy``/``.tif`` (and
            ``.png`` for the preview), a missing or unreadable volume or geometry file, a view not
            in the file, or a ``polychromatic`` or ``clinical`` DRR of a volume not in HU; an
            existing ``out`` or ``preview`` (without ``overwrite``).
    """
    import torch  # lazy: CLI start-up time

    from biplanar.io.geometry_file import read_geometry, require_views  # lazy: CLI start-up time
    from biplanar.io.images import WRITE_SUFFIXES, write_image, write_preview_png  # lazy: CLI start-up time
    from biplanar.io.volumes import read_volume  # lazy: CLI start-up time
    from biplanar.physics.drr import (  # lazy: CLI start-up time
        RADIOGRAPH_MODES,
        RadiographSettings,
        render_ct_radiograph,
        render_drr,
    )

    if mode not in RADIOGRAPH_MODES:
        raise InputError(f"mode: expected one of {', '.join(RADIOGRAPH_MODES)}, got {mode!r}")
    if units not in VOLUME_UNITS:
        raise InputError(f"units: expected one of {', '.join(VOLUME_UNITS)}, got {units!r}")
    _check_output_suffix(Path(out), WRITE_SUFFIXES)
    if preview is not None:
        _check_output_suffix(Path(preview), (".png",))
    for path in (out, preview):
        if path is not None:
            _check_output_file(Path(path))
            _check_not_overwriting(Path(path), overwrite)
    require_positive("mu_water_per_mm", mu_water_per_mm)
    data, grid = read_volume(volume)
    views = read_geometry(geometry, default_isocenter_mm=grid.centre_world)
    require_views(views, [view], str(geometry))
    tensor = torch.from_numpy(data)[None, None]
    if mode in ("polychromatic", "clinical") and units != "hu":
        raise InputError(f"{volume}: the {mode} mode needs a volume in HU")
    generator = torch.Generator().manual_seed(seed)
    try:
        if units == "hu":
            settings = RadiographSettings(mode, num_samples, photons, kvp, aluminium_mm, mu_water_per_mm)
            image = render_ct_radiograph(tensor, views[view], grid, settings, generator)
        else:
            image = render_drr(tensor, views[view], grid, mode, num_samples, photons, generator)
    except ValueError as error:
        raise InputError(f"{geometry}: views.{view}: {error}") from None
    array = image[0, 0].numpy()
    write_image(out, array)
    if preview is not None:
        write_preview_png(preview, array)
    return array


def write_atlas(
    out: str | Path,
    preset: str | None = None,
    from_ct: str | Path | None = None,
    labels: str | Path | None = None,
    label: int | None = None,
    side: str | None = None,
    from_dataset: str | Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a femur atlas on a grid preset (``biplanar atlas``): the mean-shape phantom, one
    femur of a CT (the paper's atlas) or the mean of a simulated dataset (docs: the trade-off in
    :mod:`biplanar.data.ct_atlas`).

    Args:
        out: the folder to write ``atlas.nii.gz`` (int16 HU), ``atlas_labels.nii.gz`` (uint8,
            1 = femur), ``landmarks.json`` (hip landmarks, world mm) and ``atlas_surface.npz`` (the femur's
            smooth surface, which ``register`` carries) into; created if missing;
            must be new or empty (the mean-shape phantom: unless ``overwrite``; from a CT or a
            dataset: always, written all or nothing).
        preset: the grid preset, ``paper``, ``lite`` or ``tiny`` (default ``lite``; with
            ``from_dataset`` the dataset's); for ``register --atlas``, the model's.
        from_ct: a CT in HU (``.nii`` / ``.nii.gz``): build the atlas from one of its femurs,
            brought into the atlas frame as :func:`preprocess` does (a left femur mirrored).
        labels: with ``from_ct``: its label map on the CT's grid (e.g. TotalSegmentator's).
        label: with ``from_ct``: the femur's value in ``labels`` (TotalSegmentator: 75 left, 76 right).
        side: with ``from_ct``: ``"left"`` or ``"right"``.
        from_dataset: a ``biplanar simulate`` dataset: the mean atlas of its train subjects.
        progress: with ``from_dataset``: show a progress bar on stderr.
        overwrite: the mean-shape phantom only: write into a non-empty ``out``, replacing the three
            files (otherwise refused before any work).

    Returns:
        the atlas folder.

    Raises:
        InputError: an unknown preset; ``from_ct`` without ``labels``, ``label`` and ``side``, or
            with ``from_dataset``; a non-empty ``out`` (the phantom: without ``overwrite``); missing or
            mismatched files; a femur that cannot be measured or whose head radius or neck-shaft
            angle is not an adult's.
    """
    require_output_folder(Path(out))
    if from_ct is not None and from_dataset is not None:
        raise InputError("from_ct and from_dataset exclude each other")
    if overwrite and (from_ct is not None or from_dataset is not None):
        raise InputError("--overwrite: only for the phantom atlas (from a CT or a dataset, --out must be new or empty)")
    if from_ct is not None:
        if labels is None or label is None or side is None:
            raise InputError("from_ct needs labels, label and side")
        from biplanar.data.ct_atlas import atlas_from_ct  # lazy: CLI start-up time

        return atlas_from_ct(from_ct, labels, label, side, out, preset or "lite")
    if from_dataset is not None:
        from biplanar.data.ct_atlas import atlas_from_dataset  # lazy: CLI start-up time
        from biplanar.data.datasets import SimulatedDataset  # lazy: CLI start-up time

        SimulatedDataset(from_dataset, "train")  # refuses a broken dataset.json, split or subject first

        return atlas_from_dataset(from_dataset, out, preset, progress=progress)
    from biplanar.data.ct_atlas import atlas_from_phantom  # lazy: CLI start-up time

    if not overwrite and Path(out).is_dir() and any(Path(out).iterdir()):
        raise InputError(f"{out}: already exists and is not an empty folder (pass --overwrite to write into it)")
    return atlas_from_phantom(out, preset or "lite")


def simulate(
    out: str | Path,
    n: int,
    seed: int,
    geometry: str = "orthogonal",
    shapes: str = "mixed",
    preset: str = "lite",
    mode: str = "line_integral",
    scene: str = "body",
    photons: float = 1e5,
    kvp: float = 80.0,
    aluminium_mm: float = 2.5,
    pose_angle_deg: float = 10.0,
    pose_shift_mm: float = 3.0,
    bone_contrast: float = 1.0,
    shape_spread: float = 1.0,
    off_model_mm: float = 0.0,
    uniform_femur: bool = False,
    workers: int = 1,
    progress: bool = True,
) -> DatasetSummary:
    """Simulate a dataset of patients (``biplanar simulate``); re-running it resumes a stopped run.

    Each subject folder ``out/subjects/case_NNNNN/`` holds the CT (``ct.nii.gz``, HU) and femur
    labels (``labels.nii.gz``), the AP and LAT radiographs (``AP.npy``, ``LAT.npy``, float32), their
    femur masks and masked radiographs, and its ``geometry.json``; ``out`` also gets
    ``dataset.json`` (the settings) and ``split.json`` (train / val / test ids).

    Args:
        out: the dataset folder (created if missing).
        n: number of subjects, ``>= 1``.
        seed: dataset seed, ``>= 0`` (subject seeds derive from it).
        geometry: ``orthogonal`` (AP 0 deg, LAT 90 deg), ``generalized`` (angles +/-30 deg off
            those) or ``mixed`` (half each).
        shapes: femurs, ``phantom`` (parametric), ``ssm`` (drawn from the real-subject shape
            model) or ``mixed`` (half each).
        preset: grid and detector preset, ``paper``, ``lite`` or ``tiny``.
        mode: radiograph values, ``line_integral``, ``poisson``, ``polychromatic`` or ``clinical``
            (a clinic's processed image, 0 to 4095, its appearance drawn per subject; also written
            as ``AP.dcm`` and ``LAT.dcm``; docs/data.md).
        scene: what the radiographs project: ``body`` (the patient around the CT: body outline,
            skin, air, both hips; the CT is cut from it, so no box edge shows) or ``grid`` (the CT
            alone, as datasets made before scenes).
        photons: incident photons per pixel (``mode="poisson"``).
        kvp: tube voltage, kV (``mode="polychromatic"``).
        aluminium_mm: tube filtration, mm of aluminium (``mode="polychromatic"``).
        pose_angle_deg: largest flexion, abduction and rotation of the leg, deg (each uniform in
            +-this; the paper's population: 10).
        pose_shift_mm: largest translation of the patient along each axis, mm.
        bone_contrast: largest bone contrast factor, in ``[1, 4]``: each subject's radiographs are
            rendered with bone (voxels above 350 HU) attenuating up to that many times as much,
            the factor uniform in ``[1, bone_contrast]`` (1: none; docs/data.md).
        shape_spread: standard deviation of the shape-model femurs' mode weights, in ``(0, 3]``
            (1: the model's own population; 1.5 draws more femurs near its +-3 sd edges; docs/data.md).
        off_model_mm: move each shape-model femur off the model by this root mean square along its
            normals, mm, in ``[0, 3]``: a femur no combination of the model's modes makes, as another
            cohort's (0: none; docs/data.md, "Femurs off the shape model").
        uniform_femur: render each subject's femur at one CT number (uniform in 300-1500 HU per
            subject), as a projector given a voxelised femur mesh would; the CT written is unchanged.
        workers: parallel worker processes.
        progress: show a progress bar on stderr.

    Returns:
        the dataset folder and the subject ids written now and found complete.

    Raises:
        InputError: a bad setting, or ``out`` holding a dataset made with another seed or settings.
    """
    from biplanar.data.simulate import SimulationConfig, simulate_dataset  # lazy: CLI start-up time

    require_output_folder(Path(out))
    _check_physics(photons, kvp, aluminium_mm)
    config = SimulationConfig(
        preset=preset,
        geometry=geometry,
        shapes=shapes,
        scene=scene,
        mode=mode,
        photons=photons,
        kvp=kvp,
        aluminium_mm=aluminium_mm,
        pose_angle_deg=pose_angle_deg,
        pose_shift_mm=pose_shift_mm,
        bone_contrast=bone_contrast,
        shape_spread=shape_spread,
        off_model_mm=off_model_mm,
        uniform_femur=uniform_femur,
    )
    return simulate_dataset(out, n, seed, config, workers=workers, progress=progress)


def simulate_from_ct(
    ct_dir: str | Path,
    out: str | Path,
    seed: int,
    femur_labels: str | dict[str, int] | None = None,
    keep_sides: bool = False,
    geometry: str = "orthogonal",
    preset: str = "lite",
    mode: str = "line_integral",
    scene: str = "body",
    photons: float = 1e5,
    kvp: float = 80.0,
    aluminium_mm: float = 2.5,
    workers: int = 1,
    progress: bool = True,
) -> FromCtSummary:
    """A dataset from a folder of CTs and label maps (``biplanar simulate --from-ct``): one subject
    per femur, preprocessed into the atlas frame and rendered as :func:`simulate` renders its
    phantoms, in the same layout (:mod:`biplanar.data.from_ct`; docs/own_data.md).

    Args:
        ct_dir: the folder: ``<id>.nii.gz`` + ``<id>_labels.nii.gz`` pairs, or a ``manifest.csv``
            (columns ``id``, ``ct``, ``labels``).
        out: the dataset folder (created if missing; re-running resumes).
        seed: dataset seed, ``>= 0`` (case seeds and the split, which goes by scan).
        femur_labels: side -> label value, as a dict or ``"right=76,left=75"`` (default:
            TotalSegmentator v2's ``femur_right`` 76, ``femur_left`` 75).
        keep_sides: keep left femurs left instead of mirroring them to right ones.
        geometry: ``orthogonal``, ``generalized`` or ``mixed``, as :func:`simulate`.
        preset: grid and detector preset, ``paper``, ``lite`` or ``tiny``.
        mode: radiograph values, as :func:`simulate`.
        scene: what the radiographs project: ``body`` (the whole CT around the grid) or ``grid``
            (the grid's CT alone).
        photons: incident photons per pixel (``mode="poisson"``).
        kvp: tube voltage, kV (``mode="polychromatic"``).
        aluminium_mm: tube filtration, mm of aluminium (``mode="polychromatic"``).
        workers: parallel worker processes (one femur each).
        progress: show a progress bar on stderr.

    Returns:
        the subjects written now, those found complete, and the femurs skipped with their reasons.

    Raises:
        InputError: a bad folder or setting, ``out`` holding another dataset, or no usable femur.
    """
    from biplanar.data import from_ct  # lazy: CLI start-up time
    from biplanar.data.simulate import SimulationConfig  # lazy: CLI start-up time

    if not 1 <= workers <= MAX_WORKERS:
        raise InputError(f"workers: expected a number of processes in 1..{MAX_WORKERS}, got {workers}")
    if scene not in ("body", "grid"):
        raise InputError(f"scene: expected body or grid with a CT folder, got {scene!r}")
    require_output_folder(Path(out))
    _check_physics(photons, kvp, aluminium_mm)
    config = SimulationConfig(
        preset=preset, geometry=geometry, scene=scene, mode=mode, photons=photons, kvp=kvp, aluminium_mm=aluminium_mm
    )
    labels = from_ct.parse_femur_labels(femur_labels) if isinstance(femur_labels, str) else femur_labels
    return from_ct.simulate_from_ct(ct_dir, out, seed, config, labels, keep_sides, workers, progress)


def train(
    config: str | Path,
    out: str | Path,
    data: str | Path | Sequence[str | Path] | None = None,
    on_the_fly: int | None = None,
    resume: bool = False,
    epochs: int | None = None,
    progress: bool = True,
    init: str | Path | None = None,
) -> TrainResult:
    """Train the registration network (``biplanar train``; also under ``torchrun``).

    Writes ``out/last.pt`` and ``out/best.pt`` (checkpoints), ``out/metrics.csv`` and TensorBoard
    logs. Ctrl-C or SIGTERM writes ``last.pt`` and raises
    :class:`~biplanar.training.trainer.TrainingInterrupted`; ``resume=True`` continues from it.

    Args:
        config: a config YAML file, or a preset name: ``paper``, ``lite``, ``tiny``.
        out: the run folder (created).
        data: a :func:`simulate` dataset folder (``train`` and ``val`` splits), or several trained together...
        on_the_fly: ...or instead this many fresh subjects per epoch, simulated in memory.
        resume: continue the run in ``out`` exactly.
        epochs: override the config's ``training.epochs`` (the total, counting done epochs).
        progress: show a progress bar on stderr (rank 0).
        init: fine-tune: start from this checkpoint's weights (e.g. the bundled model), same network.

    Returns:
        the epochs and steps done, the best validation Dice (NaN without validation), the
        checkpoints and the metrics history.

    Raises:
        InputError: bad data or config, a dataset or checkpoint that does not fit, ``out`` holding a
            run without ``resume`` (or none with it).
        TrainingInterrupted: Ctrl-C / SIGTERM, after writing ``last.pt``.
    """
    from biplanar.training.trainer import TrainingRun  # lazy: CLI start-up time
    from biplanar.training.trainer import train as run_training  # lazy: CLI start-up time

    require_output_folder(Path(out))
    run = TrainingRun(Path(out), data_dir=data, on_the_fly=on_the_fly, resume=resume, epochs=epochs, progress=progress)
    return run_training(config, run, init=init)


def train_baseline(
    method: str,
    data: str | Path,
    out: str | Path,
    config: str | Path = "lite",
    resume: bool = False,
    epochs: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a learned baseline of the paper's Table 1 (``biplanar train-baseline``).

    Writes checkpoints, ``metrics.csv`` and TensorBoard logs into ``out`` (``sdm``: also its
    statistical deformation model); Ctrl-C checkpoints as :func:`train`.

    Args:
        method: ``kasten`` (direct label regression) or ``sdm`` (statistical deformation model).
        data: a :func:`simulate` dataset folder.
        out: the run folder (created).
        config: a config YAML file or a preset name, ``paper``, ``lite``, ``tiny`` (sets the sizes).
        resume: continue the run in ``out`` exactly.
        epochs: override the config's ``training.epochs`` (the total).
        progress: show progress bars on stderr.

    Returns:
        the epochs and steps done, the best validation Dice (NaN without validation), the
        checkpoints and the metrics history.

    Raises:
        InputError: an unknown method, bad data or config, ``out`` holding a run without ``resume``.
        TrainingInterrupted: Ctrl-C / SIGTERM, after writing ``last.pt``.
    """
    from biplanar.training.baselines import train_baseline as run_training  # lazy: CLI start-up time
    from biplanar.training.trainer import TrainingRun  # lazy: CLI start-up time

    require_output_folder(Path(out))
    return run_training(
        method, config, TrainingRun(Path(out), data_dir=data, resume=resume, epochs=epochs, progress=progress)
    )


def segment(
    image: str | Path,
    out: str | Path,
    geometry: str | Path | None = None,
    view: str = "AP",
    side: str | None = None,
    intensity: str = "auto",
    air_level: float | None = None,
    segmentation_model: str | Path | None = None,
    model: str | Path | None = None,
    overwrite: bool = False,
) -> np.ndarray:
    """The 2D femur mask of one radiograph, as ``register`` makes it without masks (``biplanar segment``).

    Args:
        image: the radiograph (``.dcm``, ``.npy``, ``.tif``, ``.png``), any detector.
        out: the mask to write: ``.png`` (8-bit, 255 = femur) on the radiograph's own pixels.
        geometry: ``geometry.json`` holding the view (default: the DICOM tags, or for an array of the
            model detector's shape the paper's C-arm view of that name).
        view: the view's name in ``geometry`` (``"AP"`` or ``"LAT"``).
        side: ``"left"`` or ``"right"`` (default: the DICOM laterality, else right).
        intensity: ``"auto"``, ``"line-integral"`` or ``"transmission"``.
        air_level: unattenuated level of a transmission image (default: estimated).
        segmentation_model: the segmentation checkpoint (default: the bundled one).
        model: the registration checkpoint whose detector and atlas are used (default: the bundled one).
        overwrite: replace an existing ``out`` (otherwise refused before any work).

    Returns:
        the ``(rows, cols)`` boolean mask written.

    Raises:
        InputError: a bad radiograph, geometry or checkpoint, ``out`` not ``.png``, or an existing
            ``out`` (without ``overwrite``).
    """
    from biplanar.devices import default_device  # lazy: CLI start-up time
    from biplanar.io.images import write_mask_png  # lazy: CLI start-up time
    from biplanar.registration.inputs import segment_file  # lazy: CLI start-up time
    from biplanar.registration.pipeline import model_detector, segmenter  # lazy: CLI start-up time
    from biplanar.training.checkpoints import bundled_model_path, load_model  # lazy: CLI start-up time

    _check_output_suffix(Path(out), (".png",))
    _check_output_file(Path(out))
    _check_not_overwriting(Path(out), overwrite)
    require_positive("air_level", air_level)
    if view not in ("AP", "LAT"):
        raise InputError(f"--view: expected AP or LAT, got {view!r}")
    device = default_device()
    network, config = load_model(bundled_model_path() if model is None else model, device)
    mask, _ = segment_file(
        Path(image),
        model_detector(network, config),
        segmenter(segmentation_model, device),
        None if geometry is None else Path(geometry),
        view,
        side,
        intensity,
        air_level,
    )
    write_mask_png(out, mask)
    return mask


def preprocess(
    ct: str | Path, labels: str | Path, label: int, side: str, out: str | Path, preset: str = "lite"
) -> PreprocessResult:
    """Bring one femur of a real CT into the atlas frame and grid (``biplanar preprocess``).

    Writes ``out/ct.nii.gz`` (float32 HU) and ``out/labels.nii.gz`` (uint8, 1 = femur) on the
    preset's grid, and ``out/frame.json`` (the femur's axes in the input CT's world mm, the
    output-to-input matrix, the side).

    Args:
        ct: NIfTI CT in HU.
        labels: NIfTI label map on the CT's grid (e.g. TotalSegmentator's: 75 femur_left,
            76 femur_right).
        label: the femur's value in ``labels``.
        side: ``left`` or ``right``: the femur's side (a left femur is mirrored to a right one).
        out: the output folder (created).
        preset: the output grid preset, ``paper``, ``lite`` or ``tiny``.

    Returns:
        the resampled CT and labels, their grid and the femur's frame (axes, head radius,
        neck-shaft angle).

    Raises:
        InputError: missing or unreadable files, CT and labels on different grids, ``label``
            absent, a bad side or preset, a femur too small, cut off or of the other side.
    """
    from biplanar.data.preprocess import preprocess_femur  # lazy: CLI start-up time

    require_output_folder(Path(out))
    return preprocess_femur(ct, labels, label, side, out, preset)


def run_demo(
    out: str | Path = "biplanar_demo",
    model: str | Path | None = None,
    seed: int | None = None,
    progress: bool = True,
    clinical: bool = False,
) -> DemoResult:
    """Simulate a held-out patient, register the atlas to its radiographs, score it (``biplanar demo``).

    Writes ``out/inputs/`` (the patient's CT, radiographs, geometry), ``out/registration/`` (the
    :func:`register` outputs), ``out/figure.png`` and ``out/demo.json`` (scores and timings).

    Args:
        out: the demo folder; must be new or empty.
        model: a checkpoint (default: the bundled ``lite`` model); the grid and detector follow it.
        seed: the patient's case seed (default: the held-out demo seed, never a training subject).
        progress: print the stages on stderr.
        clinical: also register the patient from two clinic DICOM files alone (transmission, 448 x 320
            at 0.6 mm, geometry from the tags, no masks) into ``out/registration_clinical/``.

    Returns:
        the registration report, the network's timings and the hip measurements vs the truth.

    Raises:
        InputError: a non-empty ``out``, a bad checkpoint or no bundled model; a failed demo removes
            what it wrote.
    """
    from biplanar.demo import DEMO_SEED  # lazy: CLI start-up time
    from biplanar.demo import run_demo as run  # lazy: CLI start-up time

    require_output_folder(Path(out))
    return run(out, model, DEMO_SEED if seed is None else seed, progress=progress, clinical=clinical)


def demo_summary_tables(result: DemoResult) -> list[Table]:
    """The rich tables ``biplanar demo`` prints for a :func:`run_demo` result.

    Args:
        result: what :func:`run_demo` returned.

    Returns:
        the scores and timings table and, when measured, the hip measurements vs the truth.
    """
    from biplanar.demo import summary_tables  # lazy: CLI start-up time

    return list(summary_tables(result))


def estimate_pose(
    ct: str | Path,
    geometry: str | Path,
    ap: str | Path,
    out: str | Path,
    lat: str | Path | None = None,
    method: str = "opt-gc",
    init_pose: str | Path | None = None,
    units: str = "hu",
    mu_water_per_mm: float = 0.02,
    levels_mm: Sequence[float] = (12.0, 6.0),
    evaluations: int = 150,
    refine_steps: int = 10,
    sigma_deg: float = 5.0,
    sigma_mm: float = 10.0,
    rtpi: str | Path | None = None,
    fine: str | Path | None = None,
    turns: int = 8,
    progress: bool = True,
    overwrite: bool = False,
) -> PoseReport:
    """Estimate the rigid pose of a CT to one or two radiographs (``biplanar pose``).

    Writes ``out/pose.json`` (the 4x4 matrix, rotation in deg and translation in mm about the CT
    centre, similarities, timings), ``out/geometry_corrected.json`` (every view of the geometry
    file composed with the pose) and ``out/overlay_<view>.png``.

    Args:
        ct: CT volume (NIfTI), HU (``units="hu"``) or attenuation 1/mm (``units="mu"``).
        geometry: ``geometry.json`` with the views of the radiographs (``AP``, ``LAT``).
        ap: the AP radiograph (``.npy``, ``.tif``, ``.png``, ``.dcm``), line-integral-like (bone bright).
        out: the output folder: new or empty (it appears complete, all files at once).
        lat: the LAT radiograph (optional).
        method: ``opt-gc``, ``opt-ncc``, ``opt-ngi`` (optimisation baselines), ``sopi`` or
            ``sopi+opt`` (SOPI, then Opt-GC refinement).
        init_pose: JSON with the starting 4x4 ``"matrix"`` (e.g. a ``pose.json``; optimisation
            methods only).
        units: ``hu`` or ``mu``: the CT's values.
        mu_water_per_mm: attenuation of water, 1/mm (HU volumes).
        levels_mm: resolution levels, mm at the CT centre, coarse to fine.
        evaluations: CMA-ES evaluations per level.
        refine_steps: L-BFGS iterations at the finest level.
        sigma_deg: CMA-ES initial rotation step, deg (about the initial error).
        sigma_mm: CMA-ES initial translation step, mm.
        rtpi: SOPI RTPI checkpoint (methods ``sopi``, ``sopi+opt``; with ``fine``; default: the
            bundled ``sopi_lite`` networks: femur, 112x80 images at 1.86 mm).
        fine: SOPI fine-registration checkpoint (with ``rtpi``).
        turns: ``sopi+opt`` refines SOPI's pose from this many starts turned about the CT's long
            axis (world ``z``), keeping the best (1: SOPI's pose alone).
        progress: print the stages on stderr.
        overwrite: write into an ``out`` that holds files (those of the same names are replaced).

    Returns:
        the output folder and the contents of ``pose.json``.

    Raises:
        InputError: bad settings, only one of ``rtpi`` and ``fine``, an unknown method or units, a
            method that cannot run with these inputs, missing or malformed files, an ``out`` that
            holds files (without ``overwrite``).
    """
    from biplanar.pose.baselines import OptimisationConfig  # lazy: CLI start-up time
    from biplanar.pose.estimate import (  # lazy: CLI start-up time
        SopiCheckpoints,
        bundled_sopi_checkpoints,
        estimate_pose_files,
    )

    try:
        config = OptimisationConfig(
            levels_mm=tuple(float(size) for size in levels_mm),
            max_evaluations=evaluations,
            refine_steps=refine_steps,
            sigma_deg=sigma_deg,
            sigma_mm=sigma_mm,
        )
    except ValueError as error:
        raise InputError(f"--levels/--evaluations/--sigma: {error}") from None
    require_positive("mu_water_per_mm", mu_water_per_mm)
    if (rtpi is None) != (fine is None):
        raise InputError("--rtpi, --fine: give both SOPI checkpoints or neither (the bundled ones)")
    checkpoints = (
        bundled_sopi_checkpoints() if rtpi is None or fine is None else SopiCheckpoints(Path(rtpi), Path(fine))
    )
    images = {"AP": ap, **({} if lat is None else {"LAT": lat})}
    require_output_folder(Path(out))
    return estimate_pose_files(
        ct,
        geometry,
        images,
        out,
        method,
        init_pose,
        units,
        mu_water_per_mm,
        config,
        checkpoints,
        turns=turns,
        progress=progress,
        overwrite=overwrite,
    )


def evaluate_pose(
    out: str | Path,
    datasets: Sequence[str] | str | None = None,
    ranges: Sequence[str] | str | None = None,
    cases: int = 10,
    seed: int = 0,
    methods: Sequence[str] | str | None = None,
    rtpi: Sequence[str | Path] | str | Path | None = None,
    fine: Sequence[str | Path] | str | Path | None = None,
    evaluations: int = 150,
    refine_steps: int = 10,
    max_levels: int | None = None,
    turns: int = 8,
    appearance: str = "line-integral",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Rigid pose accuracy in SOPI's Table 1 style (``biplanar evaluate-pose``).

    Poses the real lumbar CT and femur phantoms at random true poses, estimates them back with each
    method and writes ``out/cases.csv`` (errors per case, deg and mm) and ``out/summary.md``,
    rewritten after each dataset and range.

    Args:
        out: the output folder (created).
        datasets: ``lumbar`` and/or ``femur`` (default: both).
        ranges: pose ranges, ``small`` and/or ``wide`` (default: both).
        cases: cases per dataset and range.
        seed: seed of the true poses.
        methods: some of ``opt-gc``, ``opt-ncc``, ``opt-ngi``, ``sopi``, ``sopi+opt`` (default: the
            three optimisation baselines).
        rtpi: SOPI RTPI checkpoints for methods ``sopi``, ``sopi+opt``: entries ``DATASET=PATH``
            (that dataset) or ``PATH`` (every dataset).
        fine: SOPI fine-registration checkpoints, as ``rtpi``.
        evaluations: CMA-ES evaluations per level.
        refine_steps: L-BFGS iterations at the finest level.
        max_levels: use only the coarsest ``max_levels`` levels of each dataset (default: all).
        turns: ``sopi+opt`` refines SOPI's pose from this many starts turned about the CT's long
            axis, keeping the best (1: SOPI's pose alone).
        appearance: the radiographs: ``line-integral`` (noise-free DRRs) or ``clinical`` (a clinic's
            processed images of them, parameters drawn per case).
        progress: show a progress bar on stderr.

    Returns:
        the rows of ``cases.csv``.

    Raises:
        InputError: an unknown dataset, range or method, ``cases < 1``, missing checkpoints or
            checkpoints given for different datasets.
    """
    from biplanar.evaluation.pose_accuracy import (  # lazy: CLI start-up time
        SearchEffort,
        StudySettings,
        evaluate_pose_accuracy,
        sopi_checkpoints,
    )

    require_output_folder(Path(out))
    effort = SearchEffort(evaluations, refine_steps, max_levels, turns)
    defaults = StudySettings(cases=cases, seed=seed, effort=effort, appearance=appearance)
    settings = replace(
        defaults,
        datasets=defaults.datasets if datasets is None else _names(datasets),
        ranges=defaults.ranges if ranges is None else _names(ranges),
        methods=defaults.methods if methods is None else _names(methods),
    )
    return evaluate_pose_accuracy(out, settings, sopi_checkpoints(rtpi, fine), progress=progress)
