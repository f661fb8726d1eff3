"""Rigid pose of a CT to one or two radiographs, from files, and calibration correction of views.

Conventions (``docs/pose.md``):

- The pose ``A`` is a ``(4, 4)`` rigid world-to-world map (mm, RAS+) that *moves the CT*: the CT
  moved by ``A`` (``ct(A^-1 x)``), projected through each view's calibrated matrix ``P_v``,
  reproduces the radiographs.
- Its parameters ``(rx, ry, rz, tx, ty, tz)`` are about the CT volume's centre ``c``:
  ``A x = c + Rx Ry Rz (x - c) + t`` (:func:`biplanar.geometry.transforms.rigid_matrix`); ``t`` is the
  displacement of ``c``.
- The corrected geometry composes every view with the pose, ``P'_v = P_v A``: with it, the CT at
  identity (its file's own affine) projects as it was found in the radiographs.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from biplanar.errors import InputError
from biplanar.geometry.projection import ProjectionView
from biplanar.geometry.transforms import rigid_params
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.io.atomic import atomic_folder, atomic_path
from biplanar.io.geometry_file import read_geometry, require_views, write_geometry
from biplanar.io.images import read_image, window
from biplanar.io.json_files import read_json, write_json
from biplanar.io.volumes import read_volume
from biplanar.layers.prost import ProST
from biplanar.physics.attenuation import hu_to_mu
from biplanar.pose import sopi
from biplanar.pose.baselines import (
    METHODS,
    POLISH_CONFIG,
    REFINE_CONFIG,
    OptimisationConfig,
    PoseEstimate,
    refine_config_for,
    refine_pose,
    refine_turned,
    run_baseline,
    search_along_beam,
)
from biplanar.pose.similarity import gradient_correlation, ncc
from biplanar.progress import print_stage
from biplanar.training.checkpoints import bundled_models_dir

SOPI_METHODS = ("sopi", "sopi+opt")
# ``sopi+opt`` refines SOPI's pose from this many turns about the CT's long axis (:func:`refine_turned`).
SOPI_REFINE_TURNS = 8
# ``sopi+opt``'s refinement searches with CMA-ES steps of 2 deg / 4 mm: SOPI's fine registration hands
# its pose over once its own steps are below a quarter of those (deg, mm).
SOPI_HANDOFF_TOLERANCE = (REFINE_CONFIG.sigma_deg / 4, REFINE_CONFIG.sigma_mm / 4)
POSE_METHODS = (*METHODS, *SOPI_METHODS)
RIGID_TOLERANCE = 1e-4  # max |R^T R - I| and |last row - (0, 0, 0, 1)| of an initial pose
OVERLAY_EDGE_COLOUR = (255, 60, 40)
OVERLAY_EDGE_SIGMA_PX = 1.5  # Canny smoothing of the DRR, detector pixels
OVERLAY_EDGE_QUANTILES = (0.85, 0.93)  # Canny hysteresis thresholds, quantiles of the DRR's gradient magnitude
OVERLAY_BONE_HU = 200.0  # overlays outline the DRR of the CT's attenuation above that of this HU (bone)
# The lowest per-view gradient correlation of a pose that is trusted; below it pose.json's quality flag
# is set and `pose` warns. Chosen on held-out clinical-appearance cases (docs/pose.md, "Knowing when it failed").
QUALITY_MIN_GC = 0.80
QUALITY_DEFINITION = (
    "gradient correlation (GC), per view, of the radiograph and the full-resolution DRR of the CT at the "
    "pose; flag: the lowest view below threshold (the search stuck in a wrong pose, a wrong CT or view)"
)


# --- poses and views ----------------------------------------------------------------------------


def check_rigid(matrix: np.ndarray, where: str) -> np.ndarray:
    """``(4, 4)`` float64 rigid matrix, or ``InputError`` naming ``where``."""
    try:
        matrix = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{where}: expected a 4x4 matrix of numbers") from None
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise InputError(f"{where}: expected a finite 4x4 matrix, got shape {matrix.shape}")
    rotation = matrix[:3, :3]
    if (
        np.abs(rotation.T @ rotation - np.eye(3)).max() > RIGID_TOLERANCE
        or np.linalg.det(rotation) < 0
        or np.abs(matrix[3] - [0.0, 0.0, 0.0, 1.0]).max() > RIGID_TOLERANCE
    ):
        raise InputError(
            f"{where}: not a rigid transform (rotation not orthonormal with det +1, or last row not 0 0 0 1)"
        )
    return matrix


def read_initial_pose(path: str | Path) -> Tensor:
    """The ``(4, 4)`` float64 pose in a JSON file's ``"matrix"`` (a ``pose.json`` of this command works)."""

    document = read_json(path)
    if not isinstance(document, dict) or "matrix" not in document:
        raise InputError(f"{path}: expected an object with a 4x4 'matrix'")
    return torch.from_numpy(check_rigid(document["matrix"], f"{path}: matrix"))


