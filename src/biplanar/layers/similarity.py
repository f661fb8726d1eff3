"""Differentiable image similarities shared by the losses, the refinement and the reports."""

from __future__ import annotations

from torch import Tensor


def global_ncc(moving: Tensor, fixed: Tensor, eps: float = 1e-8) -> Tensor:
    """Global normalised cross-correlation per batch element.

    Args:
        moving, fixed: ``(B, C, ...)`` of the same shape.

    Returns:
        ``(B,)`` in ``[-1, 1]``.
    """
    moving = moving.flatten(1) - moving.flatten(1).mean(dim=1, keepdim=True)
    fixed = fixed.flatten(1) - fixed.flatten(1).mean(dim=1, keepdim=True)
    return (moving * fixed).sum(1) / (moving.norm(dim=1) * fixed.norm(dim=1) + eps)


def soft_dice(predicted: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """``(B,)`` Dice of soft or binary ``(B, 1, ...)`` label maps."""
    predicted, target = predicted.flatten(1), target.flatten(1)
    return (2 * (predicted * target).sum(1) + eps) / (predicted.sum(1) + target.sum(1) + eps)
