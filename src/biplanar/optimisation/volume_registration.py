"""3D/3D atlas-to-subject registration: a stationary velocity field fitted by Adam.

This gives the training fields of the statistical deformation model (:mod:`biplanar.models.sdm`,
the paper's ref. [10]): for each training subject, ``phi = exp(v)`` such that the atlas pulled by
``phi`` matches the subject's CT, in the convention of :mod:`biplanar.layers.warp`::

    warped(p) = atlas(p + u(p)),   u the displacement of phi, mm, world components, atlas grid.

Objective, minimised over ``v`` at every level of a coarse-to-fine pyramid::

    L(v) = (1 - LNCC(A o phi, S)) + label_weight * (1 - Dice(L_A o phi, L_S))
           + smoothness_weight * G(u)

- ``A``, ``S``: atlas and subject attenuation (1/mm); when both label maps are given they are
  multiplied by their femur labels (the femur is compared, not the pelvis or soft tissue, which
  move differently) and the soft Dice of the warped atlas label ``L_A o phi`` (trilinear) with
  the subject's ``L_S`` is added. Without labels only the image term and smoothness remain.
- ``LNCC``: MONAI's windowed NCC (``ncc_window`` voxels of the level's grid).
- ``G``: :func:`squared_gradient` of ``u``, its squared Jacobian norm in (mm / mm)^2:
  dimensionless, so one weight means the same on every level and grid (MONAI's ``DiffusionLoss``
  works per voxel step, which would weigh the coarse levels more).
- Level ``(f, n)``: the volumes average-pooled by ``f`` (grid :func:`pooled_grid`), ``v`` on that
  grid, ``n`` Adam steps at ``learning_rate_mm``; each level starts from the previous level's
  velocity, trilinearly upsampled (velocities are mm, so their values carry over unchanged).

The fitted field lives on the last level's grid (``coarse_displacement``); :func:`upsample_field`
brings it to the full grid (``displacement``). Both grids share the box of the atlas volume: coarse voxel
``n`` is the average of fine voxels ``f n .. f n + f - 1`` and sits at their centre.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from biplanar.config import bounded, check_fields, non_negative, positive
from biplanar.errors import InputError, shown
from biplanar.geometry.volume_grid import VolumeGrid, pooled_grid
from biplanar.layers.resample import pool_volume, upsample_field
from biplanar.layers.similarity import soft_dice
from biplanar.layers.velocity import VelocityIntegrator
from biplanar.layers.warp import SpatialTransformer
from biplanar.optimisation.adam import Adam

LABEL_THRESHOLD = 0.5  # a warped (soft) label voxel is femur above this


def squared_gradient(displacement: Tensor, grid: VolumeGrid) -> Tensor:
    """Squared Frobenius norm of a field's Jacobian (forward differences), averaged over the voxels.

    Args:
        displacement: ``(B, 3, I, J, K)`` mm on ``grid``.
        grid: its voxel grid (the spacing ``h_a`` along each axis turns voxel steps into mm).

    Returns:
        scalar, ``sum over axes a of mean over voxels of |u(p + e_a) - u(p)|^2 / h_a^2``, (mm / mm)^2.
    """
    grid.check_volume(displacement, "displacement")
    along_i, along_j, along_k = (
        (torch.diff(displacement, dim=2 + axis) / float(spacing)).square().sum(dim=1).mean()
        for axis, spacing in enumerate(grid.spacing_mm)
    )
    return along_i + along_j + along_k


@dataclass(frozen=True)
class VolumeRegistrationSettings:
    """Pyramid and weights of :func:`register_volumes` (defaults: the ``lite`` grid, about 1 min on one core).

    Attributes:
        levels: ``(pooling factor, Adam steps)`` per level, coarse to fine; the last factor is the
            grid of the result's ``coarse_displacement`` (and of the SDM).
        learning_rate_mm: Adam's learning rate on the velocity, mm.
        label_weight: weight of ``1 - Dice`` of the labels (used when both label maps are given).
        smoothness_weight: weight of the (dimensionless) squared-gradient regulariser.
        ncc_window: LNCC window, voxels of each level's grid (odd).
        integration_steps: scaling-and-squaring steps.
    """

    levels: tuple[tuple[int, int], ...] = ((4, 150), (2, 100))
    learning_rate_mm: float = positive(0.5)
    label_weight: float = non_negative(1.0)
    smoothness_weight: float = non_negative(1.0)
    ncc_window: int = bounded(5, 1)
    integration_steps: int = bounded(7, 0)

    def __post_init__(self) -> None:
        """Check each field's constraint, the levels' pairs and that ``ncc_window`` is odd.

        Raises:
            InputError: (a ``ValueError``) ``ncc_window: expected an odd number, got 4``.
        """
        check_fields(self)
        if not self.levels or any(factor < 1 or steps < 0 for factor, steps in self.levels):
            raise InputError(f"levels: expected (factor >= 1, steps >= 0) pairs, got {shown(self.levels)}")
        if self.ncc_window % 2 == 0:
            raise InputError(f"ncc_window: expected an odd number, got {self.ncc_window}")

    @property
    def field_factor(self) -> int:
        """Pooling factor of the grid the fitted field lives on (the last level's)."""
        return self.levels[-1][0]


@dataclass
class VolumeRegistrationResult:
    """What :func:`register_volumes` returns (tensors detached).

    Attributes:
        velocity: ``(1, 3, i, j, k)`` stationary velocity, mm, on ``pooled_grid(grid, field_factor)``.
        coarse_displacement: ``(1, 3, i, j, k)`` displacement of ``phi = exp(v)``, mm, world
            components, same grid.
        displacement: ``(1, 3, I, J, K)`` ``coarse_displacement`` upsampled to the full grid (pull convention).
        field_factor: the pooling factor of ``velocity`` and ``coarse_displacement``.
        dice_before, dice_after: Dice of the atlas labels (warped by ``displacement``, > 0.5) with
            the subject's, on the full grid; ``None`` without labels.
        history: the objective at every Adam step, all levels in order.
        time_s: wall time, s.
    """

    velocity: Tensor
    coarse_displacement: Tensor
    displacement: Tensor
    field_factor: int
    dice_before: float | None
    dice_after: float | None
    history: list[float] = field(default_factory=list)
    time_s: float = 0.0


class _LevelObjective:
    """The objective of the module doc on one pyramid level (pooled volumes, level grid)."""

    def __init__(
        self,
        moving: Tensor,
        fixed: Tensor,
        labels: tuple[Tensor, Tensor] | None,
        grid: VolumeGrid,
        factor: int,
        settings: VolumeRegistrationSettings,
    ) -> None:
        """``labels``: ``(moving_labels, fixed_labels)``, or ``None``."""
        from monai.losses import LocalNormalizedCrossCorrelationLoss  # lazy: monai costs seconds of start-up

        self.grid = pooled_grid(grid, factor)
        self.moving, self.fixed = pool_volume(moving, factor), pool_volume(fixed, factor)
        self.labels = None if labels is None else (pool_volume(labels[0], factor), pool_volume(labels[1], factor))
        self.settings = settings
        self.integrator = VelocityIntegrator(self.grid, settings.integration_steps).to(moving.device)
        self.transformer = SpatialTransformer(self.grid).to(moving.device)
        self.ncc = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=settings.ncc_window)

    def __call__(self, velocity: Tensor) -> Tensor:
        """Args: velocity ``(1, 3, i, j, k)`` mm on the level grid. Returns the scalar objective."""
        displacement = self.integrator(velocity)
        # MONAI's LNCC loss is -LNCC, so 1 + loss = 1 - LNCC.
        loss = 1.0 + self.ncc(self.transformer(self.moving, displacement), self.fixed)
        if self.labels is not None:
            moving_labels, fixed_labels = self.labels
            warped_labels = self.transformer(moving_labels, displacement)
            loss = loss + self.settings.label_weight * (1.0 - soft_dice(warped_labels, fixed_labels).mean())
        return loss + self.settings.smoothness_weight * squared_gradient(displacement, self.grid)


