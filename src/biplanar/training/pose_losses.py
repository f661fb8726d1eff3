"""SOPI's losses (Chen et al. 2023): RTPI's regression loss and the fine registration's
double-backward gradient-alignment loss.

RTPI (section 2.2)::

    L_RTPI = alpha * L_GD(I_f, I_m) + beta * MSE(z_hat, z) + lam * R

``I_f`` the X-ray, ``I_m`` the ProST DRR at the predicted pose (differentiable in the pose),
``L_GD`` the gradient-difference loss (Penney et al. 1998) of the standardised images, ``z`` the
scaled parameters ``params / sigma``, ``R`` the regulariser of
:class:`~biplanar.models.sopi.config.PoseLossConfig`.

Fine registration (section 2.3, eq. 6-7): the masked distance of embedded features

    L_N(theta) = sum_levels  sum(m_l * (e_m,l(theta) - e_f,l)^2) / (C_l * sum(m_l))

is *not* minimised in training; its gradient ``g = dL_N/dtheta`` (:func:`pose_gradient`, with a
graph to the encoders' weights) is trained to point away from the target along the geodesic: per
part (rotation, translation), ``1 - cos(g, -d)`` with ``d`` the unit geodesic direction from
``theta`` to the target (:func:`biplanar.geometry.se3.geodesic_direction`; the public SOPI code
uses the squared distance of the unit vectors, ``2 - 2 cos``: the same minimiser). The rotation
part of ``d`` is a world-frame rotation vector while ``g``'s is a gradient in Euler angles; the
two frames agree to first order near the identity (``R = Rx Ry Rz`` with small angles rotates by
``(rx, ry, rz)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biplanar.models.sopi.config import PoseLossConfig
from biplanar.models.sopi.rtpi import standardise

EPS = 1e-8


def image_gradients(image: Tensor) -> tuple[Tensor, Tensor]:
    """Forward differences of ``(B, C, H, W)`` along rows ``(B, C, H-1, W)`` and columns ``(B, C, H, W-1)``."""
    return image[..., 1:, :] - image[..., :-1, :], image[..., :, 1:] - image[..., :, :-1]


def gradient_difference(fixed: Tensor, moving: Tensor) -> Tensor:
    """Gradient difference similarity (Penney et al. 1998) of two standardised image batches.

    ``GD = mean A_v / (A_v + (dI_f/dv - dI_m/dv)^2) + mean A_h / (A_h + (dI_f/du - dI_m/du)^2)``,
    ``A_v``, ``A_h`` the variances of the fixed image's gradients: 2 for identical images,
    towards 0 for unrelated ones.

    Args:
        fixed, moving: ``(B, C, H, W)``, each image already standardised.

    Returns:
        ``(B,)`` similarity in ``(0, 2]``.
    """
    if fixed.shape != moving.shape or fixed.dim() != 4:
        raise ValueError(
            f"fixed, moving: expected two (B, C, H, W) of the same shape, got "
            f"{tuple(fixed.shape)} and {tuple(moving.shape)}"
        )
    total = fixed.new_zeros(fixed.shape[0])
    for fixed_gradient, moving_gradient in zip(image_gradients(fixed), image_gradients(moving)):
        variance = fixed_gradient.flatten(1).var(dim=1).view(-1, 1, 1, 1) + EPS
        difference = fixed_gradient - moving_gradient
        total = total + (variance / (variance + difference**2)).flatten(1).mean(dim=1)
    return total


def gradient_difference_loss(fixed: Tensor, moving: Tensor) -> Tensor:
    """``(B,)`` loss ``1 - GD / 2`` in ``[0, 1)`` of two ``(B, C, H, W)`` images (standardised here)."""
    return 1.0 - 0.5 * gradient_difference(standardise(fixed), standardise(moving))


def weight_penalty(network: nn.Module) -> Tensor:
    """``1/2 sum w^2`` over the weights of ``network``'s convolutions and linear layers (no biases, no norms)."""
    squares = [
        module.weight.square().sum()
        for module in network.modules()
        if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.Linear))
    ]
    return 0.5 * torch.stack(squares).sum()


class RTPILoss(nn.Module):
    """``alpha * L_GD + beta * MSE(z_hat, z) + lam * R`` (module doc), averaged over the batch.

    Args:
        config: the ``loss`` section of the SOPI config.
    """

    def __init__(self, config: PoseLossConfig) -> None:
        super().__init__()
        self.config = config

    def forward(
        self, radiograph: Tensor, drr: Tensor, scaled_pred: Tensor, scaled_true: Tensor, network: nn.Module
    ) -> dict[str, Tensor]:
        """The loss and its parts.

        Args:
            radiograph: ``(B, 1, rows, cols)`` the X-ray ``I_f``.
            drr: ``(B, 1, rows, cols)`` the DRR ``I_m`` at the predicted pose.
            scaled_pred, scaled_true: ``(B, 6)`` predicted and true ``params / sigma``.
            network: the RTPI network (for the ``weights`` regulariser).

        Returns:
            ``total``, ``similarity`` (``L_GD``), ``mse`` and ``regulariser``, scalars.
        """
        if scaled_pred.shape != scaled_true.shape or scaled_pred.shape[-1] != 6:
            raise ValueError(
                f"scaled_pred, scaled_true: expected two (B, 6), got {tuple(scaled_pred.shape)} "
                f"and {tuple(scaled_true.shape)}"
            )
        config = self.config
        similarity = gradient_difference_loss(radiograph, drr).mean()
        mse = F.mse_loss(scaled_pred, scaled_true)
        regulariser = weight_penalty(network) if config.regulariser == "weights" else scaled_pred.square().mean()
        total = config.alpha * similarity + config.beta * mse + config.lam * regulariser
        return {"total": total, "similarity": similarity, "mse": mse, "regulariser": regulariser}


