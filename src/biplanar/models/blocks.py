"""Convolution blocks shared by the registration networks."""

from __future__ import annotations

import torch
from torch import nn

NEGATIVE_SLOPE = 0.2  # LeakyReLU


def conv_block_2d(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution (stride 1 or 2), batch norm, LeakyReLU; ``(B, C, H, W)`` in and out."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(NEGATIVE_SLOPE),
    )


def conv_3d(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv3d:
    """3x3x3 stride-1 convolution whose weights are stored channels-last (``channels_last_3d``).

    The convolution's output then follows that memory order, and so do the activations after it:
    oneDNN (mkldnn) runs channels-last 3-D convolutions faster on CPU than the default order (a
    ``lite`` training step 1.1-1.2x faster, docs/benchmarks.md); values and parameters are the same.
    """
    convolution = nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=bias)
    convolution.weight.data = convolution.weight.data.contiguous(memory_format=torch.channels_last_3d)
    return convolution


def conv_block_3d(in_channels: int, out_channels: int, batch_norm: bool = True) -> nn.Sequential:
    """3x3x3 stride-1 convolution, optional batch norm, LeakyReLU; ``(B, C, D, H, W)`` in and out."""
    layers: list[nn.Module] = [conv_3d(in_channels, out_channels, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm3d(out_channels))
    layers.append(nn.LeakyReLU(NEGATIVE_SLOPE))
    return nn.Sequential(*layers)
