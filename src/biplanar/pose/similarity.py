"""Differentiable 2D image similarities for intensity-based 2D/3D registration.

All take ``fixed`` and ``moving`` images ``(B, 1, H, W)`` (any intensity units; a radiograph and
a DRR; ``fixed`` may be one image ``(1, 1, H, W)`` against ``B`` moving ones, its part of the work
then done once) and an optional ``mask`` ``(B or 1, 1, H, W)`` of weights in ``[0, 1]`` (e.g. 0
outside the collimated field), and return ``(B,)`` similarities, 1 for identical images:

- :func:`ncc`: normalised cross-correlation of the intensities, in ``[-1, 1]``; invariant to
  ``a * image + b`` with ``a > 0`` (and ``-1`` for ``a < 0``).
- :func:`gradient_correlation` (GC, Penney et al. 1998): the mean of the NCCs of the x and of the y
  Sobel gradients, in ``[-1, 1]``; invariant to ``a * image + b``, ``a > 0``.
- :func:`normalised_gradient_information` (NGI): Pluim et al. 2000's gradient term
  ``sum_x w(alpha) min(|g_f|, |g_m|)``, ``w(alpha) = (cos(2 alpha) + 1) / 2 = cos^2(alpha)``,
  ``alpha`` the angle between the two gradients, computed on gradients divided by their mean
  magnitude inside the mask (so ``a * image + b`` with ``a != 0`` leaves it unchanged); in
  ``[0, 1]``, 1 for identical images.

Gradients are 3x3 Sobel filters on the image interior (no padding), so a mask is cropped by one
pixel on each side for GC and NGI.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-8

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0  # d/d(col), per pixel


def _check_images(fixed: Tensor, moving: Tensor, mask: Tensor | None) -> None:
    if moving.dim() != 4 or moving.shape[1] != 1:
        raise ValueError(f"moving: expected shape (B, 1, H, W), got {tuple(moving.shape)}")
    batch, rows, cols = moving.shape[0], moving.shape[2], moving.shape[3]
    for name, image in (("fixed", fixed), ("mask", mask)):
        if image is not None and (
            image.dim() != 4 or image.shape[0] not in (1, batch) or tuple(image.shape[1:]) != (1, rows, cols)
        ):
            raise ValueError(f"{name}: expected shape ({batch} or 1, 1, {rows}, {cols}), got {tuple(image.shape)}")


def _weights(like: Tensor, mask: Tensor | None) -> Tensor:
    """``(B or 1, 1, H, W)`` weights summing to 1 per batch element (uniform without a mask)."""
    weights = torch.ones_like(like) if mask is None else mask.to(like)
    return weights / weights.sum(dim=(1, 2, 3), keepdim=True).clamp_min(EPS)


def _weighted_ncc(fixed: Tensor, moving: Tensor, weights: Tensor) -> Tensor:
    """``(B,)`` NCC of ``(B, C, H, W)`` images with per-pixel weights summing to 1 (each may have batch 1)."""
    dims = (1, 2, 3)
    fixed = fixed - (weights * fixed).sum(dims, keepdim=True)
    moving = moving - (weights * moving).sum(dims, keepdim=True)
    covariance = (weights * fixed * moving).sum(dims)
    variance = (weights * fixed * fixed).sum(dims) * (weights * moving * moving).sum(dims)
    return covariance / torch.sqrt(variance + EPS**2)


def ncc(fixed: Tensor, moving: Tensor, mask: Tensor | None = None) -> Tensor:
    """Normalised cross-correlation ``(B,)`` of ``(B, 1, H, W)`` images inside ``mask`` (module doc)."""
    _check_images(fixed, moving, mask)
    return _weighted_ncc(fixed, moving, _weights(fixed, mask))


def sobel_gradients(image: Tensor) -> Tensor:
    """``(B, 1, H, W)`` -> ``(B, 2, H - 2, W - 2)`` Sobel derivatives ``(d/dcol, d/drow)`` per pixel."""
    kernel_x = _SOBEL_X.to(image)
    # channel 0: d/d(col) (x, along u); channel 1: d/d(row) (y, along v) = the transposed kernel.
    kernels = torch.stack([kernel_x, kernel_x.T])[:, None]  # (2, 1, 3, 3)
    return F.conv2d(image, kernels)


def _interior(mask: Tensor | None) -> Tensor | None:
    """A ``(B, 1, H, W)`` mask cropped to the ``(H - 2, W - 2)`` Sobel interior."""
    return None if mask is None else mask[..., 1:-1, 1:-1]


def gradient_correlation(fixed: Tensor, moving: Tensor, mask: Tensor | None = None) -> Tensor:
    """Gradient correlation ``(B,)``: mean NCC of the x and y Sobel gradients (module doc)."""
    _check_images(fixed, moving, mask)
    grad_fixed, grad_moving = sobel_gradients(fixed), sobel_gradients(moving)
    weights = _weights(grad_fixed[:, :1], _interior(mask))
    return 0.5 * (
        _weighted_ncc(grad_fixed[:, :1], grad_moving[:, :1], weights)
        + _weighted_ncc(grad_fixed[:, 1:], grad_moving[:, 1:], weights)
    )


def normalised_gradient_information(fixed: Tensor, moving: Tensor, mask: Tensor | None = None) -> Tensor:
    """Normalised gradient information ``(B,)`` in ``[0, 1]`` (Pluim et al. 2000; module doc)."""
    _check_images(fixed, moving, mask)
    grad_fixed, grad_moving = sobel_gradients(fixed), sobel_gradients(moving)
    weights = _weights(grad_fixed[:, :1], _interior(mask))
    dims = (1, 2, 3)
    norm_sq_fixed = (grad_fixed * grad_fixed).sum(1, keepdim=True)  # (B, 1, h, w)
    norm_sq_moving = (grad_moving * grad_moving).sum(1, keepdim=True)
    magnitude_fixed, magnitude_moving = torch.sqrt(norm_sq_fixed + EPS**2), torch.sqrt(norm_sq_moving + EPS**2)
    # Divide each gradient field by its mean magnitude so that intensity scaling cancels.
    magnitude_fixed = magnitude_fixed / (weights * magnitude_fixed).sum(dims, keepdim=True).clamp_min(EPS)
    magnitude_moving = magnitude_moving / (weights * magnitude_moving).sum(dims, keepdim=True).clamp_min(EPS)
    dot = (grad_fixed * grad_moving).sum(1, keepdim=True)
    cos_sq = dot * dot / (norm_sq_fixed * norm_sq_moving + EPS**2)  # w(alpha) = cos^2(alpha)
    return (weights * cos_sq * torch.minimum(magnitude_fixed, magnitude_moving)).sum(dims)


Similarity = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]

SIMILARITIES: dict[str, Similarity] = {
    "ncc": ncc,
    "gc": gradient_correlation,
    "ngi": normalised_gradient_information,
}


def get_similarity(name: str) -> Similarity:
    """The similarity called ``name`` (one of :data:`SIMILARITIES`)."""
    if name not in SIMILARITIES:
        raise ValueError(f"similarity: expected one of {', '.join(SIMILARITIES)}, got {name!r}")
    return SIMILARITIES[name]
