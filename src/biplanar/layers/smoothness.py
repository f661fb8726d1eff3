"""The diffusion regulariser of displacement fields with a closed-form gradient.

``diffusion_energy(u)`` equals MONAI's ``DiffusionLoss()`` (``normalize=False``, mean reduction)::

    E(u) = mean over batch, channels and interior voxels of  sum over axes d of  g_d^2,
    g_d = (u[p + e_d] - u[p - e_d]) / 2          (central difference, voxel steps)

with the interior ``[1:-1]`` along every spatial axis. Its gradient is written out rather than
left to autograd: ``dE/du[p + e_d] += g_d(p) / N`` and ``dE/du[p - e_d] -= g_d(p) / N`` (``N``
the number of terms). Autograd through MONAI's slicing fills and copies a full-size zero tensor for
every slice (six per axis): in ``register --refine`` that made the smoothness term the largest cost
of an iteration (``docs/benchmarks.md``). Tested against MONAI's value and gradient and with
``gradcheck``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

SPATIAL_AXES = (2, 3, 4)  # of (B, C, I, J, K)


def _interior(axis: int, shift: int) -> tuple[slice, ...]:
    """Index of the interior voxels ``[1:-1]`` of a ``(B, C, I, J, K)`` field, moved ``shift``
    (-1, 0 or +1) voxels along ``axis``."""
    index = [slice(None), slice(None)] + [slice(1, -1)] * 3
    index[axis] = slice(1 + shift, shift - 1 if shift < 1 else None)
    return tuple(index)


def _central_differences(field: Tensor) -> list[Tensor]:
    """``g_d`` for each spatial axis: ``(B, C, I - 2, J - 2, K - 2)`` each, units of ``field``."""
    return [(field[_interior(axis, 1)] - field[_interior(axis, -1)]) / 2 for axis in SPATIAL_AXES]


class _DiffusionEnergy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, field: Tensor) -> Tensor:
        differences = _central_differences(field)
        ctx.save_for_backward(*differences)
        ctx.field_shape = field.shape  # type: ignore[attr-defined]
        return (
            torch.stack([(difference * difference).sum() for difference in differences]).sum() / differences[0].numel()
        )

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_output: Tensor) -> Tensor:
        differences = ctx.saved_tensors  # type: ignore[attr-defined]
        scale = grad_output / differences[0].numel()
        grad = differences[0].new_zeros(ctx.field_shape)  # type: ignore[attr-defined]
        for axis, difference in zip(SPATIAL_AXES, differences):
            weighted = difference * scale
            grad[_interior(axis, 1)] += weighted
            grad[_interior(axis, -1)] -= weighted
        return grad


def diffusion_energy(displacement: Tensor) -> Tensor:
    """Mean squared central difference of a field (MONAI's ``DiffusionLoss()``; module doc).

    Args:
        displacement: ``(B, 3, I, J, K)``, any units (mm here), every spatial size > 2.

    Returns:
        scalar, the units of ``displacement`` squared per voxel step squared.

    Raises:
        ValueError: on a shape that is not ``(B, 3, I, J, K)`` with ``I, J, K > 2``.
    """
    if displacement.dim() != 5 or displacement.shape[1] != 3 or min(displacement.shape[2:]) <= 2:
        raise ValueError(
            f"displacement: expected shape (B, 3, I, J, K) with I, J, K > 2, got {tuple(displacement.shape)}"
        )
    return _DiffusionEnergy.apply(displacement)