def compose_view(view: ProjectionView, pose: Tensor | np.ndarray) -> ProjectionView:
    """``P' = P A``: the view in which the unmoved CT projects as the CT moved by ``pose`` in ``view``."""
    matrix = view.matrix @ np.asarray(torch.as_tensor(pose, dtype=torch.float64).cpu())
    return ProjectionView(matrix, view.image_shape, view.name)


def compose_views(views: Mapping[str, ProjectionView], pose: Tensor | np.ndarray) -> dict[str, ProjectionView]:
    """Every view composed with the same ``(4, 4)`` pose (:func:`compose_view`)."""
    return {name: compose_view(view, pose) for name, view in views.items()}


def view_isocentre(view: ProjectionView, fallback_mm: np.ndarray) -> np.ndarray:
    """``(3,)`` world mm: the view's C-arm isocentre when it has one, else ``fallback_mm``."""
    if view.carm is not None and view.carm.isocenter_mm is not None:
        return np.asarray(view.carm.isocenter_mm, dtype=np.float64)
    return np.asarray(fallback_mm, dtype=np.float64)


def compose_each_view(
    views: Mapping[str, ProjectionView], estimates: Mapping[str, PoseEstimate]
) -> dict[str, ProjectionView]:
    """Each view composed with its own estimate (:func:`compose_view`): the views corrected by
    :func:`estimate_view_rotations`. (One pose for all views, the joint correction:
    ``compose_views(views, run_baseline(...).matrix)``.)"""
    return {name: compose_view(view, estimates[name].matrix) for name, view in views.items()}


def estimate_view_rotations(
    volume_mu: Tensor | np.ndarray,
    grid: VolumeGrid,
    radiographs: Mapping[str, Tensor | np.ndarray],
    views: Mapping[str, ProjectionView],
    method: str = "opt-gc",
    config: OptimisationConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, PoseEstimate]:
    """The calibration error of each view alone, as a rotation of the CT about the view's isocentre.

    For each view, the rotation ``A_v`` (3 DoF, translations fixed) of the CT about that view's
    isocentre (:func:`view_isocentre`: its C-arm ``isocenter_mm``, else the CT centre) that best
    matches its radiograph; the corrected view is ``P'_v = P_v A_v`` (:func:`compose_each_view`).
    This models an erroneous angle of that view: rotating the C-arm by ``Q`` about the isocentre
    gives the same projection as rotating the CT by ``Q^-1`` about it.

    Args:
        volume_mu: ``(I, J, K)`` or ``(1, 1, I, J, K)`` CT (or atlas) attenuation, 1/mm, on ``grid``.
        grid: its voxel grid.
        radiographs: view name -> ``(rows, cols)`` radiograph.
        views: view name -> calibrated view (same names).
        method: an optimisation baseline of :data:`~biplanar.pose.baselines.METHODS`.
        config: optimisation settings (default :class:`~biplanar.pose.baselines.OptimisationConfig`).
        progress: called with a line of text after each stage.

    Returns:
        view name -> the estimate (``matrix`` ``(4, 4)`` float64 moving the CT; ``params`` about
        the CT centre, whose rotation part is that of the rotation about the isocentre).
    """
    rotation_only = (True, True, True, False, False, False)
    return {
        name: run_baseline(
            method,
            volume_mu,
            grid,
            {name: radiographs[name]},
            {name: view},
            None,
            config,
            free=rotation_only,
            rotation_centre_mm=view_isocentre(view, grid.centre_world),
            progress=progress,
        )
        for name, view in views.items()
    }


