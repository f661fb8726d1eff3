"""Rigid pose estimation accuracy in the manner of SOPI's Table 1 (Chen et al. 2023).

``biplanar evaluate-pose`` and the ``pose_accuracy`` stage of ``biplanar experiments`` run
:func:`run_study`. For every dataset and pose range, ``cases`` cases: a CT, a true pose ``A`` (the
rigid map moving the CT, :mod:`biplanar.pose.estimate`'s convention) with rotations ``rx, ry, rz ~
N(0, sigma_r)`` and translations ``tx, ty, tz ~ N(0, sigma_t)`` per axis about the CT centre
(:func:`biplanar.geometry.transforms.rigid_matrix`), an AP and a LAT radiograph rendered at ``A`` (noise-free ProST line
integrals, samples one voxel apart, rays long enough for the moved CT), and every method started at
the identity. With ``appearance="clinical"`` each line integral is then turned into a clinic's
processed image (:func:`biplanar.physics.clinical_appearance.clinical_radiograph`: scatter, quantum
and electronic noise, detector blur, log, unsharp masking, windowing, 12-bit; its parameters drawn
per case by :meth:`~biplanar.physics.clinical_appearance.ClinicalAppearance.draw`; monochromatic,
so without beam hardening), so that the radiographs are no longer DRRs of the CT.

Datasets (:data:`DATASETS`):

- ``lumbar``: the real CT shipped with the package (:data:`biplanar.data.real_ct.REAL_CT`) (3 mm
  voxels, abdomen to hips), the same CT in every case; detectors 128 x 128 of 3 mm pixels;
  optimisation levels 12 and 6 mm.
- ``femur``: femur phantoms ``make_subject(10000 + case, "lite")`` (proximal femur, pelvis piece,
  soft tissue; 1.33 x 1.33 x 2 mm voxels), a new subject per case; the ``lite`` detectors
  (112 x 80 of 1.86 mm); levels 6 and 3 mm.

Both use the paper's distances (source-detector 1000 mm, source-isocentre 925 mm, isocentre the CT
centre), AP at 0 and LAT at 90 degrees.

Pose ranges (:data:`RANGES`), per axis:

- ``small``: rotations N(0, 5 deg); translations N(0, 10 mm) for the lumbar CT, N(0, 5 mm) for
  the smaller femur field of view.
- ``wide``: scaled from SOPI's ranges. Rotations N(0, 20 deg) as SOPI's. SOPI draws translations
  N(0, 100), N(0, 30), N(0, 15) mm, the largest spread along the depth of its single view, to which
  one radiograph is nearly blind; with two orthogonal views every axis lies in the image plane of
  at least one view, so we use SOPI's in-plane scale, N(0, 30 mm), on every axis for the lumbar
  CT, halved to N(0, 15 mm) for the femur's smaller field of view.

Each case draws six standard normals ``z`` once (seeded by ``seed`` and the dataset) and every
range scales the same ``z`` by its sigmas, so the ranges pose the same directions of error.

Methods: the optimisation baselines ``opt-ncc``, ``opt-gc``, ``opt-ngi``
(:mod:`biplanar.pose.baselines`; CMA-ES step sizes = the range's sigmas, the expected error of the
start) and, on the datasets given SOPI checkpoints (per dataset: :func:`sopi_checkpoints`), ``sopi`` and
``sopi+opt`` (:func:`biplanar.pose.estimate.estimate`).
Errors: rotation = geodesic angle (deg), translation = displacement of the CT centre (mm), per axis
= |difference of the Euler parameters| (deg, mm); success = rotation < 3 deg and translation < 3 mm
(SOPI's criterion). Each case also has an ``initial`` row: the errors of the identity start.
Every row also has ``ncc`` and ``gc``: the lower over the two views of each similarity between the
radiograph and the full-resolution DRR at the row's pose (what ``pose.json``'s ``similarity`` and
``quality`` blocks hold; :func:`biplanar.pose.estimate.image_similarities`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from biplanar.data.phantom import make_subject
from biplanar.data.real_ct import REAL_CT
from biplanar.errors import InputError
from biplanar.evaluation.evaluate import rows_to_csv
from biplanar.evaluation.statistics import Summary, summarise
from biplanar.geometry.presets import biplanar_pair
from biplanar.geometry.projection import ProjectionView
from biplanar.geometry.se3 import pose_errors
from biplanar.geometry.transforms import rigid_matrix, rigid_params
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.io.atomic import atomic_write_text
from biplanar.io.volumes import read_volume
from biplanar.layers.prost import SUPPORT_PAD_VOX
from biplanar.physics.attenuation import hu_to_mu
from biplanar.physics.clinical_appearance import ClinicalAppearance, clinical_radiograph
from biplanar.pose.baselines import METHODS, OptimisationConfig
from biplanar.pose.estimate import (
    SOPI_METHODS,
    SOPI_REFINE_TURNS,
    SopiCheckpoints,
    estimate,
    image_similarities,
    render_drrs,
)
from biplanar.pose.sopi import load_sopi_network
from biplanar.progress import progress_bar, ticker

FEMUR_SEED_OFFSET = 10_000  # femur case ``c`` is the phantom subject ``10000 + c`` (away from the datasets' seeds)
SUCCESS_DEG, SUCCESS_MM = 3.0, 3.0  # SOPI's success criterion: rotation and translation errors below both
SEARCH_MARGIN_SIGMAS = 2.0  # the optimisers' rays cover the CT moved by this many sigmas (search_margin_mm)
INITIAL = "initial"  # the method name of the identity start's rows
BASELINE_METHODS = tuple(sorted(METHODS))
STUDY_METHODS = (*BASELINE_METHODS, *SOPI_METHODS)
SopiNetworks = dict[str, SopiCheckpoints]  # dataset name -> the SOPI networks trained for it
AXES = (("rx", "deg"), ("ry", "deg"), ("rz", "deg"), ("tx", "mm"), ("ty", "mm"), ("tz", "mm"))
# SOPI's own result (Chen et al. 2023, Table 1, "SOPI"): their CT and a single X-ray, their pose ranges.
SOPI_PUBLISHED = {"rotation_deg": 1.89, "translation_mm": 4.53, "failure_rate": 0.224, "time_s": 4.64}


@dataclass(frozen=True)
class PoseRange:
    """Standard deviations of the true pose's parameters, per axis."""

    sigma_deg: float
    sigma_mm: float


