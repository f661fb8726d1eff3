"""Test-time intensity registration: Adam on ``(T, v)`` to match DRRs of the warped atlas to two radiographs.

The transform is the network's (:mod:`biplanar.models.network`): a similarity ``T`` (7 parameters
about the atlas centre, :mod:`biplanar.geometry.transforms`) and a stationary velocity field ``v``
integrated by scaling and squaring into ``phi = exp(v)``; ``Psi = T o phi`` pulls the atlas,
``warped(p) = atlas(Psi(p))``. The objective, minimised over ``(T, v)``::

    L(T, v) = mean over AP, LAT of (1 - NCC(DRR(atlas o Psi) x soft mask(atlas_label o Psi), radiograph))
              + silhouette_weight * mean over AP, LAT of (1 - Dice(soft mask(atlas_label o Psi), mask))
              + smoothness_weight * DiffusionLoss(phi's displacement)

- The DRRs imitate how the inputs were made. A masked input (the network's input, and what
  ``biplanar simulate`` writes) is a radiograph of the whole body times the femur mask, the pixels
  whose ray crosses more than :data:`~biplanar.data.masks.MASK_MIN_PATH_MM` of femur. So the
  DRR is the ProST line integral (the network's own
  :class:`~biplanar.models.projectors.ProjectorCache` when one is given) of the whole atlas
  ``mu`` warped by ``Psi``, times a soft version of that rule applied to the warped atlas femur
  label (:func:`soft_mask`, a linear ramp around the threshold). Unmasked inputs
  are compared with the unmasked DRR. Projecting the atlas femur alone (``mu x label``, the
  network's own input DRR) was tried first and rejected: inside the mask a radiograph is
  dominated by the soft tissue and pelvis on the same rays (on validation case 3 the true femur's
  own DRR reaches an NCC of only 0.92 to 0.95 with its masked radiographs), so maximising that NCC
  deforms the femur to imitate soft tissue (projection NCC up to 0.99, Dice down by 0.06).
- What lies on the rays besides the femur is not the atlas's everywhere: a whole body like the
  atlas's, a femur alone in air (an outside projector's voxelised femur), bone weighted more
  than soft tissue by another projector's attenuation curve. With ``tissue_fit`` (masked inputs;
  :data:`TISSUE_FIT` in ``--refine``) the DRR compared is not the whole masked DRR but the least-
  squares combination ``a DRR(femur) + b DRR(rest)`` that best fits each radiograph
  (:func:`tissue_fit_ncc`: the NCC is then the fit's multiple correlation), so that the femur
  alone is compared with the femur alone (``b`` near 0) and a whole body with a whole body
  (``b`` near ``a``). Validation and held-out figures: docs/results.md, "Refining loose
  silhouettes; the tissue fit".
- The silhouette term (masked inputs only; weight 0 by default, :data:`SILHOUETTE_WEIGHT` in
  ``--refine``) is the soft Dice of that soft mask with the input's femur mask (its pixels above
  zero). The NCC term compares intensities, and those depend on what else lies on the rays: the
  atlas is a whole-body CT, so on a radiograph of a femur alone in air (an outside projector's
  voxelised femur) its DRR keeps a soft-tissue plateau the radiograph lacks, and maximising NCC
  moves the outline little. The outline does not depend on it: on such radiographs the term takes
  the network's Dice from about 0.85 to 0.93 (docs/results.md, "Silhouette term in the refinement").
- Both images are normalised as the network normalises its inputs
  (:func:`~biplanar.models.network.normalise_pair`: each divided by its maximum); global NCC
  (:func:`~biplanar.layers.similarity.global_ncc`) is invariant to that scale, so the objective
  does not depend on it, but the images compared are the ones the network saw.
- The smoothness term is MONAI's ``DiffusionLoss`` (mean squared finite difference, mm^2 per voxel
  step; computed by :func:`~biplanar.layers.smoothness.diffusion_energy`, no MONAI import) of
  ``phi``'s displacement, weighted by the config's ``loss.smoothness_weight``, as in
  training (:class:`~biplanar.training.losses.RegistrationLoss`).
- The velocity update is optimised on a control grid ``velocity_stride`` times coarser than the
  atlas grid and trilinearly upsampled (a free-form deformation): a per-voxel field driven by two
  projections is under-determined, and Adam's per-element step normalisation would otherwise move
  voxels far from any image evidence as much as those on the femur's surface.

- Speed: the iterates' velocity can be integrated on the atlas grid pooled by 2
  (:attr:`RefineSettings.integration_factor`: 8x fewer voxels for the seven squarings and their
  gradients) and the displacement upsampled, plus a fixed correction that makes the start exact;
  or not integrated at all (:attr:`RefineSettings.linearised_iterates`: the start's exact
  displacement plus the update, ``--refine``'s choice, :func:`refine_settings`). Either way
  (:func:`_iterate_objective`) the result is evaluated exactly, on the atlas grid itself. The
  atlas is pulled through ``T o phi`` in one sampling
  (:meth:`~biplanar.layers.warp.SpatialTransformer.warp_through_affine`) and the smoothness
  gradient is a closed form (:func:`~biplanar.layers.smoothness.diffusion_energy`).

With the identity and a zero velocity as the start (the defaults), this is a pure optimisation
baseline with no learning; started from the network's output it is the ``--refine`` step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from biplanar.config import DEFAULT_NUM_SAMPLES, bounded, check_fields, non_negative
from biplanar.data.masks import MASK_MIN_PATH_MM
from biplanar.errors import InputError
from biplanar.geometry.projection import ProjectionView
from biplanar.geometry.transforms import similarity_matrix
from biplanar.geometry.volume_grid import VolumeGrid, pooled_grid
from biplanar.layers.resample import pool_volume, upsample_field
from biplanar.layers.similarity import global_ncc
from biplanar.layers.smoothness import diffusion_energy
from biplanar.layers.velocity import VelocityIntegrator, compose_affine_displacement
from biplanar.layers.warp import SpatialTransformer, affine_displacement, check_displacement
from biplanar.models.network import normalise_pair
from biplanar.models.projectors import ProjectorCache, ViewPair
from biplanar.optimisation.adam import Adam
from biplanar.progress import progress_bar

# Width of the soft mask rule's linear ramp, mm of femur path, centred on the rule's threshold:
# 0 below MASK_MIN_PATH_MM - width / 2 (so nothing outside the silhouette leaks in, as a
# sigmoid's tail would let the whole body's DRR through), 1 above MASK_MIN_PATH_MM + width / 2;
# in between it passes gradients to the silhouette's position.
SILHOUETTE_RAMP_MM = 1.0

# Weight of the silhouette term in ``register --refine`` and ``evaluate --refine`` (module doc).
# Chosen on 4 validation subjects (shape-model femurs, dataset seed 2026, not the held-out seed
# 9090) rendered as a whole body, as the femur alone in air and as a uniform femur alone, v11 +
# segmentation v4, true masks, 50 iterations (``python examples/silhouette_weight.py --n 4 --out
# runs/silhouette_weight``): mean Dice femur alone / uniform alone / whole body 0.869 / 0.795 / 0.950
# at weight 0; 0.938 / 0.917 / 0.951 at 3; 0.942 / 0.925 / 0.952 at 10; 0.944 / 0.929 / 0.952 at 30;
# 0.944 / 0.930 / 0.952 at 100.
SILHOUETTE_WEIGHT = 30.0
# Whether ``register --refine`` and ``evaluate --refine`` compare the radiographs with a fitted
# femur + rest combination (:func:`tissue_fit_ncc`, module doc) rather than the whole DRR. Chosen on
# the silhouette weight's validation subjects (``python examples/silhouette_weight.py --n 4 --weights
# 30 --tissue-fit --out runs/silhouette_tissue_fit``, and the same without ``--tissue-fit``).
TISSUE_FIT = True


def soft_mask(femur_path_mm: Tensor) -> Tensor:
    """The mask rule (:data:`~biplanar.data.masks.MASK_MIN_PATH_MM`) made differentiable: a
    linear ramp of width :data:`SILHOUETTE_RAMP_MM` over the femur path length (mm), in [0, 1]."""
    return ((femur_path_mm - MASK_MIN_PATH_MM) / SILHOUETTE_RAMP_MM + 0.5).clamp(0.0, 1.0)


@dataclass(frozen=True)
class RefineSettings:
    """Adam's settings for :func:`refine_registration`.

    Attributes:
        iterations: Adam steps.
        lr_rotation_rad: learning rate of the three rotation angles, radians (about one step's size).
        lr_translation_mm: learning rate of the translation, mm.
        lr_log_scale: learning rate of the log of the isotropic scale.
        lr_velocity_mm: learning rate of the control-grid velocity, mm.
        velocity_stride: the control grid's coarsening factor (1: per-voxel velocity).
        affine_iterations: the first this many of the ``iterations`` steps move only ``T`` (the
            velocity is frozen): an affine registration before the deformable one.
        integration_factor: the iterates' velocity is integrated on the atlas grid pooled by this
            factor (:func:`~biplanar.geometry.volume_grid.pooled_grid`) and its displacement
            upsampled (1: on the atlas grid itself). The result is always evaluated exactly, on
            the atlas grid (:func:`refine_registration`).
        linearised_iterates: the iterates are not integrated at all: an iterate's displacement is
            the start's exact ``exp(v_0) - id`` plus the velocity update ``dv`` itself, the
            first-order expansion of ``exp(v_0 + dv)`` in ``dv`` with the start's Jacobian taken as
            the identity (good while ``v_0`` varies slowly over the distance it moves points). As
            with the pooled integration, the result is evaluated exactly. Excludes
            ``integration_factor > 1``.

    The default rates were chosen on validation cases 3, 8 and 25 of a ``lite`` mixed-geometry
    dataset (seed 2026) with a ``lite`` network trained for 6 epochs, by the mean Dice after 50
    iterations (network alone: 0.870). Velocity rate 0.3 / 0.1 / 0.03 / 0.01 / 0 mm with the
    pose rates (0.003 rad, 0.3 mm, 0.003): 0.940 / 0.951 / 0.956 / 0.947 / 0.939; velocity 0.03 mm
    with the pose rates x2: 0.959, x4 (the defaults): 0.960. A larger velocity rate matches the
    projections better (NCC up to 0.999) and the 3D shape worse: two views leave the deformation
    under-determined, and the small rate keeps it close to the network's.
    """

    iterations: int = bounded(50, 0)
    lr_rotation_rad: float = non_negative(0.012)
    lr_translation_mm: float = non_negative(1.2)
    lr_log_scale: float = non_negative(0.012)
    lr_velocity_mm: float = non_negative(0.03)
    velocity_stride: int = bounded(4, 1)
    affine_iterations: int = bounded(0, 0)
    integration_factor: int = bounded(1, 1)
    linearised_iterates: bool = False

    def __post_init__(self) -> None:
        """Check each field's constraint, and that the affine phase fits in ``iterations``.

        Raises:
            InputError: (a ``ValueError``) ``velocity_stride: expected an integer >= 1, got 0``.
        """
        check_fields(self)
        if self.affine_iterations > self.iterations:
            raise InputError(
                f"affine_iterations: expected 0 to iterations ({self.iterations}), got {self.affine_iterations}"
            )
        if self.linearised_iterates and self.integration_factor > 1:
            raise InputError(
                f"integration_factor: expected 1 with linearised_iterates (they integrate nothing), "
                f"got {self.integration_factor}"
            )

    @property
    def approximate_iterates(self) -> bool:
        """Whether the iterates' objective approximates the exact one (pooled or linearised)."""
        return self.integration_factor > 1 or self.linearised_iterates


@dataclass
class ObjectiveValue:
    """One evaluation of :class:`ProjectionObjective`.

    Attributes:
        loss: scalar, the objective (module doc).
        ncc: ``(2,)`` global NCC per view (AP, LAT) of the normalised DRR and radiograph.
        smoothness: scalar, ``DiffusionLoss`` of ``phi``'s displacement, mm^2 per voxel step.
        matrix: ``(1, 4, 4)`` pull matrix of ``T``, world mm.
        local_displacement: ``(1, 3, I, J, K)`` displacement of ``phi``, mm, world components
            (``Psi``'s: :meth:`total_displacement`).
        drrs: ``(1, 2, rows, cols)`` normalised DRRs of the warped atlas (AP, LAT).
    """

    loss: Tensor
    ncc: Tensor
    smoothness: Tensor
    matrix: Tensor
    local_displacement: Tensor
    drrs: Tensor

    def total_displacement(self, grid: VolumeGrid) -> Tensor:
        """``(1, 3, I, J, K)`` displacement of ``Psi = T o phi`` on ``grid`` (the objective's), mm,
        world components (:func:`~biplanar.layers.velocity.compose_affine_displacement`)."""
        return compose_affine_displacement(self.matrix, self.local_displacement, grid)


class ProjectionObjective(nn.Module):
    """The objective of the module doc for one pair of radiographs.

    Args:
        atlas_mu: ``(1, 1, I, J, K)`` atlas attenuation, 1/mm, on ``grid``.
        atlas_labels: ``(1, 1, I, J, K)`` atlas femur label (0/1, or soft in [0, 1]) on ``grid``.
        grid: the atlas grid (world RAS+ mm).
        views: the calibrated ``(AP, LAT)`` pair.
        radiographs: ``(1, 2, rows, cols)`` line integrals (AP, LAT) as the network sees them:
            radiograph x femur mask, or with ``masked=False`` the radiographs alone.
        centre_world: ``(3,)`` mm, the centre ``T`` rotates and scales about (default: the grid's centre).
        smoothness_weight: weight of the smoothness term (the config's ``loss.smoothness_weight``).
        integration_steps: scaling-and-squaring steps (the config's ``local.integration_steps``).
        projectors: the network's ProST cache (default: a new one with ``num_samples`` per ray).
        num_samples: ProST samples per ray when ``projectors`` is not given.
        masked: whether ``radiographs`` are masked (then so are the DRRs, module doc).
        silhouette_weight: weight of the silhouette term (module doc); used only when ``masked``.
        tissue_fit: compare each radiograph with the best linear combination of two DRRs, the warped
            atlas femur's and the rest's (:func:`tissue_fit_ncc`), instead of the whole DRR: the
            weights follow what the radiograph holds (a whole body, a femur alone in air, bone
            weighted more by another projector). Used only when ``masked``.
    """

    atlas: Tensor  # buffers, registered in __init__
    centre_world: Tensor
    radiographs: Tensor

    def __init__(
        self,
        atlas_mu: Tensor,
        atlas_labels: Tensor,
        grid: VolumeGrid,
        views: ViewPair,
        radiographs: Tensor,
        centre_world: Tensor | None = None,
        smoothness_weight: float = 0.01,
        integration_steps: int = 7,
        projectors: ProjectorCache | None = None,
        num_samples: int = DEFAULT_NUM_SAMPLES,
        masked: bool = True,
        silhouette_weight: float = 0.0,
        tissue_fit: bool = False,
    ) -> None:
        super().__init__()
        self.silhouette_weight = float(silhouette_weight)
        self.tissue_fit = tissue_fit and masked
        grid.check_volume(atlas_mu, "atlas_mu")
        grid.check_volume(atlas_labels, "atlas_labels")
        rows, cols = views[0].image_shape
        image_shape = (rows, cols)
        if radiographs.shape != (1, 2, *image_shape) or tuple(views[1].image_shape) != image_shape:
            raise ValueError(
                f"radiographs: expected shape (1, 2, {image_shape[0]}, {image_shape[1]}) "
                f"(the views' image_shape), got {tuple(radiographs.shape)}"
            )
        if not bool(torch.isfinite(radiographs).all()):
            raise ValueError("radiographs: contain NaN or infinite values")
        self.grid, self.views = grid, views
        self.smoothness_weight = float(smoothness_weight)
        self.projectors = projectors or ProjectorCache(grid, image_shape, num_samples)
        centre = torch.as_tensor(grid.centre_world) if centre_world is None else centre_world
        # (1, 2, I, J, K): channel 0 attenuation (1/mm), channel 1 the femur label; warped together.
        self.register_buffer("atlas", torch.cat([atlas_mu, atlas_labels], dim=1).float())
        self.register_buffer("centre_world", centre.detach().float().to(atlas_mu.device))
        self.register_buffer("radiographs", radiographs.detach().float())
        self.masked = masked
        self.integrator = VelocityIntegrator(grid, integration_steps)
        self.transformer = SpatialTransformer(grid)

    def drrs(self, warped: Tensor) -> tuple[Tensor, Tensor]:
        """DRRs of the warped atlas, masked as the inputs are, and its soft silhouettes.

        Args:
            warped: ``(1, 2, I, J, K)`` warped attenuation (1/mm) and femur label.

        Returns:
            ``(1, 2, rows, cols)`` DRRs (AP, LAT) and ``(1, 2, rows, cols)`` soft silhouettes
            (:func:`soft_mask` of the warped femur's path length), in [0, 1].
        """
        images, silhouettes = [], []
        for view in self.views:
            mu_path, femur_path_mm = self.projectors.layers(view, warped.device)[0](warped).unbind(dim=1)
            silhouettes.append(soft_mask(femur_path_mm))
            images.append(mu_path * silhouettes[-1] if self.masked else mu_path)
        return torch.stack(images, dim=1), torch.stack(silhouettes, dim=1)

    def tissue_drrs(self, warped: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The masked DRRs of the warped atlas's femur and of the rest, and its soft silhouettes.

        Args:
            warped: ``(1, 2, I, J, K)`` warped attenuation (1/mm) and femur label.

        Returns:
            three ``(1, 2, rows, cols)`` (AP, LAT): the line integral of ``mu x label`` and of
            ``mu x (1 - label)``, each times the soft silhouette, and the soft silhouettes.
        """
        channels = torch.cat([warped, warped[:, :1] * warped[:, 1:]], dim=1)
        femurs, rests, silhouettes = [], [], []
        for view in self.views:
            mu_path, femur_path_mm, femur_mu_path = self.projectors.layers(view, warped.device)[0](channels).unbind(1)
            silhouettes.append(soft_mask(femur_path_mm))
            femurs.append(femur_mu_path * silhouettes[-1])
            rests.append((mu_path - femur_mu_path) * silhouettes[-1])
        return torch.stack(femurs, dim=1), torch.stack(rests, dim=1), torch.stack(silhouettes, dim=1)

    def forward(self, params: Tensor, velocity: Tensor) -> ObjectiveValue:
        """Evaluate the objective.

        Args:
            params: ``(1, 7)`` similarity parameters of ``T``: ``(rx, ry, rz)`` rad, ``(tx, ty, tz)``
                mm, ``log_s``.
            velocity: ``(1, 3, I, J, K)`` stationary velocity field, mm, world components.
        """
        check_displacement(velocity, self.grid, name="velocity")
        return self.evaluate(params, self.integrator(velocity.to(self.atlas.dtype)))

    def evaluate(self, params: Tensor, local: Tensor) -> ObjectiveValue:
        """Evaluate the objective with ``phi``'s displacement given rather than integrated.

        Args:
            params: ``(1, 7)`` similarity parameters of ``T`` (as in :meth:`forward`).
            local: ``(1, 3, I, J, K)`` displacement of ``phi``, mm, world components, on ``grid``.
        """
        if params.shape != (1, 7):
            raise ValueError(f"params: expected shape (1, 7), got {tuple(params.shape)}")
        check_displacement(local, self.grid, name="local displacement")
        params, local = params.to(self.atlas.dtype), local.to(self.atlas.dtype)
        matrix = similarity_matrix(params, self.centre_world)
        warped = self.transformer.warp_through_affine(self.atlas, matrix, local)
        if self.tissue_fit:
            femurs, rests, silhouettes = self.tissue_drrs(warped)
            ncc, drrs = tissue_fit_ncc(self.radiographs.flatten(2), femurs.flatten(2), rests.flatten(2))
            drrs = drrs.reshape(femurs.shape)
        else:
            drrs, silhouettes = self.drrs(warped)
        # Per view (AP, LAT): (1, 2, rows, cols), channel 0 the radiograph, channel 1 the DRR.
        pairs = normalise_pair(self.radiographs, drrs)
        if not self.tissue_fit:
            ncc = torch.stack([global_ncc(pair[:, 1:2], pair[:, 0:1])[0] for pair in pairs])
        smoothness = diffusion_energy(local)
        loss = (1.0 - ncc).mean() + self.smoothness_weight * smoothness
        if self.masked and self.silhouette_weight > 0:
            masks = (self.radiographs > 0).to(silhouettes.dtype)
            overlap = 2 * (silhouettes * masks).sum(dim=(2, 3)) / (silhouettes + masks).sum(dim=(2, 3)).clamp(min=1e-6)
            loss = loss + self.silhouette_weight * (1.0 - overlap).mean()
        normalised_drrs = torch.stack([pair[:, 1] for pair in pairs], dim=1)
        return ObjectiveValue(loss, ncc, smoothness, matrix, local, normalised_drrs)


def tissue_fit_ncc(radiographs: Tensor, femurs: Tensor, rests: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """How well the best linear combination ``a femur + b rest + c`` fits each radiograph.

    The multiple correlation coefficient of a least-squares fit over the pixels: the global NCC of
    the fitted combination with the radiograph, in [0, 1], invariant to each DRR's scale.

    Args:
        radiographs, femurs, rests: ``(1, V, N)`` per view, ``N`` pixels: the radiographs and the
            DRRs of the femur and of the rest.

    Returns:
        ``(V,)`` the correlation per view and ``(1, V, N)`` the fitted combinations (centred).
    """
    centred = [x - x.mean(dim=-1, keepdim=True) for x in (radiographs, femurs, rests)]
    image, femur, rest = centred
    ff, rr, fr = (femur * femur).sum(-1), (rest * rest).sum(-1), (femur * rest).sum(-1)
    fy, ry = (femur * image).sum(-1), (rest * image).sum(-1)
    determinant = ff * rr - fr * fr + eps * (ff + rr) ** 2
    a, b = (rr * fy - fr * ry) / determinant, (ff * ry - fr * fy) / determinant
    fitted = a.unsqueeze(-1) * femur + b.unsqueeze(-1) * rest
    ncc = (fitted * image).sum(-1) / (fitted.norm(dim=-1) * image.norm(dim=-1) + eps)
    return ncc[0], fitted


@dataclass
class RefinementResult:
    """What :func:`refine_registration` returns (tensors detached, on the objective's device).

    Attributes:
        params: ``(1, 7)`` refined similarity parameters (radians, mm, log-scale).
        matrix: ``(1, 4, 4)`` their pull matrix, world mm.
        velocity: ``(1, 3, I, J, K)`` refined stationary velocity field, mm.
        local_displacement: ``(1, 3, I, J, K)`` displacement of ``phi = exp(v)``, mm.
        total_displacement: ``(1, 3, I, J, K)`` displacement of ``Psi = T o phi``, mm, world
            components, pull convention.
        ncc_before, ncc_after: per view (``AP``, ``LAT``) NCC of the objective at the start and end.
        loss_before, loss_after: the objective at the start and end.
        history: the objective of every iterate (``iterations + 1`` values, the start first).
        time_s: wall time of the optimisation, s.
    """

    params: Tensor
    matrix: Tensor
    velocity: Tensor
    local_displacement: Tensor
    total_displacement: Tensor
    ncc_before: dict[str, float]
    ncc_after: dict[str, float]
    loss_before: float
    loss_after: float
    history: list[float] = field(default_factory=list)
    time_s: float = 0.0


def _ncc_by_view(ncc: Tensor) -> dict[str, float]:
    return {"AP": float(ncc[0]), "LAT": float(ncc[1])}


def _coarse_shape(shape: tuple[int, ...], stride: int) -> tuple[int, ...]:
    return tuple(max(2, math.ceil((n - 1) / stride) + 1) for n in shape)


def _linear_weights(control_points: int, size: int, factor: int, like: Tensor) -> Tensor:
    """``(size / factor, control_points)`` linear-interpolation weights along one axis: control
    points evenly spaced from fine index 0 to ``size - 1``, read at pooled voxel ``n``'s centre,
    fine index ``factor n + (factor - 1) / 2`` (:func:`~biplanar.geometry.volume_grid.pooled_grid`)."""
    centres = torch.arange(size // factor, dtype=like.dtype, device=like.device) * factor + (factor - 1) / 2
    position = centres * (control_points - 1) / max(size - 1, 1)  # in control-point units
    lower = position.floor().clamp(0, control_points - 2).long()
    fraction = (position - lower).unsqueeze(1)
    columns = torch.arange(control_points, device=like.device)
    lower_weight = (columns == lower.unsqueeze(1)) * (1 - fraction)
    return lower_weight + (columns == (lower + 1).unsqueeze(1)) * fraction


def control_grid_field(control: Tensor, shape: tuple[int, int, int], factor: int = 1) -> Tensor:
    """Trilinear interpolation of a control-grid field at the voxel centres of a grid or its pooled grid.

    Args:
        control: ``(B, C, i, j, k)`` values at control points spanning the box of the grid's voxel
            centres (``i`` points from index 0 to ``I - 1`` along the first axis, and so on).
        shape: ``(I, J, K)`` of the grid.
        factor: read the field at the voxel centres of the grid pooled by ``factor``; 1: the grid's
            own (then equal to ``F.interpolate(..., align_corners=True)``).

    Returns:
        ``(B, C, I / factor, J / factor, K / factor)``, the units of ``control``.
    """
    weights = [_linear_weights(points, size, factor, control) for points, size in zip(control.shape[2:], shape)]
    return torch.einsum("bcijk,xi,yj,zk->bcxyz", control, *weights)


def refine_registration(
    objective: ProjectionObjective,
    params: Tensor | None = None,
    velocity: Tensor | None = None,
    settings: RefineSettings = RefineSettings(),
    progress: bool = True,
) -> RefinementResult:
    """Minimise ``objective`` over ``(T, v)`` with Adam, from ``(params, velocity)``.

    Args:
        objective: the images, views and atlas.
        params: ``(1, 7)`` initial similarity parameters (default: the identity, zeros).
        velocity: ``(1, 3, I, J, K)`` initial velocity field, mm (default: zeros).
        settings: iterations, learning rates, control-grid stride.
        progress: show a progress bar over the iterations (stderr).

    Returns:
        the refined transform (the iterate with the lowest objective: the last one unless a step
        made it worse) and the objective before and after; ``history`` holds the objective of
        every iterate, ``iterations + 1`` values. With ``settings.integration_factor > 1`` or
        ``settings.linearised_iterates`` the iterates (and ``history``) approximate the
        integration; the result, its displacements and the objective before and after are
        evaluated exactly, on the atlas grid itself.
    """
    started = time.perf_counter()
    device = objective.atlas.device
    params = torch.zeros(1, 7, device=device) if params is None else params.detach().float().to(device)
    base_velocity = (
        torch.zeros(1, 3, *objective.grid.shape, device=device)
        if velocity is None
        else velocity.detach().float().to(device)
    )
    check_displacement(base_velocity, objective.grid, name="velocity")
    # Leaves: rotation (rad), translation (mm), log-scale, control-grid velocity update (mm).
    leaves = [
        params[:, :3].clone(),
        params[:, 3:6].clone(),
        params[:, 6:].clone(),
        torch.zeros(1, 3, *_coarse_shape(objective.grid.shape, settings.velocity_stride), device=device),
    ]
    for leaf in leaves:
        leaf.requires_grad_(True)
    rates = (settings.lr_rotation_rad, settings.lr_translation_mm, settings.lr_log_scale, settings.lr_velocity_mm)
    optimiser = Adam(list(zip(leaves, rates, strict=True)))
    evaluate_iterate = _iterate_objective(objective, base_velocity, settings)

    history: list[float] = []
    first = best = None  # (objective, params, control-grid update) of the first and best iterates
    with progress_bar(progress, elapsed=True, remaining=False, fields=["loss {task.fields[loss]:.4f}"]) as bar:
        task = bar.add_task("refining", total=settings.iterations, loss=float("nan"))
        for step in range(settings.iterations + 1):
            last = step == settings.iterations  # the final iterate is evaluated, not stepped from
            optimiser.zero_grad()
            with torch.set_grad_enabled(not last):
                value = evaluate_iterate(torch.cat(leaves[:3], dim=1), leaves[3])
            history.append(float(value.loss.detach()))
            kept = (history[-1], torch.cat(leaves[:3], dim=1).detach(), leaves[3].detach().clone(), value)
            first = first or kept
            best = kept if best is None or kept[0] < best[0] else best
            if last:
                break
            value.loss.backward()
            if step < settings.affine_iterations:
                leaves[3].grad = None  # affine phase: Adam skips the velocity
            optimiser.step()
            bar.update(task, advance=1, loss=history[-1])
    assert first is not None and best is not None  # the loop evaluates at least one iterate

    def exact(iterate: tuple) -> tuple[Tensor, Tensor, ObjectiveValue]:
        """An iterate's params, atlas-grid velocity and exact objective value (detached); the first
        iterate's value is exact whatever the integration (:func:`_iterate_objective`)."""
        _, params_now, update, value_now = iterate
        velocity_now = base_velocity + control_grid_field(update, objective.grid.shape)
        if settings.approximate_iterates and iterate is not first:
            with torch.no_grad():
                value_now = objective(params_now, velocity_now)
        return params_now, velocity_now, _detached(value_now)

    start = exact(first)
    params, velocity, after = start if best is first else exact(best)
    before = start[2]
    return RefinementResult(
        params=params,
        matrix=after.matrix,
        velocity=velocity,
        local_displacement=after.local_displacement,
        total_displacement=after.total_displacement(objective.grid),
        ncc_before=_ncc_by_view(before.ncc),
        ncc_after=_ncc_by_view(after.ncc),
        loss_before=float(before.loss),
        loss_after=float(after.loss),
        history=history,
        time_s=time.perf_counter() - started,
    )


def _iterate_objective(
    objective: ProjectionObjective, base_velocity: Tensor, settings: RefineSettings
) -> Callable[[Tensor, Tensor], ObjectiveValue]:
    """The objective of an iterate ``(params (1, 7), control-grid update (1, 3, i, j, k) mm)``.

    By default the velocity ``base_velocity + update`` integrated on the atlas grid. With
    :attr:`RefineSettings.linearised_iterates`, the start's exact displacement plus the update.
    With :attr:`RefineSettings.integration_factor` ``f > 1`` the velocity is integrated on the
    pooled grid and upsampled, plus a fixed correction: what the pooled integration misses of the
    start's exact displacement (its fine detail). In the last two the start is evaluated exactly, and
    an iterate's displacement is the start's exact one plus an approximation of the change.
    """
    grid, factor = objective.grid, settings.integration_factor
    if settings.linearised_iterates:
        with torch.no_grad():
            start = objective.integrator(base_velocity)
        return lambda params, update: objective.evaluate(params, start + control_grid_field(update, grid.shape))
    if factor == 1:
        return lambda params, update: objective(params, base_velocity + control_grid_field(update, grid.shape))
    integrator = VelocityIntegrator(pooled_grid(grid, factor), objective.integrator.steps)
    pooled_base = pool_volume(base_velocity, factor)
    with torch.no_grad():
        missed = objective.integrator(base_velocity) - upsample_field(integrator(pooled_base), grid.shape)

    def evaluate(params: Tensor, update: Tensor) -> ObjectiveValue:
        velocity = pooled_base + control_grid_field(update, grid.shape, factor)
        return objective.evaluate(params, upsample_field(integrator(velocity), grid.shape) + missed)

    return evaluate


def _detached(value: ObjectiveValue) -> ObjectiveValue:
    """``value`` with every tensor detached."""
    return ObjectiveValue(*(getattr(value, name).detach() for name in ObjectiveValue.__dataclass_fields__))


def refine_settings(iterations: int) -> RefineSettings:
    """The settings of ``register --refine`` and ``evaluate --refine``: the default rates, and
    linearised iterates (:attr:`RefineSettings.linearised_iterates`).

    Chosen on 10 validation phantoms (``lite``, dataset seed 11, not the held-out seed 7) with
    ``examples/refine_study.py``. 2026-12-04, the v2 model (alone 0.9527): 50 iterations reached a
    mean Dice of 0.9608 integrating on the atlas grid itself, 19.8 s per case, and 0.9608 with the
    velocity integrated on the grid pooled by 2, 7.6 s; 40 pooled iterations 0.9599 in 6.1 s.
    2026-12-05, the v4 model (alone 0.9530): pooled 0.9612 in 14.3 s, linearised 0.9606 in 8.7 s
    (``docs/training.md``), the only one of the two within 10 s on that machine (a 3-D sampler 2x
    slower than 2026-12-04's).
    """
    return RefineSettings(iterations=iterations, linearised_iterates=True)


def refine_output(
    network,
    config,
    output,
    radiographs: Tensor,
    views: dict[str, ProjectionView],
    masked: bool,
    iterations: int,
    progress: bool,
):
    """Refine the network's output by test-time intensity registration
    (:func:`biplanar.optimisation.refine_registration`).

    Args:
        network: the :class:`~biplanar.models.network.AtlasRegistrationNet` that made ``output``.
        config: its :class:`~biplanar.config.ExperimentConfig` (smoothness weight, integration steps).
        output: the network's :class:`~biplanar.models.network.RegistrationOutput` (batch of 1).
        radiographs: ``(1, 2, rows, cols)`` the network's inputs, AP then LAT, on its device.
        views: ``{"AP": view, "LAT": view}``, the views the network was given.
        masked: whether ``radiographs`` are masked (the objective compares the femur DRR only then).
        iterations: Adam steps.
        progress: show a progress bar.

    Returns:
        the refined output (the fields :func:`write_volumes` and :func:`write_projections` read:
        params, matrices, velocity, displacements, warped images and labels) and the optimisation
        record (:class:`~biplanar.optimisation.RefinementResult`).
    """

    objective = ProjectionObjective(
        network.atlas_mu,
        network.atlas_labels,
        network.grid,
        (views["AP"], views["LAT"]),
        radiographs,
        centre_world=network.atlas_centre,
        smoothness_weight=config.loss.smoothness_weight,
        integration_steps=config.local.integration_steps,
        projectors=network.projectors,
        masked=masked,
        silhouette_weight=SILHOUETTE_WEIGHT,
        tissue_fit=TISSUE_FIT,
    )
    with torch.enable_grad():
        result = refine_registration(
            objective, output.params, output.velocity, refine_settings(iterations), progress=progress
        )
    affine_field = affine_displacement(result.matrix, network.grid)
    refined = replace(
        output,
        params=result.params,
        affine_matrix=result.matrix,
        velocity=result.velocity,
        local_displacement=result.local_displacement,
        total_displacement=result.total_displacement,
        affine_image=network.transformer(network.atlas_mu, affine_field),
        warped_image=network.transformer(network.atlas_mu, result.total_displacement),
        affine_labels=network.transformer(network.atlas_labels, affine_field),
        warped_labels=network.transformer(network.atlas_labels, result.total_displacement),
    )
    return refined, result