# --- estimation ---------------------------------------------------------------------------------


@dataclass
class SopiCheckpoints:
    """The two ``biplanar train-pose`` checkpoints SOPI needs (``rtpi`` and ``fine``)."""

    rtpi: Path
    fine: Path


BUNDLED_SOPI = "sopi_lite"  # the package's SOPI networks: femur phantoms, 112 x 80 radiographs at 1.86 mm


def bundled_sopi_checkpoints() -> SopiCheckpoints | None:
    """The SOPI networks shipped in ``biplanar/resources/models/sopi_lite`` (``None`` when absent)."""

    folder = bundled_models_dir() / BUNDLED_SOPI
    pair = SopiCheckpoints(folder / "rtpi.pt", folder / "fine.pt")
    return pair if pair.rtpi.is_file() and pair.fine.is_file() else None


def check_method(
    method: str, has_initial_pose: bool, sopi_checkpoints: SopiCheckpoints | None, view_names: list[str]
) -> None:
    """``InputError`` unless ``method`` can run with these inputs (before any work is done)."""
    if method not in POSE_METHODS:
        raise InputError(f"--method: expected one of {', '.join(POSE_METHODS)}, got {method!r}")
    if method in METHODS:
        return
    if sopi_checkpoints is None:
        raise InputError(f"--method {method}: needs the SOPI checkpoints (--rtpi and --fine)")
    if has_initial_pose:
        raise InputError(f"--init-pose: not used by --method {method} (SOPI's RTPI gives the initial pose)")
    if "AP" not in view_names:
        raise InputError(f"--method {method}: SOPI needs an AP view")


def estimate(
    method: str,
    volume_mu: Tensor,
    grid: VolumeGrid,
    radiographs: Mapping[str, Tensor],
    views: Mapping[str, ProjectionView],
    initial_pose: Tensor | None = None,
    config: OptimisationConfig | None = None,
    sopi_checkpoints: SopiCheckpoints | None = None,
    progress: Callable[[str], None] | None = None,
    turns: int = SOPI_REFINE_TURNS,
) -> tuple[Tensor, dict[str, Any]]:
    """Estimate the CT pose with any of :data:`POSE_METHODS`.

    SOPI is a single-view method: it uses the ``AP`` view (its networks are trained on one);
    ``sopi+opt`` then refines SOPI's pose by Opt-GC over all given views from ``turns`` starts
    turned about the CT's long axis (:func:`~biplanar.pose.baselines.refine_turned`; ``turns=1``:
    SOPI's pose alone) and from SOPI's pose moved along the AP beam to where the DRRs fit best
    (:func:`~biplanar.pose.baselines.search_along_beam`: one view leaves the depth least
    determined; no extra start when that is where SOPI put it), polishes the best and the best of another local optimum
    (:meth:`~biplanar.pose.baselines.TurnedRefinement.runner_up`) by L-BFGS at twice the resolution
    (:data:`~biplanar.pose.baselines.POLISH_CONFIG`: a 3 mm level), and keeps the polished pose of
    higher similarity. For ``sopi+opt`` SOPI's fine registration stops at :data:`SOPI_HANDOFF_TOLERANCE`.

    Returns:
        ``(4, 4)`` float64 pose and a JSON-ready summary (evaluations, iterations, per-stage times).
    """
    check_method(method, initial_pose is not None, sopi_checkpoints, list(views))
    if method in METHODS:
        result = run_baseline(method, volume_mu, grid, radiographs, views, initial_pose, config, progress=progress)
        return result.matrix, _baseline_summary(result)
    if sopi_checkpoints is None:  # check_method has raised already; this narrows the type
        raise InputError(f"--method {method}: needs the SOPI checkpoints (--rtpi and --fine)")
    found = sopi.estimate_pose_sopi(
        volume_mu,
        grid,
        radiographs["AP"],
        views["AP"],
        sopi_checkpoints.rtpi,
        sopi_checkpoints.fine,
        device=volume_mu.device,
        progress=progress,
        handoff_tolerance=SOPI_HANDOFF_TOLERANCE if method == "sopi+opt" else None,
    )
    summary = {
        "sopi": {
            "iterations": found.iterations,
            "converged": found.converged,
            "timings_s": found.timings_s,
            "rtpi_matrix": found.initial_matrix.tolist(),
        }
    }
    if method == "sopi":
        return found.matrix.double(), summary
    moved, beam_offset_mm = search_along_beam(
        volume_mu, grid, radiographs, views, found.matrix.double(), "AP", refine_config_for(grid)
    )
    extra_starts = {f"moved {beam_offset_mm:+g} mm along the AP beam": moved} if beam_offset_mm else {}
    refined = refine_turned(
        volume_mu, grid, radiographs, views, found.matrix.double(), turns, progress=progress, extra_starts=extra_starts
    )
    runner_up = refined.runner_up()
    candidates = [refined.best] if runner_up is None else [refined.best, runner_up]
    polished = [refine_pose(volume_mu, grid, radiographs, views, c.matrix, POLISH_CONFIG) for c in candidates]
    kept = max(polished, key=lambda estimate: estimate.similarity)
    refinement = {
        **_baseline_summary(refined.best),
        "beam_offset_mm": beam_offset_mm,
        "turns": refined.turns,
        "polish": _baseline_summary(kept),
        "polished_similarities": [estimate.similarity for estimate in polished],
    }
    return kept.matrix, {**summary, "refinement": refinement}