@dataclass(frozen=True)
class Dataset:
    """How one dataset's cases are made (module doc).

    Attributes:
        name: ``lumbar`` or ``femur``.
        description: a few words for the report.
        levels_mm: the optimisers' resolution levels, coarse to fine, mm.
        image_shape: ``(rows, cols)`` of both detectors.
        pixel_mm: detector pixel spacing, mm.
        ranges: range name -> its sigmas for this dataset.
    """

    name: str
    description: str
    levels_mm: tuple[float, ...]
    image_shape: tuple[int, int]
    pixel_mm: float
    ranges: dict[str, PoseRange] = field(hash=False)


DATASETS = {
    "lumbar": Dataset(
        "lumbar",
        "the real lumbar-pelvis CT (3 mm voxels), 128 x 128 detectors of 3 mm",
        (12.0, 6.0),
        (128, 128),
        3.0,
        {"small": PoseRange(5.0, 10.0), "wide": PoseRange(20.0, 30.0)},
    ),
    "femur": Dataset(
        "femur",
        "femur phantoms (lite grid, a new subject per case), 112 x 80 detectors of 1.86 mm",
        (6.0, 3.0),
        (112, 80),
        1.86,
        {"small": PoseRange(5.0, 5.0), "wide": PoseRange(20.0, 15.0)},
    ),
}
RANGES = ("small", "wide")
APPEARANCES = ("line-integral", "clinical")  # how the cases' radiographs look (module doc)