def _label_dice(moving_labels: Tensor, fixed_labels: Tensor, displacement: Tensor, grid: VolumeGrid) -> float:
    warped = SpatialTransformer(grid).to(displacement.device)(moving_labels, displacement)
    return float(soft_dice((warped > LABEL_THRESHOLD).float(), (fixed_labels > LABEL_THRESHOLD).float()))


def _check_inputs(volumes: dict[str, Tensor | None], grid: VolumeGrid) -> None:
    for name, volume in volumes.items():
        if volume is not None:
            grid.check_volume(volume, name)
            if volume.shape[:2] != (1, 1):
                raise ValueError(f"{name}: expected shape (1, 1, I, J, K), got {tuple(volume.shape)}")
    if (volumes["moving_labels"] is None) != (volumes["fixed_labels"] is None):
        raise ValueError("moving_labels, fixed_labels: give both or neither")


def register_volumes(
    moving: Tensor,
    fixed: Tensor,
    grid: VolumeGrid,
    moving_labels: Tensor | None = None,
    fixed_labels: Tensor | None = None,
    settings: VolumeRegistrationSettings = VolumeRegistrationSettings(),
) -> VolumeRegistrationResult:
    """Fit ``phi = exp(v)`` with ``moving o phi ~ fixed`` (module doc).

    Args:
        moving: ``(1, 1, I, J, K)`` atlas attenuation, 1/mm, on ``grid``.
        fixed: ``(1, 1, I, J, K)`` subject attenuation, 1/mm, on ``grid``.
        grid: the common grid (world RAS+ mm); its sizes must be divisible by every level's factor.
        moving_labels, fixed_labels: ``(1, 1, I, J, K)`` femur labels (0/1 float), both or neither.
        settings: pyramid, learning rate and weights.

    Returns:
        the fitted velocity and displacement, the label Dice before and after, the objective's history.
    """
    started = time.perf_counter()
    _check_inputs(
        {"moving": moving, "fixed": fixed, "moving_labels": moving_labels, "fixed_labels": fixed_labels}, grid
    )
    moving, fixed = moving.detach().float(), fixed.detach().float()
    labels = None
    if moving_labels is not None and fixed_labels is not None:  # both or neither (_check_inputs)
        labels = (moving_labels.detach().float(), fixed_labels.detach().float())
        # compare the femurs alone
        moving, fixed = moving * labels[0], fixed * labels[1]
    velocity: Tensor | None = None
    history: list[float] = []
    for factor, steps in settings.levels:
        objective = _LevelObjective(moving, fixed, labels, grid, factor, settings)
        shape = objective.grid.shape
        start = torch.zeros(1, 3, *shape, device=moving.device) if velocity is None else upsample_field(velocity, shape)
        velocity = start.clone().requires_grad_(True)
        optimiser = Adam([(velocity, settings.learning_rate_mm)])
        for _ in range(steps):
            optimiser.zero_grad()
            loss = objective(velocity)
            loss.backward()
            optimiser.step()
            history.append(float(loss.detach()))
        velocity = velocity.detach()
    assert velocity is not None  # settings.levels is never empty
    with torch.no_grad():
        coarse = objective.integrator(velocity)
        displacement = upsample_field(coarse, grid.shape)
        dice_before = dice_after = None
        if labels is not None:
            dice_before = _label_dice(*labels, torch.zeros_like(displacement), grid)
            dice_after = _label_dice(*labels, displacement, grid)
    return VolumeRegistrationResult(
        velocity,
        coarse,
        displacement,
        settings.field_factor,
        dice_before,
        dice_after,
        history,
        time.perf_counter() - started,
    )