def downsample_mask(mask: Tensor, size: torch.Size | tuple[int, int]) -> Tensor:
    """``(B, 1, H, W)`` 0/1 mask -> ``(B, 1, h, w)`` fraction of each feature cell inside the mask."""
    rows, cols = size
    return F.adaptive_avg_pool2d(mask, (rows, cols))


def masked_feature_distance(moving: tuple[Tensor, ...], fixed: tuple[Tensor, ...], mask: Tensor) -> Tensor:
    """``L_N`` (SOPI eq. 6): masked mean squared distance of embedded features, summed over levels.

    Args:
        moving, fixed: per level ``(B, C_l, h_l, w_l)`` features of the DRR and of the X-ray.
        mask: ``(B, 1, rows, cols)`` projected mask (0/1) at the current pose.

    Returns:
        ``(B,)`` distance (0 where the mask is empty).
    """
    if len(moving) != len(fixed):
        raise ValueError(f"moving, fixed: expected the same number of levels, got {len(moving)} and {len(fixed)}")
    total = mask.new_zeros(mask.shape[0])
    for level_moving, level_fixed in zip(moving, fixed):
        if level_moving.shape != level_fixed.shape:
            raise ValueError(
                f"features: level shapes differ, {tuple(level_moving.shape)} vs {tuple(level_fixed.shape)}"
            )
        weights = downsample_mask(mask, level_moving.shape[-2:])
        squared = (weights * (level_moving - level_fixed) ** 2).flatten(1).sum(dim=1)
        total = total + squared / (level_moving.shape[1] * weights.flatten(1).sum(dim=1) + EPS)
    return total


def pose_gradient(distance: Tensor, drr: Tensor, drr_jacobian: Tensor, create_graph: bool = True) -> Tensor:
    """``g = dL_N/dtheta = J^T dL_N/dI`` by the chain rule through the DRR ``I``.

    ``J = dI/dtheta`` (:meth:`~biplanar.layers.prost.ProST.project_with_pose_jacobian`) does not
    depend on the encoders' weights, so ``g`` keeps exactly the graph that the double backward
    needs (through the encoders, not through ProST's sampling a second time).

    Args:
        distance: ``(B,)`` ``L_N`` computed from ``drr`` (with a graph to the encoders' weights).
        drr: ``(B, 1, rows, cols)`` the DRR at ``theta``, a tensor that requires grad.
        drr_jacobian: ``(B, 1, rows, cols, 6)`` ``dI/dtheta``.
        create_graph: keep the graph of ``g`` so that a loss on it can be back-propagated to the
            encoders' weights; ``False`` for evaluation and inference.

    Returns:
        ``(B, 6)`` ``g`` (per rad, per mm).
    """
    (image_gradient,) = torch.autograd.grad(distance.sum(), drr, create_graph=create_graph)
    return torch.einsum("bchw,bchwp->bp", image_gradient, drr_jacobian)


def gradient_alignment_loss(gradient: Tensor, direction: Tensor) -> dict[str, Tensor]:
    """The double-backward loss: ``g = dL_N/dtheta`` against the geodesic direction, per part.

    Args:
        gradient: ``(B, 6)`` ``g`` (:func:`pose_gradient`, with its graph to the encoders' weights).
        direction: ``(B, 6)`` unit geodesic directions from ``theta`` towards the targets, rotation
            and translation parts normalised separately.

    Returns:
        ``total`` = ``rotation + translation``, where each part is ``mean(1 - cos(g, -d))`` in
        ``[0, 2]``; ``gradient`` is ``g``; ``cos_rotation`` and ``cos_translation`` are the
        batch-mean cosines (detached).
    """
    if gradient.shape != direction.shape or gradient.shape[-1] != 6:
        raise ValueError(
            f"gradient, direction: expected two (B, 6), got {tuple(gradient.shape)} and {tuple(direction.shape)}"
        )
    cos_rotation = F.cosine_similarity(gradient[:, :3], -direction[:, :3], dim=1, eps=EPS)
    cos_translation = F.cosine_similarity(gradient[:, 3:], -direction[:, 3:], dim=1, eps=EPS)
    rotation, translation = (1.0 - cos_rotation).mean(), (1.0 - cos_translation).mean()
    return {
        "total": rotation + translation,
        "rotation": rotation,
        "translation": translation,
        "gradient": gradient,
        "cos_rotation": cos_rotation.mean().detach(),
        "cos_translation": cos_translation.mean().detach(),
    }