@dataclass(frozen=True)
class SearchEffort:
    """How hard the optimisation baselines search (their other settings come from the dataset and range).

    Attributes:
        max_evaluations: CMA-ES similarity evaluations per level.
        refine_steps: L-BFGS iterations at the finest level.
        max_levels: use only the coarsest ``max_levels`` of the dataset's levels (``None``: all).
        turns: ``sopi+opt``'s refinement starts about the CT's long axis
            (:func:`biplanar.pose.baselines.refine_turned`).
    """

    max_evaluations: int = 150
    refine_steps: int = 10
    max_levels: int | None = None
    turns: int = SOPI_REFINE_TURNS

    def __post_init__(self) -> None:
        levels_ok = self.max_levels is None or self.max_levels >= 1
        if self.max_evaluations < 0 or self.refine_steps < 0 or not levels_ok or self.turns < 1:
            raise InputError(
                f"search effort: expected evaluations >= 0, refine steps >= 0, levels >= 1, turns >= 1; got "
                f"{self.max_evaluations}, {self.refine_steps}, {self.max_levels}, {self.turns}"
            )


@dataclass(frozen=True)
class StudySettings:
    """What :func:`run_study` evaluates (module doc); checked on creation (``InputError``)."""

    datasets: tuple[str, ...] = tuple(DATASETS)
    ranges: tuple[str, ...] = RANGES
    cases: int = 10
    seed: int = 0
    methods: tuple[str, ...] = BASELINE_METHODS
    effort: SearchEffort = field(default_factory=SearchEffort)
    appearance: str = APPEARANCES[0]

    def __post_init__(self) -> None:
        for option, values, allowed in (
            ("--datasets", self.datasets, tuple(DATASETS)),
            ("--ranges", self.ranges, RANGES),
            ("--methods", self.methods, STUDY_METHODS),
            ("--appearance", (self.appearance,), APPEARANCES),
        ):
            unknown = [value for value in values if value not in allowed]
            if unknown or not values:
                raise InputError(f"{option}: expected some of {', '.join(allowed)}, got {', '.join(values) or 'none'}")
        if self.cases < 1:
            raise InputError(f"--n: expected >= 1 cases, got {self.cases}")

    def methods_for(self, dataset: str, networks: SopiNetworks) -> tuple[str, ...]:
        """The methods scored on ``dataset``: SOPI's only where ``networks`` has that dataset's."""
        return tuple(method for method in self.methods if method not in SOPI_METHODS or dataset in networks)

    def runs(self, networks: SopiNetworks) -> int:
        """Pose estimations the study makes (one progress step each)."""
        return sum(len(self.ranges) * self.cases * len(self.methods_for(name, networks)) for name in self.datasets)


def sopi_checkpoints(
    rtpi: Sequence[str | Path] | str | Path | None,
    fine: Sequence[str | Path] | str | Path | None,
    options: tuple[str, str] = ("--rtpi", "--fine"),
) -> SopiNetworks:
    """Dataset -> its SOPI checkpoints, from entries ``DATASET=PATH`` (that dataset) or ``PATH`` (every other).

    SOPI's networks are trained per anatomy and image size (``sopi_lite``: femur; ``sopi_lumbar``: the
    real CT), so each dataset names its own. Raises ``InputError`` naming ``options`` for an unknown
    dataset, a missing file, or RTPI and fine checkpoints given for different datasets.
    """
    rtpi_by, fine_by = _paths_by_dataset(rtpi, options[0]), _paths_by_dataset(fine, options[1])
    if set(rtpi_by) != set(fine_by):
        raise InputError(
            f"{options[0]}, {options[1]}: give both SOPI checkpoints for the same datasets, got "
            f"{', '.join(rtpi_by) or 'none'} and {', '.join(fine_by) or 'none'}"
        )
    return {name: SopiCheckpoints(rtpi_by[name], fine_by[name]) for name in rtpi_by}


def _paths_by_dataset(entries: Sequence[str | Path] | str | Path | None, option: str) -> dict[str, Path]:
    entries = [] if entries is None else [entries] if isinstance(entries, (str, Path)) else list(entries)
    split = [str(entry).partition("=") for entry in entries]
    paths = {}
    for name, separator, path in sorted(split, key=lambda parts: bool(parts[1])):  # PATH first, DATASET=PATH over it
        if separator and name not in DATASETS:
            raise InputError(f"{option} {name}={path}: unknown dataset {name!r}, expected one of {', '.join(DATASETS)}")
        path = path if separator else name
        if not Path(path).is_file():
            raise InputError(f"{option} {path}: file not found")
        paths.update(dict.fromkeys([name] if separator else DATASETS, Path(path)))
    return {name: paths[name] for name in DATASETS if name in paths}


