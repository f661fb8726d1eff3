"""SOPI pose estimation (Chen et al. 2023): RTPI's initial pose, then the learned fine registration.

The pose ``A`` is a ``(4, 4)`` world-to-world rigid map that moves the CT (ProST's ``pose``), with
parameters ``(rx, ry, rz rad, tx, ty, tz mm)`` about the CT volume's centre
(:func:`biplanar.geometry.transforms.rigid_matrix`), as in :mod:`biplanar.pose.baselines`.

1. RTPI regresses the parameters from the CT and the radiograph.
2. The fine registration descends ``L_N(theta)``, the masked distance between the embedded
   features of the DRR at ``theta`` and of the radiograph, with ``dL_N/dtheta = J^T dL_N/dI``
   (``J`` the DRR's exact Jacobian, :meth:`~biplanar.layers.prost.ProST.project_with_pose_jacobian`).
   The encoders were trained for the *direction* of that gradient, so each iteration moves the
   rotation and the translation by a step length along their own unit gradient; a part's step
   length is multiplied by ``search.step_decrease`` when its gradient turns by more than 90
   degrees (an overshoot). The rotation is frozen after ``search.rotation_iterations``
   iterations; the search stops when the translation step and (unless frozen) the rotation step
   are below their tolerances, or after ``search.max_iterations``.

The mask of ``L_N`` is the projection, at the current pose, of ``mask_volume`` (default: the CT's
voxels above ``data.bone_threshold_hu`` of the fine network's config).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, cast

import numpy as np
import torch
from torch import Tensor, nn

from biplanar.errors import InputError
from biplanar.geometry.projection import ProjectionView
from biplanar.geometry.transforms import rigid_matrix
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.models.sopi import SopiConfig, build_network
from biplanar.models.sopi.config import FineSearchConfig
from biplanar.physics.attenuation import hu_to_mu
from biplanar.training.checkpoints import load_checkpoint, load_weights
from biplanar.training.pose_data import pose_prost, project_mask
from biplanar.training.pose_losses import masked_feature_distance, pose_gradient

METHOD = "sopi"


@dataclass
class SopiNetwork:
    """A trained SOPI network and its config.

    Attributes:
        network: :class:`~biplanar.models.sopi.RTPINet` or
            :class:`~biplanar.models.sopi.FineRegistrationNet`, in eval mode.
        config: the config it was trained with.
        name: ``rtpi`` or ``fine``.
    """

    network: nn.Module
    config: SopiConfig
    name: str


class _PoseRegressor(Protocol):
    """What SOPI calls on the ``rtpi`` network (:class:`~biplanar.models.sopi.RTPINet`)."""

    def params(self, volume_mu: Tensor, radiograph: Tensor) -> Tensor: ...


class _FineEncoders(Protocol):
    """What SOPI calls on the ``fine`` network (:class:`~biplanar.models.sopi.FineRegistrationNet`, or
    any module with the two encoders)."""

    def moving(self, image: Tensor) -> tuple[Tensor, ...]: ...

    def fixed(self, image: Tensor) -> tuple[Tensor, ...]: ...


def load_sopi_network(path: str | Path, name: str, device: str | torch.device = "cpu") -> SopiNetwork:
    """Rebuild a trained ``rtpi`` / ``fine`` network from a ``biplanar train-pose`` checkpoint alone.

    Raises:
        InputError: a bad checkpoint, one of another network, or weights that do not fit its config.
    """
    state = load_checkpoint(path, device)
    if state.get("kind") != "sopi" or state.get("network") != name:
        raise InputError(f"{path}: not a SOPI {name} checkpoint (found {state.get('kind')} {state.get('network')})")
    config = SopiConfig.from_dict(state["config"], f"{path}: config")
    return SopiNetwork(load_weights(build_network(config, name), state, path, device), config, name)


@dataclass
class SopiPoseEstimate:
    """The result of :func:`estimate_pose_sopi`.

    Attributes:
        matrix: ``(4, 4)`` float64 rigid map moving the CT (world mm -> world mm).
        params: ``(6,)`` float64 ``(rx, ry, rz rad, tx, ty, tz mm)`` of ``matrix`` about ``centre_mm``.
        initial_matrix, initial_params: the same for RTPI's estimate.
        centre_mm: ``(3,)`` world mm, the CT volume's centre.
        iterations: fine-registration iterations done.
        converged: the step tolerances were reached (not the iteration cap).
        timings_s: seconds of ``load``, ``rtpi``, ``fine`` and ``total`` (all of them).
        time_s: ``timings_s["total"]``.
        method: ``"sopi"``.
        history: per fine iteration ``{"iteration", "distance", "rotation_step_deg", "translation_step_mm"}``.
    """

    matrix: Tensor
    params: Tensor
    initial_matrix: Tensor
    initial_params: Tensor
    centre_mm: np.ndarray
    iterations: int
    converged: bool
    timings_s: dict[str, float]
    time_s: float
    method: str = METHOD
    history: list[dict[str, float]] = field(default_factory=list)


def _as_network(network: SopiNetwork | str | Path, name: str, device: torch.device) -> SopiNetwork:
    if isinstance(network, SopiNetwork):
        if network.name != name:
            raise ValueError(f"network: expected a {name} network, got {network.name}")
        return SopiNetwork(network.network.to(device).eval(), network.config, name)
    return load_sopi_network(network, name, device)


def _as_volume(volume: Tensor | np.ndarray, grid: VolumeGrid, name: str, device: torch.device) -> Tensor:
    """``(I, J, K)`` or ``(1, 1, I, J, K)`` -> ``(1, 1, I, J, K)`` float32 on ``device``."""
    volume = torch.as_tensor(np.asarray(volume) if not isinstance(volume, Tensor) else volume).float()
    if volume.dim() == 3:
        volume = volume[None, None]
    if tuple(volume.shape) != (1, 1, *grid.shape):
        raise InputError(f"{name}: expected shape {grid.shape} (the grid's), got {tuple(volume.shape)}")
    return volume.to(device)


def _check_radiograph(
    radiograph: Tensor | np.ndarray, view: ProjectionView, config: SopiConfig, device: torch.device
) -> Tensor:
    """``(rows, cols)`` -> ``(1, 1, rows, cols)`` float32, checked against the view and the training config."""
    image = torch.as_tensor(np.asarray(radiograph) if not isinstance(radiograph, Tensor) else radiograph).float()
    if image.dim() != 2 or tuple(image.shape) != tuple(view.image_shape):
        raise InputError(
            f"radiograph: expected shape {tuple(view.image_shape)} (view {view.name or '?'}), got {tuple(image.shape)}"
        )
    if tuple(image.shape) != tuple(config.geometry.image_shape):
        raise InputError(
            f"radiograph: shape {tuple(image.shape)} differs from the networks' training images "
            f"{tuple(config.geometry.image_shape)}; resample it (and its view) first"
        )
    if not torch.isfinite(image).all():
        raise InputError("radiograph: contains NaN or infinite values")
    return image[None, None].to(device)


@dataclass
class _Part:
    """The step state of one part (rotation or translation) of the search."""

    indices: slice
    step: float
    tolerance: float
    previous: Tensor | None = None

    def move(self, params: Tensor, gradient: Tensor, decrease: float) -> bool:
        """Step ``params`` against the unit gradient of this part; ``False`` if the gradient vanished."""
        part = gradient[self.indices]
        norm = part.norm()
        if not norm > 0:
            return False
        unit = part / norm
        if self.previous is not None and float(unit @ self.previous) < 0:
            self.step *= decrease
        self.previous = unit
        params[self.indices] -= self.step * unit
        return True

    @property
    def converged(self) -> bool:
        return self.step < self.tolerance


def fine_registration(
    fine: SopiNetwork,
    volume_mu: Tensor,
    mask_volume: Tensor,
    radiograph: Tensor,
    view: ProjectionView,
    grid: VolumeGrid,
    initial_params: Tensor,
    search: FineSearchConfig,
) -> tuple[Tensor, int, bool, list[dict[str, float]]]:
    """The learned iterative fine registration (module doc, step 2).

    Args:
        fine: the trained encoders.
        volume_mu: ``(1, 1, I, J, K)`` attenuation, 1/mm, on ``grid``.
        mask_volume: ``(1, 1, I, J, K)`` 0/1, projected into the mask of ``L_N``.
        radiograph: ``(1, 1, rows, cols)`` the X-ray of ``view``.
        view, grid: the calibrated view and the CT's grid.
        initial_params: ``(6,)`` starting pose (rad, mm) about the grid centre.
        search: step and stopping settings.

    Returns:
        ``(params (6,), iterations, converged, history)``.
    """
    prost = pose_prost(fine.config, view, grid).to(volume_mu.device)
    centre = torch.as_tensor(grid.centre_world, dtype=torch.float32, device=volume_mu.device)

    def to_pose(values: Tensor) -> Tensor:
        return rigid_matrix(values, centre)

    # nn.Module types its attributes as Tensor | Module: name the encoders' call signatures.
    encoders = cast(_FineEncoders, fine.network)
    with torch.no_grad():
        fixed = encoders.fixed(radiograph)
    rotation = _Part(slice(0, 3), math.radians(search.rotation_step_deg), math.radians(search.tolerance_deg))
    translation = _Part(slice(3, 6), search.translation_step_mm, search.tolerance_mm)
    params, history, converged = initial_params.detach().clone(), [], False
    iteration = 0
    while iteration < search.max_iterations and not converged:
        drr, jacobian = prost.project_with_pose_jacobian(volume_mu, params[None], to_pose)
        mask = project_mask(prost, mask_volume, to_pose(params[None]), fine.config.data.mask_min_path_mm)
        distance = masked_feature_distance(encoders.moving(drr.requires_grad_(True)), fixed, mask)
        gradient = pose_gradient(distance, drr, jacobian, create_graph=False)[0]
        rotating = iteration < search.rotation_iterations
        moved = translation.move(params, gradient, search.step_decrease)
        if rotating:
            moved = rotation.move(params, gradient, search.step_decrease) or moved
        iteration += 1
        history.append(
            {
                "iteration": iteration,
                "distance": float(distance.detach()),
                "rotation_step_deg": math.degrees(rotation.step) if rotating else 0.0,
                "translation_step_mm": translation.step,
            }
        )
        converged = not moved or (translation.converged and (rotation.converged or not rotating))
    return params, iteration, converged, history


def estimate_pose_sopi(
    volume_mu: Tensor | np.ndarray,
    grid: VolumeGrid,
    radiograph: Tensor | np.ndarray,
    view: ProjectionView,
    rtpi_ckpt: SopiNetwork | str | Path,
    fine_ckpt: SopiNetwork | str | Path,
    mask_volume: Tensor | np.ndarray | None = None,
    search: FineSearchConfig | None = None,
    device: str | torch.device | None = None,
    progress: Callable[[str], None] | None = None,
    handoff_tolerance: tuple[float, float] | None = None,
) -> SopiPoseEstimate:
    """Estimate the rigid pose of a CT in one radiograph with SOPI (module doc).

    Args:
        volume_mu: ``(I, J, K)`` or ``(1, 1, I, J, K)`` attenuation (1/mm) on ``grid``.
        grid: the CT's voxel grid (world RAS+ mm).
        radiograph: ``(rows, cols)`` line integrals of ``view`` (the training image shape).
        view: the calibrated view (SOPI's networks are trained on an AP view).
        rtpi_ckpt, fine_ckpt: ``biplanar train-pose`` checkpoints (``rtpi`` and ``fine``), or loaded
            :class:`SopiNetwork` s.
        mask_volume: ``(I, J, K)`` 0/1 volume whose projection masks ``L_N`` (e.g. the bone's label);
            default: voxels above the fine config's ``data.bone_threshold_hu``.
        search: fine-registration settings (default: the fine network's config's ``search``).
        device: where to run (default: CUDA when available, else the CPU).
        progress: called with a line of text after each stage.
        handoff_tolerance: ``(deg, mm)`` step lengths at which the fine registration stops when they
            are coarser than ``search``'s tolerances: where a refinement that searches at that scale
            follows (``sopi+opt``), the fine registration's last, smallest steps are wasted.

    Returns:
        the estimate (:class:`SopiPoseEstimate`).

    Raises:
        InputError: bad checkpoints, or a volume, mask or radiograph of the wrong shape.
    """
    started = time.perf_counter()
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    rtpi, fine = _as_network(rtpi_ckpt, "rtpi", device), _as_network(fine_ckpt, "fine", device)
    search = search or fine.config.search
    if handoff_tolerance is not None:
        tolerance_deg, tolerance_mm = handoff_tolerance
        search = replace(
            search,
            tolerance_deg=max(search.tolerance_deg, tolerance_deg),
            tolerance_mm=max(search.tolerance_mm, tolerance_mm),
        )
    volume = _as_volume(volume_mu, grid, "volume_mu", device)
    if mask_volume is None:
        mask = (volume > float(hu_to_mu(torch.tensor(fine.config.data.bone_threshold_hu)))).float()
    else:
        mask = (_as_volume(mask_volume, grid, "mask_volume", device) > 0).float()
    image = _check_radiograph(radiograph, view, fine.config, device)
    _check_radiograph(radiograph, view, rtpi.config, device)
    loaded = time.perf_counter()
    with torch.no_grad():
        initial = cast(_PoseRegressor, rtpi.network).params(volume, image)[0]  # an RTPINet (nn.Module is untyped)
    initialised = time.perf_counter()
    if progress is not None:
        progress(f"RTPI: initial pose in {initialised - loaded:.2f} s")
    params, iterations, converged, history = fine_registration(fine, volume, mask, image, view, grid, initial, search)
    finished = time.perf_counter()
    if progress is not None:
        progress(
            f"fine registration: {iterations} iterations in {finished - initialised:.2f} s"
            + ("" if converged else " (iteration cap)")
        )
    centre = torch.as_tensor(grid.centre_world)
    params64, initial64 = params.detach().cpu().double(), initial.detach().cpu().double()
    timings = {
        "load": loaded - started,
        "rtpi": initialised - loaded,
        "fine": finished - initialised,
        "total": finished - started,
    }
    return SopiPoseEstimate(
        rigid_matrix(params64, centre),
        params64,
        rigid_matrix(initial64, centre),
        initial64,
        np.asarray(grid.centre_world),
        iterations,
        converged,
        timings,
        timings["total"],
        METHOD,
        history,
    )