def _baseline_summary(result: PoseEstimate) -> dict[str, Any]:
    return {
        "evaluations": result.evaluations,
        "iterations": result.iterations,
        "time_s": result.time_s,
        "objective": result.similarity,
        "objective_per_view": result.per_view_similarity,
        "stages": result.history,
    }


def render_drrs(
    volume_mu: Tensor, grid: VolumeGrid, views: Mapping[str, ProjectionView], pose: Tensor, margin_mm: float = 40.0
) -> dict[str, Tensor]:
    """View name -> ``(rows, cols)`` full-resolution DRR of the CT moved by ``pose``, samples one voxel apart."""
    step_mm = float(grid.spacing_mm.min())
    drrs = {}
    with torch.no_grad():
        for name, view in views.items():
            probe = ProST(view, grid, 1, margin_mm)
            samples = max(8, int(np.ceil((probe.far_mm - probe.near_mm) / step_mm)))
            projector = ProST(view, grid, samples, margin_mm).to(volume_mu.device)
            drrs[name] = projector(volume_mu, pose[None].to(volume_mu))[0, 0]
    return drrs


def image_similarities(radiographs: Mapping[str, Tensor], drrs: Mapping[str, Tensor]) -> dict[str, dict[str, float]]:
    """``{"ncc": {view: value}, "gc": {view: value}}`` of each radiograph and its DRR."""
    scores: dict[str, dict[str, float]] = {"ncc": {}, "gc": {}}
    for name, drr in drrs.items():
        pair = (radiographs[name][None, None].to(drr), drr[None, None])
        scores["ncc"][name] = float(ncc(*pair)[0])
        scores["gc"][name] = float(gradient_correlation(*pair)[0])
    return scores