def check_inputs(settings: StudySettings, networks: SopiNetworks) -> None:
    """``InputError`` before any work: SOPI methods with no dataset's networks, or a checkpoint the
    study would use that does not load (each is loaded once here, so that a broken file fails the
    command instead of scoring every case as failed)."""
    if not any(method in SOPI_METHODS for method in settings.methods):
        return
    if not set(settings.datasets) & set(networks):
        raise InputError(
            f"--methods sopi, sopi+opt: need the SOPI checkpoints (--rtpi and --fine) of one of the "
            f"datasets {', '.join(settings.datasets)}"
        )
    for name in set(settings.datasets) & set(networks):
        load_sopi_network(networks[name].rtpi, "rtpi")
        load_sopi_network(networks[name].fine, "fine")


# --- cases --------------------------------------------------------------------------------------


def load_ct(dataset: Dataset, case: int) -> tuple[Tensor, VolumeGrid]:
    """``(1, 1, I, J, K)`` attenuation (1/mm) of ``case``'s CT, and its grid (world RAS+ mm)."""

    if dataset.name == "lumbar":
        data, grid = read_volume(REAL_CT)
        return hu_to_mu(torch.from_numpy(np.asarray(data, dtype=np.float32)))[None, None], grid

    subject = make_subject(FEMUR_SEED_OFFSET + case, "lite")
    return hu_to_mu(torch.from_numpy(subject.ct_hu))[None, None], subject.grid


def standard_draws(seed: int, dataset: str, cases: int) -> np.ndarray:
    """``(cases, 6)`` standard normals, one row per case, independent between datasets."""
    rng = np.random.default_rng([seed, list(DATASETS).index(dataset)])
    return rng.standard_normal((cases, 6))


def pose_from_draw(draw: np.ndarray, pose_range: PoseRange, centre_mm: np.ndarray) -> Tensor:
    """``(..., 4, 4)`` float64 true poses: ``draw`` ``(..., 6)`` standard normals scaled by the range's sigmas.

    ``(rx, ry, rz)`` times ``sigma_r`` (deg, then rad), ``(tx, ty, tz)`` times ``sigma_t`` (mm), about
    ``centre_mm`` ``(3,)`` world mm (:func:`biplanar.geometry.transforms.rigid_matrix`).
    """
    scale = np.array([math.radians(pose_range.sigma_deg)] * 3 + [pose_range.sigma_mm] * 3)
    return rigid_matrix(torch.as_tensor(draw * scale), torch.as_tensor(centre_mm, dtype=torch.float64))


def views_for(dataset: Dataset, grid: VolumeGrid) -> dict[str, ProjectionView]:
    """The AP (0 deg) and LAT (90 deg) views of ``dataset``, isocentre at the CT centre."""

    return biplanar_pair(
        image_shape=dataset.image_shape, pixel_spacing_mm=(dataset.pixel_mm,) * 2, isocenter_mm=grid.centre_world
    )


def covering_margin_mm(views: dict[str, ProjectionView], grid: VolumeGrid, pose: Tensor) -> float:
    """Depth (mm) the CT's box moved by ``pose`` ``(4, 4)`` reaches beyond the unmoved box, over ``views``.

    With this margin a projector built for the unmoved grid still integrates the whole moved CT.
    """

    corners = grid.corners_world(pad_vox=SUPPORT_PAD_VOX)
    matrix = np.asarray(pose, dtype=np.float64)
    moved = corners @ matrix[:3, :3].T + matrix[:3, 3]
    margin = 0.0
    for view in views.values():
        (near, far), (moved_near, moved_far) = view.depth_range(corners), view.depth_range(moved)
        margin = max(margin, near - moved_near, moved_far - far)
    return margin


