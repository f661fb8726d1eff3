"""RTPI: rigid transformation parameter initialisation (SOPI, Chen et al. 2023, section 2.2).

An asymmetric dual-branch network: 3D convolution blocks on the CT, whose feature volume is
flattened to 2D by folding the AP beam axis into the channels, concatenated with a 2D branch on
the X-ray; a localisation net of four residual blocks; one head per pose parameter.

Inputs are normalised inside the network (one code path for training and inference): the CT
attenuation is resampled to ``rtpi.volume_shape`` and divided by the attenuation of water, the
radiograph is standardised to zero mean and unit variance. The output is the scaled pose
``z = params / sigma`` (:meth:`~biplanar.models.sopi.config.SopiConfig.param_sigmas`).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biplanar.models.blocks import NEGATIVE_SLOPE, OneDnnConv2d, OneDnnConv3d, conv_block_2d
from biplanar.models.sopi.config import SopiConfig
from biplanar.physics.attenuation import MU_WATER_PER_MM

PARAMETER_NAMES = ("rx", "ry", "rz", "tx", "ty", "tz")
# The localisation net's final map is average-pooled to this (rows, cols) before the heads, so
# that the heads see where things are (a global pool would discard the in-plane position).
LOCALISATION_POOL = (4, 3)
LOCALISATION_STRIDES = (2, 1, 2, 1)
HEAD_INIT_STD = 1e-3  # small last-layer weights: the first predictions are near the mean pose


def standardise(image: Tensor, eps: float = 1e-6) -> Tensor:
    """``(B, C, H, W)`` -> the same, each image shifted and scaled to zero mean, unit variance."""
    flat = image.flatten(1)
    mean = flat.mean(dim=1).view(-1, 1, 1, 1)
    std = flat.std(dim=1).view(-1, 1, 1, 1)
    return (image - mean) / (std + eps)


def _conv_block_3d(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3x3 convolutions with batch norm and LeakyReLU, then 2x average pooling."""
    return nn.Sequential(
        OneDnnConv3d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.LeakyReLU(NEGATIVE_SLOPE),
        OneDnnConv3d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.LeakyReLU(NEGATIVE_SLOPE),
        nn.AvgPool3d(2),
    )


class Residual2d(nn.Module):
    """Residual block ``LeakyReLU(body(x) + shortcut(x))`` around a given ``body``.

    ``(B, in_channels, H, W)`` -> ``(B, out_channels, H / stride, W / stride)``. The shortcut is the
    identity, or a projection (a strided 1x1 convolution and batch norm) where ``body`` changes the
    features or the size.

    Args:
        body: the residual branch, ``(B, in_channels, H, W)`` -> ``(B, out_channels, H / stride, W / stride)``.
        in_channels: features in.
        out_channels: features out.
        stride: ``body``'s stride.
    """

    def __init__(self, body: nn.Module, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.body = body
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.activation = nn.LeakyReLU(NEGATIVE_SLOPE)

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.body(x) + self.shortcut(x))


