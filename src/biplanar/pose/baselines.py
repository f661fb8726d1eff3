"""Optimisation baselines for rigid CT-to-X-ray pose: Opt-NCC, Opt-NGI, Opt-GC (SOPI, Tables 1 and 3).

The pose ``A`` is a ``(4, 4)`` world-to-world rigid map that *moves the CT* (ProST's ``pose``):
the DRR of the CT moved by ``A`` is compared with each radiograph through that view's known
projection matrix. Starting from ``A0`` (the identity by default), the search is over

    A(x) = Delta(x) @ A0,   Delta(x) = rigid_matrix((rad(x_0:3), x_3:6), centre = A0 c)

``x = (rx, ry, rz deg, tx, ty, tz mm)``: a rotation ``Rx Ry Rz`` about the current position of the
volume centre ``c`` followed by a translation (so rotations and translations decouple).

Algorithm (multi-resolution, coarse to fine):

1. Each level of :attr:`OptimisationConfig.levels_mm` renders DRRs with detector pixels and CT
   voxels of about that size at the volume centre (detectors and radiographs averaged in blocks,
   the CT average-pooled), and ray samples about one voxel apart.
2. At every level CMA-ES (Hansen's ``cma``) maximises the mean similarity over the views, from the
   previous level's best with step sizes ``sigma_deg``/``sigma_mm`` at the first level, each later
   level's steps scaled by ``level_sigma_factor``.
3. Optionally ``refine_steps`` of L-BFGS on the differentiable similarity at the finest level.

The result reports the pose as a matrix and as parameters about the (unmoved) volume centre
``c`` (:func:`biplanar.geometry.transforms.rigid_params`), where the translation is the
displacement of ``c``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from biplanar.geometry.projection import ProjectionView
from biplanar.geometry.se3 import rotation_geodesic_deg
from biplanar.geometry.transforms import rigid_matrix, rigid_params
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.layers.prost import ProST
from biplanar.pose.similarity import get_similarity

METHODS = {"opt-ncc": "ncc", "opt-ngi": "ngi", "opt-gc": "gc"}  # method name -> similarity


@dataclass(frozen=True)
class OptimisationConfig:
    """Settings of the optimisation baselines (module doc).

    Attributes:
        similarity: ``"ncc"``, ``"ngi"`` or ``"gc"`` (:mod:`biplanar.pose.similarity`).
        levels_mm: pixel / voxel size of each resolution level at the volume centre, coarse to fine, mm.
        sigma_deg, sigma_mm: CMA-ES initial step sizes of the rotations (deg) and translations (mm)
            at the first level: about the expected error of the initial pose.
        level_sigma_factor: the step sizes of each later level relative to the previous one.
        max_evaluations: CMA-ES similarity evaluations per level (each renders every view).
        cma_levels: how many levels, from the coarsest, CMA-ES searches (``None``: all); L-BFGS
            refines at the finest level.
        population: CMA-ES population size (``None``: cma's default, 4 + 3 ln(free parameters)).
        refine_steps: L-BFGS iterations on the differentiable similarity at the finest level (0: none).
        margin_mm: depth added before and after the CT's box for the DRR rays (room for the moved CT).
        seed: CMA-ES random seed (>= 1).
    """

    similarity: str = "gc"
    levels_mm: tuple[float, ...] = (12.0, 6.0)
    sigma_deg: float = 5.0
    sigma_mm: float = 10.0
    level_sigma_factor: float = 0.3
    max_evaluations: int = 150
    cma_levels: int | None = None
    population: int | None = None
    refine_steps: int = 10
    margin_mm: float = 40.0
    seed: int = 1

    def __post_init__(self) -> None:
        get_similarity(self.similarity)
        if not self.levels_mm or not all(0 < size < math.inf for size in self.levels_mm):
            raise ValueError(f"levels_mm: expected positive sizes, got {self.levels_mm}")
        if self.sigma_deg <= 0 or self.sigma_mm <= 0 or self.max_evaluations < 0 or self.refine_steps < 0:
            raise ValueError("sigma_deg, sigma_mm: expected > 0; max_evaluations, refine_steps: >= 0")
        if self.cma_levels is not None and not 1 <= self.cma_levels <= len(self.levels_mm):
            levels = len(self.levels_mm)
            raise ValueError(f"cma_levels: expected None or 1 to {levels} (the levels), got {self.cma_levels}")
        if self.seed < 1:
            raise ValueError(f"seed: expected >= 1 (cma treats 0 as 'from the clock'), got {self.seed}")


@dataclass
class PoseEstimate:
    """The result of a pose estimation.

    Attributes:
        matrix: ``(4, 4)`` float64 rigid map moving the CT (world mm -> world mm).
        params: ``(6,)`` float64 ``(rx, ry, rz rad, tx, ty, tz mm)`` of ``matrix`` about ``centre_mm``.
        centre_mm: ``(3,)`` world mm, the CT volume's centre.
        similarity: mean similarity over the views at the finest level, at ``matrix``.
        per_view_similarity: view name -> similarity at the finest level.
        evaluations: similarity evaluations (each renders every view once).
        iterations: CMA-ES generations plus L-BFGS iterations.
        time_s: wall-clock seconds.
        method: e.g. ``"opt-gc"``.
        history: per stage (level / refinement) a dict of its evaluations and best similarity.
    """

    matrix: Tensor
    params: Tensor
    centre_mm: np.ndarray
    similarity: float
    per_view_similarity: dict[str, float]
    evaluations: int
    iterations: int
    time_s: float
    method: str
    history: list[dict[str, float | str]] = field(default_factory=list)


# --- the resolution pyramid ---------------------------------------------------------------------


def downsample_view(view: ProjectionView, factor: int) -> ProjectionView:
    """The view of a detector whose pixels are ``factor x factor`` blocks of ``view``'s pixels.

    Block ``(r', c')`` covers pixels ``factor * r' ... factor * r' + factor - 1`` (a trailing
    partial block is dropped), so its centre is at ``u = factor * c' + (factor - 1) / 2``.
    """
    if factor == 1:
        return view
    offset = (factor - 1) / (2.0 * factor)
    to_block = np.array([[1.0 / factor, 0.0, -offset], [0.0, 1.0 / factor, -offset], [0.0, 0.0, 1.0]])
    rows, cols = view.image_shape
    return ProjectionView(to_block @ view.matrix, (rows // factor, cols // factor), view.name)


def downsample_image(image: Tensor, factor: int) -> Tensor:
    """``(B, C, H, W)`` -> block means ``(B, C, H // factor, W // factor)`` (matches :func:`downsample_view`)."""
    return image if factor == 1 else F.avg_pool2d(image, factor)


def downsample_volume(volume: Tensor, grid: VolumeGrid, factor: int) -> tuple[Tensor, VolumeGrid]:
    """Average ``factor^3`` voxel blocks of ``(B, C, I, J, K)`` (zero-padded at the far ends).

    Block ``i'`` covers voxels ``factor * i' ... factor * i' + factor - 1``; its centre is voxel
    ``factor * i' + (factor - 1) / 2`` of ``grid``.
    """
    if factor == 1:
        return volume, grid
    pads = [(-n) % factor for n in grid.shape]
    # F.pad lists the last dim first: (K, J, I) -> pad pairs (k_lo, k_hi, j_lo, j_hi, i_lo, i_hi).
    padded = F.pad(volume, (0, pads[2], 0, pads[1], 0, pads[0]))
    pooled = F.avg_pool3d(padded, factor)
    block_to_vox = np.diag([float(factor)] * 3 + [1.0])
    block_to_vox[:3, 3] = (factor - 1) / 2.0
    blocks_i, blocks_j, blocks_k = pooled.shape[2:]
    return pooled, VolumeGrid((blocks_i, blocks_j, blocks_k), grid.affine @ block_to_vox)


def _pixel_mm_at(view: ProjectionView, point_world: np.ndarray) -> float:
    """Size in mm of ``view``'s pixels at ``point_world`` (the larger of the two directions)."""
    depth = float(view.matrix[2, :3] @ point_world + view.matrix[2, 3])
    inverse = np.linalg.inv(view.matrix[:, :3])
    return depth * max(np.linalg.norm(inverse[:, 0]), np.linalg.norm(inverse[:, 1]))


@dataclass
class _Level:
    """One resolution level: the CT, a ProST and a radiograph (and mask) per view."""

    size_mm: float
    volume: Tensor  # (1, 1, I, J, K) attenuation, 1/mm
    projectors: dict[str, ProST]
    radiographs: dict[str, Tensor]  # (1, 1, h, w)
    masks: dict[str, Tensor | None]


def _build_level(problem: PoseProblem, size_mm: float) -> _Level:
    """The level of ``size_mm`` (mm, module doc step 1) of ``problem``'s CT, views and radiographs."""
    volume, grid, margin_mm = problem.volume, problem.grid, problem.config.margin_mm
    voxel_factor = max(1, int(size_mm / float(grid.spacing_mm.min()) + 1e-6))
    level_volume, level_grid = downsample_volume(volume, grid, voxel_factor)
    step_mm = float(level_grid.spacing_mm.min())
    projectors, images, level_masks = {}, {}, {}
    for name, view in problem.views.items():
        pixel_factor = max(1, int(size_mm / _pixel_mm_at(view, grid.centre_world) + 1e-6))
        level_view = downsample_view(view, pixel_factor)
        probe = ProST(level_view, level_grid, 1, margin_mm)
        samples = max(8, math.ceil((probe.far_mm - probe.near_mm) / step_mm))
        projectors[name] = ProST(level_view, level_grid, samples, margin_mm).to(volume.device)
        images[name] = downsample_image(problem.radiographs[name][None, None].to(volume), pixel_factor)
        mask = problem.masks.get(name)
        level_masks[name] = None if mask is None else downsample_image(mask[None, None].to(volume), pixel_factor)
    return _Level(size_mm, level_volume, projectors, images, level_masks)


# --- the objective ------------------------------------------------------------------------------


@dataclass
class PoseProblem:
    """Similarity of DRRs of a CT to radiographs as a function of the search parameters ``x``.

    Args:
        volume_mu: ``(I, J, K)`` or ``(1, 1, I, J, K)`` CT attenuation (1/mm) on ``grid``.
        grid: the CT's voxel grid.
        radiographs: view name -> ``(rows, cols)`` radiograph (line-integral-like: bone bright).
        views: view name -> its calibrated view (same names as ``radiographs``).
        initial_pose: ``(4, 4)`` ``A0`` (identity if ``None``).
        config: the optimisation settings.
        masks: view name -> ``(rows, cols)`` weights in [0, 1] where the radiograph is valid.
        free: ``(6,)`` bools, which of ``x`` are searched (the others stay 0).
        rotation_centre_mm: ``(3,)`` world mm about which ``Delta`` rotates (default: ``A0 c``, the
            moved volume centre; e.g. a C-arm isocentre to model an error of the C-arm angles).
    """

    volume_mu: Tensor
    grid: VolumeGrid
    radiographs: Mapping[str, Tensor]
    views: Mapping[str, ProjectionView]
    initial_pose: Tensor | None = None
    config: OptimisationConfig = field(default_factory=OptimisationConfig)
    masks: Mapping[str, Tensor | None] = field(default_factory=dict)
    free: tuple[bool, ...] = (True,) * 6
    rotation_centre_mm: np.ndarray | None = None

    def __post_init__(self) -> None:
        volume = self.volume_mu
        volume = volume[None, None] if volume.dim() == 3 else volume
        self.grid.check_volume(volume, "volume_mu")
        if volume.shape[:2] != (1, 1):
            raise ValueError(f"volume_mu: expected one single-channel volume, got {tuple(volume.shape)}")
        if set(self.radiographs) != set(self.views) or not self.views:
            raise ValueError(f"radiographs: expected the views {sorted(self.views)}, got {sorted(self.radiographs)}")
        for name, view in self.views.items():
            if tuple(self.radiographs[name].shape) != view.image_shape:
                raise ValueError(
                    f"radiographs[{name!r}]: expected shape {view.image_shape}, "
                    f"got {tuple(self.radiographs[name].shape)}"
                )
        if len(self.free) != 6 or not any(self.free):
            raise ValueError(f"free: expected 6 bools with at least one True, got {self.free}")
        self.volume = volume.float()
        initial = torch.eye(4, dtype=torch.float64) if self.initial_pose is None else self.initial_pose
        self.initial = torch.as_tensor(initial, dtype=torch.float64).cpu()
        if self.initial.shape != (4, 4):
            raise ValueError(f"initial_pose: expected shape (4, 4), got {tuple(self.initial.shape)}")
        centre = torch.as_tensor(self.grid.centre_world, dtype=torch.float64)
        self.centre = centre
        if self.rotation_centre_mm is None:
            self.moved_centre = self.initial[:3, :3] @ centre + self.initial[:3, 3]
        else:
            self.moved_centre = torch.as_tensor(np.asarray(self.rotation_centre_mm, dtype=np.float64))
            if self.moved_centre.shape != (3,):
                raise ValueError(f"rotation_centre_mm: expected shape (3,), got {tuple(self.moved_centre.shape)}")
        self.similarity_fn = get_similarity(self.config.similarity)
        self.evaluations = 0
        self.levels = [_build_level(self, size) for size in self.config.levels_mm]

    def full_x(self, free_x: Tensor) -> Tensor:
        """``(..., n_free)`` -> ``(..., 6)`` with zeros in the fixed parameters."""
        mask = torch.tensor(self.free)
        full = free_x.new_zeros(*free_x.shape[:-1], 6)
        full[..., mask] = free_x
        return full

    def pose(self, x: Tensor, start: Tensor | None = None) -> Tensor:
        """``(..., 6)`` ``(deg, deg, deg, mm, mm, mm)`` -> ``(..., 4, 4)`` ``Delta(x) @ A0`` (module doc).

        ``start``: ``(4, 4)`` or ``(..., 4, 4)`` poses in place of ``A0`` (``Delta`` still rotates
        about ``A0 c``; :func:`estimate_poses`).
        """
        return self.delta(x) @ (self.initial if start is None else start).to(x)

    def delta(self, x: Tensor) -> Tensor:
        """``(..., 6)`` -> ``(..., 4, 4)`` ``Delta(x)``: ``x``'s rotation about ``A0 c``, then translation."""
        params = torch.cat([torch.deg2rad(x[..., :3]), x[..., 3:]], dim=-1)
        return rigid_matrix(params, self.moved_centre.to(x))

    def similarities(self, level: _Level, poses: Tensor) -> dict[str, Tensor]:
        """View name -> ``(N,)`` similarity of the DRRs at ``poses`` ``(N, 4, 4)`` to that radiograph."""
        self.evaluations += poses.shape[0]
        poses = poses.to(self.volume)
        result = {}
        for name, projector in level.projectors.items():
            drrs = projector(level.volume, poses)  # (N, 1, h, w): one volume at N poses
            result[name] = self.similarity_fn(level.radiographs[name], drrs, level.masks[name])
        return result

    def objective(self, level: _Level, x: Tensor, start: Tensor | None = None) -> Tensor:
        """``(N, 6)`` -> ``(N,)`` mean similarity over the views (to maximise); ``start`` as :meth:`pose`."""
        return torch.stack(list(self.similarities(level, self.pose(x, start)).values())).mean(0)


# --- the optimisers -----------------------------------------------------------------------------


def _cma_level(
    problem: PoseProblem,
    level: _Level,
    starts: Tensor,
    xs: list[np.ndarray],
    sigmas: np.ndarray,
    config: OptimisationConfig,
) -> list[tuple[np.ndarray, float, int]]:
    """CMA-ES at one level from each start, in lockstep; per start its best x, similarity, generations.

    Search ``s`` moves ``Delta(x) @ starts[s]`` from ``xs[s]`` (free params, deg/mm) with steps
    ``sigmas``. Every generation of all unfinished searches is rendered by one ProST call per view;
    each search draws its own normal stream, so it proceeds as it would alone.
    """
    import cma  # lazy: cma only for the CMA-ES search

    def options() -> dict:
        return {
            "CMA_stds": sigmas.tolist(),
            "maxfevals": config.max_evaluations,
            # Its own stream of normal draws, the one cma's default (reseeding NumPy's global generator
            # with config.seed) would draw, without touching the global generator.
            "randn": np.random.RandomState(config.seed).randn,
            "verbose": -9,
            "tolfun": 1e-6,
            "tolx": 1e-3,
            **({} if config.population is None else {"popsize": config.population}),
        }

    def values_at(candidates: list[np.ndarray], indices: list[int]) -> list[np.ndarray]:
        """Similarities of each searched start's ``(n, free)`` candidates, all in one evaluation."""
        rows = torch.as_tensor(np.concatenate(candidates))
        row_starts = torch.cat([starts[index].expand(len(x), 4, 4) for index, x in zip(indices, candidates)])
        values = problem.objective(level, problem.full_x(rows), row_starts).numpy()
        return np.split(values, np.cumsum([len(x) for x in candidates])[:-1])

    strategies = [cma.CMAEvolutionStrategy(x.tolist(), 1.0, options()) for x in xs]
    with torch.no_grad():
        first = values_at([x[None] for x in xs], list(range(len(xs))))
        best = [(x, float(value[0])) for x, value in zip(xs, first, strict=True)]
        searching = [index for index, strategy in enumerate(strategies) if not strategy.stop()]
        while searching:
            candidates = [np.asarray(strategies[index].ask()) for index in searching]
            for index, asked, values in zip(searching, candidates, values_at(candidates, searching), strict=True):
                strategies[index].tell(asked, (-values).tolist())
                top = int(np.argmax(values))
                if values[top] > best[index][1]:
                    best[index] = (asked[top], float(values[top]))
            searching = [index for index in searching if not strategies[index].stop()]
    return [
        (np.asarray(x, dtype=np.float64), value, strategy.countiter)
        for (x, value), strategy in zip(best, strategies, strict=True)
    ]


class _BudgetSpent(Exception):
    """Raised inside :func:`_lbfgs`'s objective once its evaluations are spent."""


def _lbfgs(
    problem: PoseProblem, level: _Level, start_x: np.ndarray, steps: int, start: Tensor | None = None
) -> tuple[np.ndarray, float, int]:
    """L-BFGS-B (SciPy) on ``-similarity`` in deg/mm from ``start_x``; best x, similarity, iterations.

    ``start``: the ``(4, 4)`` pose ``x`` moves (default the problem's ``A0``; :meth:`PoseProblem.pose`).
    At most ``steps`` iterations and ``1.25 steps`` evaluations (``torch.optim.LBFGS``'s budget,
    enforced within a line search too); the best pose evaluated is returned. SciPy's optimiser
    rather than ``torch.optim.LBFGS``: every ``torch.optim`` optimiser imports PyTorch's compiler on
    first use (1.2-1.9 s on this project's CPU; :mod:`biplanar.optimisation.adam`), while SciPy's
    is loaded already by ``cma`` (whose own imports pull in ``scipy.stats``). SciPy's BLAS runs on
    one thread: OpenBLAS's idle workers spin after each call and take the cores from PyTorch's
    kernels (a femur case of ``sopi+opt`` took 6.1 s with them, 3.7 s without, on 2 cores).
    """
    from scipy.optimize import minimize  # lazy: the pose optimisers alone need it
    from threadpoolctl import threadpool_limits

    budget = max(1, (steps * 5) // 4)
    best_x, best_value = np.asarray(start_x, dtype=np.float64), -math.inf
    evaluations = iterations = 0

    def loss_and_gradient(x_now: np.ndarray) -> tuple[float, np.ndarray]:
        nonlocal best_x, best_value, evaluations
        if evaluations == budget:
            raise _BudgetSpent
        evaluations += 1
        x = torch.tensor(x_now, dtype=torch.float64, requires_grad=True)
        loss = -problem.objective(level, problem.full_x(x)[None], start)[0]
        loss.backward()
        assert x.grad is not None  # the objective is differentiable in x
        if -loss.item() > best_value:
            best_x, best_value = x_now.copy(), -loss.item()
        return loss.item(), x.grad.numpy().copy()

    def count_iteration(_: object) -> None:
        nonlocal iterations
        iterations += 1

    options = {"maxiter": steps, "maxfun": budget, "gtol": 1e-7, "ftol": 1e-9}
    with threadpool_limits(limits=1, user_api="blas"), contextlib.suppress(_BudgetSpent):
        minimize(loss_and_gradient, best_x, jac=True, method="L-BFGS-B", callback=count_iteration, options=options)
    return best_x, float(best_value), iterations


def estimate_pose(
    problem: PoseProblem, method: str = "opt", progress: Callable[[str], None] | None = None
) -> PoseEstimate:
    """Run the multi-resolution CMA-ES (+ L-BFGS) search of ``problem`` (module doc)."""
    return estimate_poses(problem, problem.initial[None], method, progress)[0]


def estimate_poses(
    problem: PoseProblem, starts: Tensor, method: str = "opt", progress: Callable[[str], None] | None = None
) -> list[PoseEstimate]:
    """:func:`estimate_pose` from each of the ``(S, 4, 4)`` float64 ``starts`` in place of ``A0``.

    Search ``s`` is over ``Delta(x) @ starts[s]``, ``Delta`` rotating about ``A0 c`` (module doc).
    The CMA-ES searches of a level run in lockstep (:func:`_cma_level`), the L-BFGS refinements one
    after another; each estimate's ``evaluations`` and ``time_s`` count all the searches.
    """
    started = time.perf_counter()
    config = problem.config
    free = np.array(problem.free)
    sigmas = np.array([config.sigma_deg] * 3 + [config.sigma_mm] * 3)[free]
    xs = [np.zeros(int(free.sum())) for _ in starts]
    histories: list[list[dict[str, float | str]]] = [[] for _ in starts]
    iterations = [0 for _ in starts]

    def record(stage: str, values: list[float]) -> None:
        for history, value in zip(histories, values, strict=True):
            elapsed_s = time.perf_counter() - started
            history.append(
                {"stage": stage, "similarity": value, "evaluations": problem.evaluations, "time_s": elapsed_s}
            )
        if progress:
            progress(f"{method}: {stage}: similarity {max(values):.4f} after {problem.evaluations} evaluations")

    for index, level in enumerate(problem.levels[: config.cma_levels] if config.max_evaluations > 0 else []):
        searched = _cma_level(problem, level, starts, xs, sigmas * config.level_sigma_factor**index, config)
        xs = [x for x, _, _ in searched]
        iterations = [total + generations for total, (_, _, generations) in zip(iterations, searched, strict=True)]
        record(f"CMA-ES {level.size_mm:g} mm", [value for _, value, _ in searched])
    finest = problem.levels[-1]
    if config.refine_steps > 0:
        refined = [_lbfgs(problem, finest, x, config.refine_steps, start) for x, start in zip(xs, starts, strict=True)]
        xs = [x for x, _, _ in refined]
        iterations = [total + steps for total, (_, _, steps) in zip(iterations, refined, strict=True)]
        record(f"L-BFGS {finest.size_mm:g} mm", [value for _, value, _ in refined])
    matrices = problem.pose(problem.full_x(torch.as_tensor(np.stack(xs), dtype=torch.float64)), starts)
    with torch.no_grad():
        per_view = {name: values.tolist() for name, values in problem.similarities(finest, matrices).items()}
    time_s = time.perf_counter() - started
    estimates = []
    for index, matrix in enumerate(matrices):
        view_values = {name: values[index] for name, values in per_view.items()}
        estimates.append(
            PoseEstimate(
                matrix=matrix,
                params=rigid_params(matrix, problem.centre),
                centre_mm=problem.centre.numpy(),
                similarity=float(np.mean(list(view_values.values()))),
                per_view_similarity=view_values,
                evaluations=problem.evaluations,
                iterations=iterations[index],
                time_s=time_s,
                method=method,
                history=histories[index],
            )
        )
    return estimates


def _as_tensor(image: Tensor | np.ndarray) -> Tensor:
    """A float32 tensor of ``image``."""
    return torch.as_tensor(np.asarray(image, dtype=np.float32) if isinstance(image, np.ndarray) else image).float()


def run_baseline(
    method: str,
    volume_mu: Tensor | np.ndarray,
    grid: VolumeGrid,
    radiographs: Mapping[str, Tensor | np.ndarray],
    views: Mapping[str, ProjectionView],
    initial_pose: Tensor | None = None,
    config: OptimisationConfig | None = None,
    masks: Mapping[str, Tensor | np.ndarray | None] | None = None,
    free: tuple[bool, ...] = (True,) * 6,
    rotation_centre_mm: np.ndarray | None = None,
    progress: Callable[[str], None] | None = None,
) -> PoseEstimate:
    """Opt-NCC / Opt-NGI / Opt-GC: estimate the pose of a CT from one or more radiographs.

    Args:
        method: one of :data:`METHODS` (``"opt-ncc"``, ``"opt-ngi"``, ``"opt-gc"``); it sets the
            similarity of ``config``.
        volume_mu: ``(I, J, K)`` or ``(1, 1, I, J, K)`` attenuation (1/mm) on ``grid``.
        grid: the CT's voxel grid (world RAS+ mm).
        radiographs: view name -> ``(rows, cols)`` radiograph of that view's ``image_shape``.
        views: view name -> calibrated view.
        initial_pose: ``(4, 4)`` starting pose ``A0`` moving the CT (identity if ``None``).
        config: settings (defaults: :class:`OptimisationConfig`).
        masks: view name -> ``(rows, cols)`` weights of valid radiograph pixels.
        free: which of the 6 search parameters (3 rotations, 3 translations) are optimised.
        rotation_centre_mm: ``(3,)`` world mm the search rotates about (default: the moved CT centre).
        progress: called with a line of text after each stage.

    Returns:
        the estimate (:class:`PoseEstimate`).
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    config = replace(config or OptimisationConfig(), similarity=METHODS[method])
    problem = PoseProblem(
        torch.as_tensor(volume_mu),
        grid,
        {name: _as_tensor(image) for name, image in radiographs.items()},
        views,
        initial_pose,
        config,
        {name: None if image is None else _as_tensor(image) for name, image in (masks or {}).items()},
        tuple(free),
        rotation_centre_mm,
    )
    return estimate_pose(problem, method, progress)


# The local refinement of "SOPI+opt": CMA-ES (steps 2 deg / 4 mm) and L-BFGS at 6 mm; its CMA-ES
# moves to COARSE_SEARCH_MM for a CT large enough (refine_config_for).
REFINE_CONFIG = OptimisationConfig(
    similarity="gc", levels_mm=(6.0,), sigma_deg=2.0, sigma_mm=4.0, max_evaluations=100, refine_steps=10
)
# Two refinements that end further apart than this (deg) are in different local optima.
OTHER_BASIN_DEG = 10.0
COARSE_SEARCH_MM = 12.0
COARSE_SEARCH_MIN_VOXELS = 16  # along every axis of the CT at COARSE_SEARCH_MM
# The last step of "SOPI+opt": L-BFGS from the best refinement at twice its resolution (no CMA-ES).
POLISH_CONFIG = OptimisationConfig(
    similarity="gc", levels_mm=(3.0,), sigma_deg=0.5, sigma_mm=1.0, max_evaluations=0, refine_steps=10
)


def refine_config_for(grid: VolumeGrid, config: OptimisationConfig = REFINE_CONFIG) -> OptimisationConfig:
    """``config`` with its CMA-ES moved to a :data:`COARSE_SEARCH_MM` level (L-BFGS staying at
    ``config``'s finest) when the CT on ``grid`` spans at least :data:`COARSE_SEARCH_MIN_VOXELS`
    voxels of that level along every axis; ``config`` itself otherwise.

    A candidate at 12 mm costs an eighth of the samples of one at 6 mm. On a CT that large (the
    real lumbar CT: 31 x 26 x 28 voxels at 12 mm) the poses found are those of the 6 mm search;
    on the femur phantoms (11 x 8 x 11) one clinic-processed case ended turned 178 deg about the
    long axis (docs/pose.md section 4).
    """
    factor = max(1, int(COARSE_SEARCH_MM / float(grid.spacing_mm.min()) + 1e-6))  # as _build_level
    voxels = [-(-size // factor) for size in grid.shape]
    if min(voxels) < COARSE_SEARCH_MIN_VOXELS:
        return config
    return replace(config, levels_mm=(COARSE_SEARCH_MM, *config.levels_mm), cma_levels=1)


def refine_pose(
    volume_mu: Tensor,
    grid: VolumeGrid,
    radiographs: Mapping[str, Tensor | np.ndarray],
    views: Mapping[str, ProjectionView],
    initial_pose: Tensor,
    config: OptimisationConfig = REFINE_CONFIG,
    **kwargs,
) -> PoseEstimate:
    """Refine a given pose (e.g. SOPI's, for "SOPI+opt") by Opt-GC with a local search.

    Same arguments as :func:`run_baseline` (``kwargs``: ``masks``, ``free``, ``rotation_centre_mm``,
    ``progress``); the default config searches one level near the start (steps 2 deg / 4 mm)
    before L-BFGS.
    """
    return run_baseline("opt-gc", volume_mu, grid, radiographs, views, initial_pose, config, **kwargs)


# SOPI+opt's search along SOPI's beam before its refinement: offsets up to this far (mm) either
# side of SOPI's pose, this far apart (the refinement's CMA-ES step in mm, REFINE_CONFIG.sigma_mm).
BEAM_SEARCH_HALF_RANGE_MM = 48.0
BEAM_SEARCH_STEP_MM = 4.0


def search_along_beam(
    volume_mu: Tensor,
    grid: VolumeGrid,
    radiographs: Mapping[str, Tensor | np.ndarray],
    views: Mapping[str, ProjectionView],
    initial_pose: Tensor,
    beam_view: str,
    config: OptimisationConfig = REFINE_CONFIG,
) -> tuple[Tensor, float]:
    """``initial_pose`` moved along ``beam_view``'s principal direction by the offset that fits best.

    A pose estimated from one view (SOPI's) is least determined along that view's beam: a shift
    in depth only magnifies its image by a few percent, while every other view sees it as a shift
    across the image (a clinic-processed femur of the pose study started 28 mm off in depth, where
    the refinement's 4 mm CMA-ES steps could not reach). Offsets from ``-BEAM_SEARCH_HALF_RANGE_MM``
    to ``+BEAM_SEARCH_HALF_RANGE_MM`` in ``BEAM_SEARCH_STEP_MM`` steps (0 included) are scored by
    the mean gradient correlation over all ``views`` at ``config``'s first level, all in one ProST
    call per view.

    Args:
        volume_mu, grid, radiographs, views: as :func:`refine_pose`.
        initial_pose: ``(4, 4)`` float64 pose moving the CT.
        beam_view: the name of the view ``initial_pose`` was estimated from (a key of ``views``).
        config: the refinement's settings; its first level scores the offsets.

    Returns:
        the ``(4, 4)`` float64 moved pose and the offset chosen, mm (positive: away from the source).
    """
    direction = torch.as_tensor(views[beam_view].principal_direction, dtype=torch.float64)
    offsets_mm = torch.arange(-BEAM_SEARCH_HALF_RANGE_MM, BEAM_SEARCH_HALF_RANGE_MM + 1e-6, BEAM_SEARCH_STEP_MM)
    x = torch.zeros(len(offsets_mm), 6, dtype=torch.float64)
    x[:, 3:] = offsets_mm.double()[:, None] * direction
    images = {name: _as_tensor(image) for name, image in radiographs.items()}
    first_level = replace(config, similarity="gc", levels_mm=config.levels_mm[:1])  # the only level scored
    problem = PoseProblem(torch.as_tensor(volume_mu), grid, images, views, initial_pose.double(), first_level)
    with torch.no_grad():
        best = int(torch.argmax(problem.objective(problem.levels[0], x)))
    return problem.pose(x[best]), float(offsets_mm[best])


@dataclass
class TurnedRefinement:
    """The best of :func:`refine_turned`'s refinements, and how each turn ended.

    Attributes:
        best: the refinement of highest similarity (its ``evaluations`` and ``time_s`` count all turns).
        turns: per start, ``start`` (its name), ``turn_deg`` (its turn about the CT's long axis;
            ``None`` for an extra start), ``similarity`` (where its refinement ended) and
            ``rotation_from_best_deg`` (geodesic angle to ``best``'s pose).
        estimates: per start, its refinement.
    """

    best: PoseEstimate
    turns: list[dict[str, Any]]
    estimates: list[PoseEstimate]

    def runner_up(self) -> PoseEstimate | None:
        """The refinement of highest similarity among those ending more than :data:`OTHER_BASIN_DEG`
        from ``best`` (another local optimum, e.g. the bone turned half about its long axis), or
        ``None``."""
        others = [
            estimate
            for estimate, turn in zip(self.estimates, self.turns, strict=True)
            if turn["rotation_from_best_deg"] > OTHER_BASIN_DEG
        ]
        return max(others, key=lambda estimate: estimate.similarity) if others else None


def refine_turned(
    volume_mu: Tensor,
    grid: VolumeGrid,
    radiographs: Mapping[str, Tensor | np.ndarray],
    views: Mapping[str, ProjectionView],
    initial_pose: Tensor,
    turns: int,
    config: OptimisationConfig | None = None,
    progress: Callable[[str], None] | None = None,
    extra_starts: Mapping[str, Tensor] | None = None,
) -> TurnedRefinement:
    """:func:`refine_pose` from ``initial_pose`` turned about the CT's long axis by ``360 / turns`` deg
    steps (and from ``extra_starts``), keeping the refinement of highest similarity.

    A long bone is nearly a cylinder, so the rotation about its own axis is the pose's worst-determined
    part: a single-view estimate (SOPI's) may start the local refinement tens of degrees off about
    it, where the refinement cannot reach the right pose. The turns are about the world ``z`` axis
    (the patient's long axis, RAS+) through the CT volume's centre, applied before ``initial_pose``
    (``initial_pose @ Rz``); turn 0 is ``initial_pose`` itself. All the searches' CMA-ES run in
    lockstep (:func:`estimate_poses`: one ProST call per view renders a generation of every start).

    Args:
        volume_mu, grid, radiographs, views: as :func:`refine_pose`.
        config: the refinement's settings (default :func:`refine_config_for` ``(grid)``).
        initial_pose: ``(4, 4)`` float64 pose moving the CT.
        turns: starts turned from ``initial_pose`` (>= 1); 1 is :func:`refine_pose` alone.
        progress: called with a line of text per start, once all are refined.
        extra_starts: name -> ``(4, 4)`` float64 pose, refined too (e.g. ``initial_pose`` moved
            along a beam, :func:`search_along_beam`); reported after the turns, with their names.
    """
    if turns < 1:
        raise ValueError(f"turns: expected >= 1, got {turns}")
    centre = torch.as_tensor(grid.centre_world, dtype=torch.float64)
    angles_deg = [360.0 * index / turns for index in range(turns)]
    turn_params = torch.zeros(turns, 6, dtype=torch.float64)
    turn_params[:, 2] = torch.deg2rad(torch.tensor(angles_deg, dtype=torch.float64))
    initial_pose = initial_pose.double()
    extras = dict(extra_starts or {})
    # Each start turns about the CT's centre, so it moves the centre where initial_pose does: every
    # search rotates about the same point as a refine_pose from that start alone.
    starts = torch.cat([initial_pose @ rigid_matrix(turn_params, centre), *(p.double()[None] for p in extras.values())])
    images = {name: _as_tensor(image) for name, image in radiographs.items()}
    gc_config = replace(config or refine_config_for(grid), similarity="gc")
    problem = PoseProblem(torch.as_tensor(volume_mu), grid, images, views, initial_pose, gc_config)
    refined = estimate_poses(problem, starts, "opt-gc")
    best = max(refined, key=lambda estimate: estimate.similarity)
    labels = [(f"turned {angle:g} deg", angle) for angle in angles_deg] + [(name, None) for name in extras]
    report = []
    for (label, angle), estimate in zip(labels, refined, strict=True):
        if progress:
            progress(f"refinement from the start {label}: similarity {estimate.similarity:.4f}")
        from_best_deg = float(rotation_geodesic_deg(estimate.matrix[:3, :3], best.matrix[:3, :3]))
        ended = {"similarity": estimate.similarity, "rotation_from_best_deg": from_best_deg}
        report.append({"start": label, "turn_deg": angle, **ended})
    return TurnedRefinement(best, report, refined)