def search_margin_mm(grid: VolumeGrid, pose_range: PoseRange) -> float:
    """Depth margin (mm) of the optimisers' rays: room for the CT turned by ``k sigma_r`` about an axis
    across the ray and shifted ``k sigma_t`` along it (``k`` = :data:`SEARCH_MARGIN_SIGMAS`).

    A box of largest half-extent ``h`` turned by ``theta`` about one axis across the ray reaches at most
    ``h sin(theta)`` further in depth; poses well beyond ``k`` sigmas lose the ends of the CT in the
    optimisers' DRRs (the radiographs themselves always hold the whole CT: :func:`covering_margin_mm`).
    """
    half_extent = float((np.asarray(grid.shape) * grid.spacing_mm).max()) / 2.0
    angle = math.radians(min(90.0, SEARCH_MARGIN_SIGMAS * pose_range.sigma_deg))
    return half_extent * math.sin(angle) + SEARCH_MARGIN_SIGMAS * pose_range.sigma_mm


def search_config(
    dataset: Dataset, pose_range: PoseRange, effort: SearchEffort, grid: VolumeGrid
) -> OptimisationConfig:
    """The baselines' settings for one dataset and range (module doc)."""
    levels = dataset.levels_mm if effort.max_levels is None else dataset.levels_mm[: effort.max_levels]
    return OptimisationConfig(
        levels_mm=levels,
        sigma_deg=pose_range.sigma_deg,
        sigma_mm=pose_range.sigma_mm,
        max_evaluations=effort.max_evaluations,
        refine_steps=effort.refine_steps,
        margin_mm=search_margin_mm(grid, pose_range),
    )


def render_radiographs(
    volume_mu: Tensor, grid: VolumeGrid, views: dict[str, ProjectionView], pose: Tensor
) -> dict[str, Tensor]:
    """View name -> ``(rows, cols)`` noise-free line-integral radiograph of the CT moved by ``pose``.

    Args:
        volume_mu: ``(1, 1, I, J, K)`` attenuation, 1/mm, on ``grid``.
        grid: its voxel grid.
        views: the calibrated views.
        pose: ``(4, 4)`` rigid map moving the CT (world mm).
    """

    margin = covering_margin_mm(views, grid, pose) + float(grid.spacing_mm.max())
    return render_drrs(volume_mu, grid, views, pose, margin_mm=margin)


def clinical_radiographs(line_integrals: dict[str, Tensor], pixel_mm: float, seed: Sequence[int]) -> dict[str, Tensor]:
    """View name -> ``(rows, cols)`` clinic's processed image (0 to 4095, bone bright) of each line integral.

    One :class:`ClinicalAppearance` drawn for the case (both views taken on the same machine), from
    ``seed`` (a :func:`numpy.random.default_rng` seed sequence), which also seeds the noise.
    """
    appearance = ClinicalAppearance.draw(np.random.default_rng(list(seed)))
    generator = torch.Generator().manual_seed(int(np.random.default_rng(list(seed)).integers(2**62)))
    return {
        name: clinical_radiograph(image[None, None].double(), (pixel_mm, pixel_mm), appearance, generator)[0, 0].to(
            image.dtype
        )
        for name, image in line_integrals.items()
    }


def score(estimated: Tensor, truth: Tensor, centre_mm: np.ndarray) -> dict[str, float]:
    """Errors of a pose estimate (module doc).

    Args:
        estimated, truth: ``(4, 4)`` float64 poses moving the CT.
        centre_mm: ``(3,)`` world mm, the CT centre (the parameters' and the translation error's centre).

    Returns:
        ``rotation_deg``, ``translation_mm``, ``rx_deg`` ... ``tz_mm`` and ``success`` (1.0 or 0.0).
    """
    centre = torch.as_tensor(centre_mm, dtype=torch.float64)
    estimated, truth = torch.as_tensor(estimated, dtype=torch.float64), torch.as_tensor(truth, dtype=torch.float64)
    rotation_deg, translation_mm = pose_errors(estimated, truth, centre)
    difference = (rigid_params(estimated, centre) - rigid_params(truth, centre)).abs()
    row = {"rotation_deg": float(rotation_deg), "translation_mm": float(translation_mm)}
    for index, (axis, unit) in enumerate(AXES):
        value = float(difference[index])
        row[f"{axis}_{unit}"] = math.degrees(value) if unit == "deg" else value
    row["success"] = float(row["rotation_deg"] < SUCCESS_DEG and row["translation_mm"] < SUCCESS_MM)
    return row


# --- running ------------------------------------------------------------------------------------