class ResidualBlock2d(Residual2d):
    """Basic residual block: two 3x3 convolutions (the first with ``stride``), projection shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        body = nn.Sequential(
            OneDnnConv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(NEGATIVE_SLOPE),
            OneDnnConv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        super().__init__(body, in_channels, out_channels, stride)


class RTPINet(nn.Module):
    """Regresses the scaled pose of a CT from one AP radiograph.

    Args:
        config: the SOPI config (``rtpi``, ``geometry.image_shape`` and the pose sigmas are used).
    """

    def __init__(self, config: SopiConfig) -> None:
        super().__init__()
        rtpi = config.rtpi
        self.volume_shape = tuple(rtpi.volume_shape)
        self.register_buffer("param_sigmas", config.param_sigmas())
        volume_widths = (1, *rtpi.volume_features)
        self.volume_branch = nn.Sequential(*[_conv_block_3d(a, b) for a, b in itertools.pairwise(volume_widths)])
        image_widths = (1, *rtpi.image_features)
        self.image_branch = nn.Sequential(
            *[
                nn.Sequential(conv_block_2d(a, b), conv_block_2d(b, b, stride=2))
                for a, b in itertools.pairwise(image_widths)
            ]
        )
        folded = volume_widths[-1] * (self.volume_shape[1] >> len(rtpi.volume_features))
        widths = (folded + rtpi.image_features[-1], *rtpi.localisation_features)
        self.localisation = nn.Sequential(
            *[ResidualBlock2d(a, b, stride) for a, b, stride in zip(widths, widths[1:], LOCALISATION_STRIDES)]
        )
        features = rtpi.localisation_features[-1] * LOCALISATION_POOL[0] * LOCALISATION_POOL[1]
        # Per head: hidden layer and output layer; each head is hidden -> LeakyReLU -> output.
        head_layers = [
            (nn.Linear(features, rtpi.head_features), nn.Linear(rtpi.head_features, 1)) for _ in PARAMETER_NAMES
        ]
        for _, output in head_layers:
            nn.init.normal_(output.weight, std=HEAD_INIT_STD)
            nn.init.zeros_(output.bias)
        self.heads = nn.ModuleList(
            nn.Sequential(hidden, nn.LeakyReLU(NEGATIVE_SLOPE), output) for hidden, output in head_layers
        )

    def volume_features(self, volume_mu: Tensor) -> Tensor:
        """``(B, 1, I, J, K)`` 1/mm on any grid -> ``(B, C * J', K', I')`` 2D map in detector orientation."""
        if volume_mu.dim() != 5 or volume_mu.shape[1] != 1:
            raise ValueError(f"volume_mu: expected shape (B, 1, I, J, K), got {tuple(volume_mu.shape)}")
        volume = F.interpolate(volume_mu, size=self.volume_shape, mode="trilinear", align_corners=True)
        features = self.volume_branch(volume / MU_WATER_PER_MM)
        # (B, C, I', J', K') -> (B, C, J', K', I') -> (B, C * J', K', I'): J (the AP beam axis)
        # folded into the channels; K (superior) becomes rows and I (right) columns ...
        folded = features.permute(0, 1, 3, 4, 2).flatten(1, 2)
        # ... flipped so that rows run inferior and columns to the patient's left, as the AP
        # detector's v and u axes do (CONTRACT section 2).
        return folded.flip(-2, -1)

    def forward(self, volume_mu: Tensor, radiograph: Tensor) -> Tensor:
        """Scaled pose of the CT in the radiograph.

        Args:
            volume_mu: ``(B, 1, I, J, K)`` CT attenuation, 1/mm (resampled to ``rtpi.volume_shape``).
            radiograph: ``(B, 1, rows, cols)`` line integrals (any affine intensity scale).

        Returns:
            ``(B, 6)`` scaled parameters ``z = params / sigma`` (dimensionless).
        """
        if radiograph.dim() != 4 or radiograph.shape[1] != 1 or radiograph.shape[0] != volume_mu.shape[0]:
            raise ValueError(
                f"radiograph: expected shape ({volume_mu.shape[0]}, 1, rows, cols), got {tuple(radiograph.shape)}"
            )
        image = self.image_branch(standardise(radiograph))
        volume = F.interpolate(
            self.volume_features(volume_mu), size=image.shape[-2:], mode="bilinear", align_corners=False
        )
        fused = self.localisation(torch.cat([volume, image], dim=1))
        pooled = F.adaptive_avg_pool2d(fused, LOCALISATION_POOL).flatten(1)
        return torch.cat([head(pooled) for head in self.heads], dim=1)

    def params(self, volume_mu: Tensor, radiograph: Tensor) -> Tensor:
        """``(B, 6)`` pose ``(rx, ry, rz rad, tx, ty, tz mm)``: :meth:`forward` times the sigmas."""
        return self(volume_mu, radiograph) * self.param_sigmas