def quality_report(similarity: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """``pose.json``'s ``quality``: the lowest per-view GC of :func:`image_similarities`' ``similarity``
    and a flag when it is below :data:`QUALITY_MIN_GC`."""
    per_view = similarity["gc"]
    lowest_view = min(per_view, key=lambda name: per_view[name])
    return {
        "lowest_view": lowest_view,
        "lowest_gc": per_view[lowest_view],
        "threshold": QUALITY_MIN_GC,
        "flag": bool(per_view[lowest_view] < QUALITY_MIN_GC),
        "definition": QUALITY_DEFINITION,
    }


def bone_attenuation(volume_mu: Tensor, mu_water_per_mm: float) -> Tensor:
    """Attenuation (1/mm) above that of :data:`OVERLAY_BONE_HU`, same shape: what a bone-only DRR integrates."""

    threshold = float(hu_to_mu(torch.tensor(OVERLAY_BONE_HU), mu_water_per_mm))
    return (volume_mu - threshold).clamp(min=0.0)


def write_edge_overlay(path: str | Path, radiograph: np.ndarray, drr: np.ndarray) -> None:
    """An RGB PNG: ``radiograph`` in grey with the Canny edges of ``drr`` (same ``(rows, cols)``) in colour."""
    from skimage.feature import canny  # lazy: scikit-image only where it is used

    if radiograph.shape != drr.shape or radiograph.ndim != 2:
        raise ValueError(f"drr: expected the radiograph's shape {radiograph.shape}, got {drr.shape}")
    grey = (window(radiograph) * 255).round().astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    edges = canny(
        window(drr),
        sigma=OVERLAY_EDGE_SIGMA_PX,
        low_threshold=OVERLAY_EDGE_QUANTILES[0],
        high_threshold=OVERLAY_EDGE_QUANTILES[1],
        use_quantiles=True,
    )
    rgb[edges] = OVERLAY_EDGE_COLOUR
    with atomic_path(Path(path)) as temporary:
        Image.fromarray(rgb).save(temporary, format="PNG")


# --- files --------------------------------------------------------------------------------------


def _read_inputs(
    ct_path: Path, geometry_path: Path, image_paths: Mapping[str, Path], units: str, mu_water_per_mm: float
) -> tuple[Tensor, VolumeGrid, dict[str, ProjectionView], dict[str, Tensor]]:

    if units not in ("hu", "mu"):
        raise InputError(f"--units: expected hu or mu, got {units!r}")
    data, grid = read_volume(ct_path)
    volume = torch.from_numpy(data)
    volume_mu = hu_to_mu(volume, mu_water_per_mm) if units == "hu" else volume
    all_views = read_geometry(geometry_path, default_isocenter_mm=grid.centre_world)
    require_views(all_views, list(image_paths), str(geometry_path))
    radiographs = {}
    for name, path in image_paths.items():
        image = read_image(path)
        if image.shape != all_views[name].image_shape:
            raise InputError(
                f"{path}: image shape {list(image.shape)} differs from the geometry's "
                f"views.{name}.image_shape {list(all_views[name].image_shape)}"
            )
        if image.min() == image.max():
            raise InputError(f"{path}: every pixel is {image.min():g}: no image to register the CT to")
        radiographs[name] = torch.from_numpy(image)
    return volume_mu[None, None].float(), grid, all_views, radiographs


def _output_folder(out_dir: Path, overwrite: bool) -> contextlib.AbstractContextManager[Path]:
    """Where the outputs go: a temporary folder renamed to a new or empty ``out_dir`` once complete, or
    with ``overwrite`` ``out_dir`` itself (each file written atomically)."""
    if not overwrite:
        return atomic_folder(out_dir, replace=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    return contextlib.nullcontext(out_dir)


@dataclass
class PoseReport:
    """What :func:`estimate_pose_files` wrote: the folder and the contents of ``pose.json``."""

    out_dir: Path
    document: dict[str, Any]


def estimate_pose_files(
    ct_path: str | Path,
    geometry_path: str | Path,
    image_paths: Mapping[str, str | Path],
    out_dir: str | Path,
    method: str = "opt-gc",
    init_pose_path: str | Path | None = None,
    units: str = "hu",
    mu_water_per_mm: float = 0.02,
    config: OptimisationConfig | None = None,
    sopi_checkpoints: SopiCheckpoints | None = None,
    turns: int = SOPI_REFINE_TURNS,
    progress: bool = True,
    overwrite: bool = False,
) -> PoseReport:
    """Estimate the pose of a CT file to radiograph files and write the outputs into ``out_dir``.

    Args:
        ct_path: CT (``units="hu"``) or attenuation (``units="mu"``, 1/mm) NIfTI volume.
        geometry_path: ``geometry.json``; a ``carm`` without isocentre uses the CT's centre.
        image_paths: view name (``AP``, ``LAT``) -> radiograph file of that view's ``image_shape``.
        out_dir: output folder: new or empty (it appears, complete, when the outputs are written),
            or with ``overwrite`` any folder (files of the same names are replaced, each atomically).
        method: one of :data:`POSE_METHODS`.
        init_pose_path: JSON with the starting ``"matrix"`` (optimisation methods only).
        units, mu_water_per_mm: how the CT's values become attenuation.
        config: optimisation settings.
        sopi_checkpoints: the SOPI networks (methods ``sopi``, ``sopi+opt``).
        turns: ``sopi+opt``'s refinement starts about the CT's long axis (:func:`estimate`).
        progress: print the stages on stderr.
        overwrite: write into an existing ``out_dir`` that holds files.

    Writes:
        ``pose.json`` (matrix, parameters in deg/mm about the CT centre, method, similarities,
        timings), ``geometry_corrected.json`` (every view of the geometry file composed with the
        pose), ``overlay_<view>.png`` (radiograph with the edges of the bone-only DRR at the pose:
        attenuation above that of :data:`OVERLAY_BONE_HU`).
    """

    started = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder")
    if not overwrite and out_dir.is_dir() and any(out_dir.iterdir()):
        raise InputError(f"{out_dir}: holds files already; choose a new or empty folder, or pass --overwrite")
    radiograph_paths = {name: Path(path) for name, path in image_paths.items()}
    check_method(method, init_pose_path is not None, sopi_checkpoints, list(radiograph_paths))
    initial = None if init_pose_path is None else read_initial_pose(init_pose_path)
    print_stage("pose", progress, "reading the CT, geometry and radiographs")
    volume_mu, grid, all_views, radiographs = _read_inputs(
        Path(ct_path), Path(geometry_path), radiograph_paths, units, mu_water_per_mm
    )
    views = {name: all_views[name] for name in radiograph_paths}
    timings = {"load": time.perf_counter() - started}
    print_stage("pose", progress, f"estimating the pose ({method}, views {', '.join(views)})")
    try:
        pose, summary = estimate(
            method,
            volume_mu,
            grid,
            radiographs,
            views,
            initial,
            config,
            sopi_checkpoints,
            lambda line: print_stage("pose", progress, line),
            turns,
        )
    except ValueError as error:
        if isinstance(error, InputError):
            raise
        raise InputError(f"{geometry_path}: {error}") from None
    timings["estimate"] = time.perf_counter() - started - timings["load"]
    print_stage("pose", progress, "writing the outputs")
    drrs = render_drrs(volume_mu, grid, views, pose)
    bone_drrs = render_drrs(bone_attenuation(volume_mu, mu_water_per_mm), grid, views, pose)
    centre = torch.as_tensor(grid.centre_world, dtype=torch.float64)
    params = rigid_params(pose, centre)
    similarity = image_similarities(radiographs, drrs)
    quality = quality_report(similarity)
    document = {
        "method": method,
        "matrix": pose.tolist(),
        "params": {
            "rotation_deg": np.degrees(params[:3].numpy()).tolist(),
            "translation_mm": params[3:].tolist(),
            "centre_mm": centre.tolist(),
            "convention": "A x = c + Rx(rx) Ry(ry) Rz(rz) (x - c) + t; A moves the CT (docs/pose.md)",
        },
        "initial_matrix": None if initial is None else initial.tolist(),
        "similarity": similarity,
        "quality": quality,
        "optimisation": summary,
        "timings_s": timings,
        "inputs": {
            "ct": str(ct_path),
            "geometry": str(geometry_path),
            "radiographs": {name: str(path) for name, path in radiograph_paths.items()},
            "init_pose": None if init_pose_path is None else str(init_pose_path),
        },
    }
    with _output_folder(out_dir, overwrite) as folder:
        write_geometry(folder / "geometry_corrected.json", compose_views(all_views, pose))
        for name, drr in bone_drrs.items():
            outlined = drr if bool((drr > 0).any()) else drrs[name]  # no bone: outline the whole CT
            write_edge_overlay(folder / f"overlay_{name}.png", radiographs[name].numpy(), outlined.cpu().numpy())
        timings["write"] = time.perf_counter() - started - timings["load"] - timings["estimate"]
        timings["total"] = time.perf_counter() - started
        write_json(folder / "pose.json", document)
    if quality["flag"]:
        lowest = quality["lowest_view"]
        print(
            f"warning: pose quality: gradient correlation {quality['lowest_gc']:.2f} in {lowest} is below "
            f"{quality['threshold']:.2f} (search stuck in a wrong pose?): check {out_dir / f'overlay_{lowest}.png'}",
            file=sys.stderr,
            flush=True,
        )
    print_stage("pose", progress, f"done in {timings['total']:.1f} s: {out_dir}")
    return PoseReport(out_dir, document)