@dataclass
class _Case:
    """One case of one dataset and range: the CT, its views and radiographs, the true pose."""

    dataset: Dataset
    range_name: str
    index: int
    volume_mu: Tensor  # (1, 1, I, J, K) attenuation, 1/mm
    grid: VolumeGrid
    views: dict[str, ProjectionView]
    radiographs: dict[str, Tensor]  # view name -> (rows, cols)
    truth: Tensor  # (4, 4) float64, moves the CT

    def row(self, method: str, found: Tensor | None, seconds: float, error: str = "") -> dict[str, Any]:
        """A ``cases.csv`` row: the errors of ``found`` (NaN with ``error`` when the method failed)."""
        scores = (
            {**score(found, self.truth, self.grid.centre_world), **self.similarities(found)}
            if found is not None
            else dict.fromkeys([*score(self.truth, self.truth, self.grid.centre_world), "ncc", "gc"], math.nan)
        )
        return {
            "dataset": self.dataset.name,
            "range": self.range_name,
            "case": self.index,
            "method": method,
            **scores,
            "time_s": seconds,
            "error": error,
        }

    def similarities(self, pose: Tensor) -> dict[str, float]:
        """``ncc`` and ``gc``: the lower over the views of each, radiograph against the DRR at ``pose`` ``(4, 4)``."""
        drrs = render_radiographs(self.volume_mu, self.grid, self.views, pose)
        return {name: min(values.values()) for name, values in image_similarities(self.radiographs, drrs).items()}


def _run_method(
    case: _Case, method: str, config: OptimisationConfig, checkpoints: SopiCheckpoints | None, turns: int
) -> dict[str, Any]:
    """Estimate ``case``'s pose with ``method`` from the identity; its row (a failed method's has ``error``)."""

    started = time.perf_counter()
    try:
        found, _ = estimate(
            method, case.volume_mu, case.grid, case.radiographs, case.views, None, config, checkpoints, turns=turns
        )
    except InputError as error:  # e.g. SOPI networks trained on other image sizes than this dataset's
        return case.row(method, None, time.perf_counter() - started, str(error))
    return case.row(method, found, time.perf_counter() - started)


def run_study(
    settings: StudySettings,
    networks: SopiNetworks | None = None,
    tick: Callable[[], None] | None = None,
    on_group: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every dataset, range, case and method of ``settings`` (module doc).

    Args:
        settings: what to evaluate.
        networks: dataset -> SOPI's two checkpoints (:func:`sopi_checkpoints`); the methods ``sopi`` and
            ``sopi+opt`` are scored on the datasets that have them.
        tick: called after each pose estimation (:attr:`StudySettings.runs` in all).
        on_group: called with all rows so far after each dataset and range (e.g. to save them).

    Returns:
        the rows of ``cases.csv``: per case an ``initial`` row, then one per method.
    """
    networks = networks or {}
    check_inputs(settings, networks)
    rows: list[dict[str, Any]] = []
    for name in settings.datasets:
        dataset = DATASETS[name]
        draws = standard_draws(settings.seed, name, settings.cases)
        for range_name in settings.ranges:
            for index in range(settings.cases):
                case = _make_case(dataset, range_name, index, draws[index], settings)
                config = search_config(dataset, dataset.ranges[range_name], settings.effort, case.grid)
                rows.append(case.row(INITIAL, torch.eye(4, dtype=torch.float64), 0.0))
                for method in settings.methods_for(name, networks):
                    rows.append(_run_method(case, method, config, networks.get(name), settings.effort.turns))
                    if tick is not None:
                        tick()
            if on_group is not None:
                on_group(rows)
    return rows


def _make_case(dataset: Dataset, range_name: str, index: int, draw: np.ndarray, settings: StudySettings) -> _Case:
    volume, grid = load_ct(dataset, index)
    views = views_for(dataset, grid)
    truth = pose_from_draw(draw, dataset.ranges[range_name], grid.centre_world)
    radiographs = render_radiographs(volume, grid, views, truth)
    if settings.appearance == "clinical":
        seed = (settings.seed, list(DATASETS).index(dataset.name), RANGES.index(range_name), index)
        radiographs = clinical_radiographs(radiographs, dataset.pixel_mm, seed)
    return _Case(dataset, range_name, index, volume, grid, views, radiographs, truth)


# --- summary ------------------------------------------------------------------------------------


def summarise_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per dataset, range and method (first-seen order) over its rows without ``error``.

    Records: ``dataset``, ``range``, ``method``, ``n`` (cases scored), ``failed`` (cases where the
    method raised), ``rotation_deg_mean/_sd``, ``translation_mm_mean/_sd``, ``failure_rate`` (1 -
    mean success), ``time_s_mean``, and the per-axis ``<axis>_<unit>_mean``.
    """
    rows = list(rows)
    records = []
    for key in dict.fromkeys((row["dataset"], row["range"], row["method"]) for row in rows):
        group = [row for row in rows if (row["dataset"], row["range"], row["method"]) == key]
        scored = [row for row in group if not row.get("error")]

        def stats(column: str, scored: list[dict[str, Any]] = scored) -> Summary:
            return summarise(float(row[column]) for row in scored)

        record: dict[str, Any] = {
            "dataset": key[0],
            "range": key[1],
            "method": key[2],
            "n": len(scored),
            "failed": len(group) - len(scored),
        }
        for column in ("rotation_deg", "translation_mm"):
            record[f"{column}_mean"], record[f"{column}_sd"] = stats(column).mean, stats(column).sd
        record["failure_rate"] = 1.0 - stats("success").mean
        record["time_s_mean"] = stats("time_s").mean
        record.update({f"{axis}_{unit}_mean": stats(f"{axis}_{unit}").mean for axis, unit in AXES})
        records.append(record)
    return records


def _number(value: float, digits: int = 2, sd: float | None = None) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}" + ("" if sd is None or math.isnan(sd) else f" ± {sd:.{digits}f}")


