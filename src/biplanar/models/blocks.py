"""Convolution blocks shared by the registration networks."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

NEGATIVE_SLOPE = 0.2  # LeakyReLU


def _runs_on_onednn(convolution: _ConvNd, images: Tensor) -> bool:
    """Whether :func:`torch.ops.aten.mkldnn_convolution` can run ``convolution`` on ``images`` exactly
    as :func:`torch.nn.functional.conv3d` would: float32 on a CPU with oneDNN, zero padding by
    numbers, outside autocast (which would cast the inputs first)."""
    return (
        images.device.type == "cpu"
        and images.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and convolution.padding_mode == "zeros"
        and not isinstance(convolution.padding, str)
        and not torch.is_autocast_enabled("cpu")
    )


class _OneDnnConvolution(_ConvNd):
    """Runs the convolution on oneDNN (mkldnn) on CPU at every size.

    For a batch of one, PyTorch sends a convolution with ``N * C * H <= 20480`` (the product of its
    input's first dimensions) to its reference CPU kernel (im2col / vol2col + GEMM). On the
    decoders' small 3-D convolutions that kernel is 3-16x slower than oneDNN, which computes the
    same values (to float32 rounding) and gradients (``benchmarks/bench_conv.py``). Parameters and
    checkpoints are those of the PyTorch class.
    """

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if not _runs_on_onednn(self, input):
            return super()._conv_forward(input, weight, bias)
        return torch.ops.aten.mkldnn_convolution(
            input, weight, bias, self.padding, self.stride, self.dilation, self.groups
        )


class OneDnnConv2d(_OneDnnConvolution, nn.Conv2d):
    """:class:`torch.nn.Conv2d` on oneDNN at every size (:class:`_OneDnnConvolution`)."""


class OneDnnConv3d(_OneDnnConvolution, nn.Conv3d):
    """:class:`torch.nn.Conv3d` on oneDNN at every size (:class:`_OneDnnConvolution`)."""


def conv_block_2d(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution (stride 1 or 2), batch norm, LeakyReLU; ``(B, C, H, W)`` in and out."""
    return nn.Sequential(
        OneDnnConv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(NEGATIVE_SLOPE),
    )


def conv_3d(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv3d:
    """3x3x3 stride-1 convolution whose weights are stored channels-last (``channels_last_3d``).

    The convolution's output then follows that memory order, and so do the activations after it:
    oneDNN (mkldnn) runs channels-last 3-D convolutions faster on CPU than the default order (a
    ``lite`` training step 1.1-1.2x faster, docs/benchmarks.md); values and parameters are the same.
    """
    convolution = OneDnnConv3d(in_channels, out_channels, 3, padding=1, bias=bias)
    convolution.weight.data = convolution.weight.data.contiguous(memory_format=torch.channels_last_3d)
    return convolution


def conv_block_3d(in_channels: int, out_channels: int, batch_norm: bool = True) -> nn.Sequential:
    """3x3x3 stride-1 convolution, optional batch norm, LeakyReLU; ``(B, C, D, H, W)`` in and out."""
    layers: list[nn.Module] = [conv_3d(in_channels, out_channels, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm3d(out_channels))
    layers.append(nn.LeakyReLU(NEGATIVE_SLOPE))
    return nn.Sequential(*layers)