TABLE_HEADER = (
    "| method | n | rotation (deg) | translation (mm) | failure rate | time (s) | rx / ry / rz (deg) "
    "| tx / ty / tz (mm) |\n|---|---:|---:|---:|---:|---:|---:|---:|"
)


def _table_row(record: dict[str, Any]) -> str:
    per_axis = [
        " / ".join(_number(record[f"{axis}_{unit}_mean"]) for axis, unit in part) for part in (AXES[:3], AXES[3:])
    ]
    time_s = "–" if record["method"] == INITIAL else _number(record["time_s_mean"], 1)
    failure = "n/a" if math.isnan(record["failure_rate"]) else f"{record['failure_rate']:.0%}"
    rotation = _number(record["rotation_deg_mean"], sd=record["rotation_deg_sd"])
    translation = _number(record["translation_mm_mean"], sd=record["translation_mm_sd"])
    return (
        f"| {record['method']} | {record['n']} | {rotation} | {translation} | {failure} | {time_s} "
        f"| {per_axis[0]} | {per_axis[1]} |"
    )


SOPI_PUBLISHED_ROW = (
    f"| SOPI as published (Chen et al. 2023, Table 1: their CT and a single X-ray, their ranges) "
    f"| – | {SOPI_PUBLISHED['rotation_deg']:.2f} | {SOPI_PUBLISHED['translation_mm']:.2f} "
    f"| {SOPI_PUBLISHED['failure_rate']:.1%} | {SOPI_PUBLISHED['time_s']:.2f} | – | – |"
)


def group_heading(dataset: str, range_name: str, effort: SearchEffort | None = None) -> str:
    """``lumbar, range small (sigma_r 5 deg, sigma_t 10 mm per axis; levels 12, 6 mm)``."""
    spec = DATASETS[dataset]
    pose_range = spec.ranges[range_name]
    levels = spec.levels_mm if effort is None or effort.max_levels is None else spec.levels_mm[: effort.max_levels]
    return (
        f"{dataset}, range {range_name} (sigma_r {pose_range.sigma_deg:g} deg, sigma_t {pose_range.sigma_mm:g} "
        f"mm per axis; levels {', '.join(f'{size:g}' for size in levels)} mm)"
    )


def tables_markdown(records: list[dict[str, Any]], effort: SearchEffort | None = None, level: int = 3) -> str:
    """Per dataset and range, a heading (``level`` #s) and the table of :func:`summarise_rows`' records,
    with SOPI's published row last; methods that raised are named under their table."""
    blocks = []
    for dataset, range_name in dict.fromkeys((record["dataset"], record["range"]) for record in records):
        group = [record for record in records if (record["dataset"], record["range"]) == (dataset, range_name)]
        lines = [
            f"{'#' * level} {group_heading(dataset, range_name, effort)}",
            "",
            TABLE_HEADER,
            *(_table_row(record) for record in group),
            SOPI_PUBLISHED_ROW,
        ]
        lines += [
            f"\n{record['method']}: raised on {record['failed']} case(s) (the error is in `cases.csv`)."
            for record in group
            if record["failed"]
        ]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


DEFINITIONS = (
    f"Failure: rotation error ≥ {SUCCESS_DEG:g} deg or translation error ≥ {SUCCESS_MM:g} mm (SOPI's "
    f"criterion). Errors: mean ± sample sd over the cases; rotation = geodesic angle, translation = "
    f"displacement of the CT centre, per axis = mean |difference of the Euler parameters|. `initial`: the "
    f"identity start. Time: wall time per estimation, one process."
)
RANGE_REASON = (
    "Ranges per axis: `small` rotations N(0, 5 deg), translations N(0, 10 mm) (lumbar) or N(0, 5 mm) "
    "(femur); `wide` rotations N(0, 20 deg) as SOPI's, translations N(0, 30 mm) (lumbar) or "
    "N(0, 15 mm) (femur). SOPI's translations, N(0, 100), N(0, 30), N(0, 15) mm, put the largest "
    "spread along the depth of its single view, to which one radiograph is nearly blind; with two "
    "views every axis is in the image plane of one of them, so we use SOPI's in-plane scale (30 mm), "
    "halved for the femur's smaller field of view. The optimisers' CMA-ES step sizes are the range's "
    "sigmas."
)
APPEARANCE_NOTES = {
    "line-integral": "The radiographs are noise-free DRRs of the same CT: best cases, not comparable in "
    "absolute terms with SOPI's real X-rays.",
    "clinical": "The radiographs are clinic-processed images of the CT's DRRs (`--appearance clinical`: "
    "scatter, noise, blur, log, unsharp masking, windowing, 12 bits; parameters drawn per case; "
    "monochromatic). `ncc`, `gc` in `cases.csv`: the lower over the views at the found pose.",
}


def summary_markdown(rows: list[dict[str, Any]], settings: StudySettings) -> str:
    """``summary.md``: the settings, the definitions and :func:`tables_markdown`."""
    header = (
        f"# Rigid pose estimation accuracy ({settings.cases} case(s) per dataset and range, seed "
        f"{settings.seed}; CMA-ES {settings.effort.max_evaluations} evaluations per level, "
        f"{settings.effort.refine_steps} L-BFGS steps; sopi+opt refined from {settings.effort.turns} turn(s) about "
        f"the CT's long axis; torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s))"
    )
    notes = f"{RANGE_REASON} {APPEARANCE_NOTES[settings.appearance]}"
    return "\n\n".join([header, DEFINITIONS, notes, tables_markdown(summarise_rows(rows), settings.effort)]) + "\n"


def write_outputs(out_dir: Path, rows: list[dict[str, Any]], settings: StudySettings) -> None:
    """Write ``cases.csv`` and ``summary.md`` into ``out_dir`` (created), each atomically."""

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "cases.csv", rows_to_csv(rows))
    atomic_write_text(out_dir / "summary.md", summary_markdown(rows, settings))


def evaluate_pose_accuracy(
    out_dir: str | Path, settings: StudySettings, networks: SopiNetworks | None = None, progress: bool = True
) -> list[dict[str, Any]]:
    """Run :func:`run_study` with a progress bar on stderr, writing ``cases.csv`` and ``summary.md``
    into ``out_dir`` after each dataset and range; returns the rows."""
    networks = networks or {}
    check_inputs(settings, networks)
    out_dir = Path(out_dir)
    with progress_bar(progress) as bar:
        return run_study(
            settings,
            networks,
            tick=ticker(bar, "pose estimations", settings.runs(networks)),
            on_group=lambda rows: write_outputs(out_dir, rows, settings),
        )
