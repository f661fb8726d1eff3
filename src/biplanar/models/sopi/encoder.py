"""The fine registration's composite-connection encoders (SOPI, Chen et al. 2023, section 2.3).

Each encoder maps a standardised radiograph ``(B, 1, H, W)`` to three embedded feature maps:

    stem        two stride-2 3x3 convolutions                        (s, H/4, W/4)
    leader      CF block -> CF block
    assistant   CF block( cat(stem, CCU(leader 1)) ) -> CF block( cat(assistant 1, CCU(leader 2)) )
    output      the last assistant CF block's (p3, p4, p5)          (c3, H/4), (c4, H/8), (c5, H/16)

- A cascade-fusion (CF) block runs split-attention bottlenecks at three scales (``c3`` at its
  input's size, ``c4`` and ``c5`` after stride-2 convolutions) and fuses them top-down with 1x1
  lateral convolutions and bilinear upsampling (``p5 = c5``, ``p4 = c4 + up(p5)``, ``p3 = c3 + up(p4)``).
- A composite connection unit (CCU) is a 1x1 convolution, batch norm and bilinear upsampling per
  scale of a leader block's output: it brings the leader's ``(p3, p4, p5)`` to the assistant's
  resolution and ``c3`` features, sums them, and the sum is concatenated with the assistant's own
  input.
- Split attention (ResNeSt, Zhang et al. 2022), cardinality 1: a grouped 3x3 convolution makes
  ``radix`` feature maps, a squeeze of their sum gives per-channel softmax weights over the splits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biplanar.models.blocks import NEGATIVE_SLOPE
from biplanar.models.sopi.config import FineConfig, SopiConfig
from biplanar.models.sopi.rtpi import Residual2d, standardise

MIN_ATTENTION_CHANNELS = 8


def _conv_bn_act(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.LeakyReLU(NEGATIVE_SLOPE),
    )


def _upsample(x: Tensor, size: torch.Size | tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class SplitAttentionConv2d(nn.Module):
    """3x3 split-attention convolution, ``(B, C, H, W)`` -> ``(B, C, H, W)``.

    Args:
        channels: ``C``, a multiple of ``radix``.
        radix: number of splits.
        reduction: the squeeze layer has ``max(C * radix / reduction, 8)`` channels.
    """

    def __init__(self, channels: int, radix: int = 2, reduction: int = 4) -> None:
        super().__init__()
        if channels % radix:
            raise ValueError(f"channels: expected a multiple of radix {radix}, got {channels}")
        self.radix, self.channels = radix, channels
        self.splits = nn.Sequential(
            nn.Conv2d(channels, channels * radix, 3, padding=1, groups=radix, bias=False),
            nn.BatchNorm2d(channels * radix),
            nn.LeakyReLU(NEGATIVE_SLOPE),
        )
        squeeze = max(channels * radix // reduction, MIN_ATTENTION_CHANNELS)
        # No batch norm in the squeeze: it sees one value per channel and image (batch size 1 works).
        self.attention = nn.Sequential(
            nn.Conv2d(channels, squeeze, 1), nn.LeakyReLU(NEGATIVE_SLOPE), nn.Conv2d(squeeze, channels * radix, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        # (B, radix * C, H, W) -> (B, radix, C, H, W): the grouped convolution's outputs are split-major.
        splits = self.splits(x).view(batch, self.radix, self.channels, height, width)
        squeezed = splits.sum(dim=1).mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        weights = self.attention(squeezed).view(batch, self.radix, self.channels, 1, 1).softmax(dim=1)
        return (weights * splits).sum(dim=1)


class SplitAttentionBottleneck(Residual2d):
    """1x1 convolution, split-attention 3x3, 1x1 convolution, plus a (projected) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, radix: int, reduction: int) -> None:
        body = nn.Sequential(
            _conv_bn_act(in_channels, out_channels, kernel=1),
            SplitAttentionConv2d(out_channels, radix, reduction),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(NEGATIVE_SLOPE),
            nn.Conv2d(out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        super().__init__(body, in_channels, out_channels)


class CascadeFusionBlock(nn.Module):
    """Three scales of split-attention bottlenecks fused top-down; returns ``(p3, p4, p5)``.

    Args:
        in_channels: input features.
        widths: ``(c3, c4, c5)``.
        radix, reduction: split-attention settings.
    """

    def __init__(self, in_channels: int, widths: tuple[int, int, int], radix: int, reduction: int) -> None:
        super().__init__()
        c3, c4, c5 = widths
        self.level3 = SplitAttentionBottleneck(in_channels, c3, radix, reduction)
        self.level4 = nn.Sequential(_conv_bn_act(c3, c4, stride=2), SplitAttentionBottleneck(c4, c4, radix, reduction))
        self.level5 = nn.Sequential(_conv_bn_act(c4, c5, stride=2), SplitAttentionBottleneck(c5, c5, radix, reduction))
        self.lateral5 = nn.Conv2d(c5, c4, 1, bias=False)
        self.lateral4 = nn.Conv2d(c4, c3, 1, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c3 = self.level3(x)
        c4 = self.level4(c3)
        p5 = self.level5(c4)
        p4 = c4 + _upsample(self.lateral5(p5), c4.shape[-2:])
        p3 = c3 + _upsample(self.lateral4(p4), c3.shape[-2:])
        return p3, p4, p5


class CompositeConnectionUnit(nn.Module):
    """Per input scale a 1x1 convolution, batch norm and bilinear upsampling to a given size; summed.

    Args:
        in_channels: features of each input scale.
        out_channels: features of the output.
    """

    def __init__(self, in_channels: tuple[int, ...], out_channels: int) -> None:
        super().__init__()
        self.projections = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
                for channels in in_channels
            ]
        )

    def forward(self, levels: tuple[Tensor, ...], size: torch.Size | tuple[int, int]) -> Tensor:
        """Per-scale ``(B, C_l, h_l, w_l)`` -> ``(B, out_channels, *size)``."""
        first, *rest = (_upsample(project(level), size) for project, level in zip(self.projections, levels))
        return sum(rest, first)


class CompositeEncoder(nn.Module):
    """A standardised radiograph -> three embedded feature maps (see the module doc).

    Args:
        config: the ``fine`` section of the SOPI config.
    """

    def __init__(self, config: FineConfig) -> None:
        super().__init__()
        c3, c4, c5 = config.level_features
        stem, widths = config.stem_features, (c3, c4, c5)

        def block(in_channels: int) -> CascadeFusionBlock:
            return CascadeFusionBlock(in_channels, widths, config.radix, config.attention_reduction)

        self.stem = nn.Sequential(_conv_bn_act(1, stem, stride=2), _conv_bn_act(stem, stem, stride=2))
        self.leader = nn.ModuleList([block(stem), block(c3)])
        self.connections = nn.ModuleList([CompositeConnectionUnit(widths, c3), CompositeConnectionUnit(widths, c3)])
        self.assistant = nn.ModuleList([block(stem + c3), block(2 * c3)])

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, 1, H, W)`` radiograph or DRR -> ``(p3, p4, p5)`` at ``H/4``, ``H/8``, ``H/16``."""
        if image.dim() != 4 or image.shape[1] != 1:
            raise ValueError(f"image: expected shape (B, 1, H, W), got {tuple(image.shape)}")
        assistant_input = leader_input = self.stem(standardise(image))
        for leader, connection, assistant in zip(self.leader, self.connections, self.assistant):
            leader_levels = leader(leader_input)
            context = connection(leader_levels, assistant_input.shape[-2:])
            assistant_levels = assistant(torch.cat([assistant_input, context], dim=1))
            leader_input, assistant_input = leader_levels[0], assistant_levels[0]
        return assistant_levels


class FineRegistrationNet(nn.Module):
    """Two composite encoders of the same structure, unshared weights: DRR (moving) and X-ray (fixed).

    The fixed encoder starts as a copy of the moving one (then both train freely): ``L_N`` is then
    zero at the true pose from the first step, and its gradient already points away from the target
    about as often as an intensity distance's does (on 16 ``sopi_lite`` validation pairs the cosine
    to the geodesic direction is 0.66 / 0.33 for rotation / translation, against 0.25 / 0.03 with two
    independent initialisations, whose mismatch dominates ``L_N``;
    ``python examples/sopi_gradient_alignment.py``).

    Args:
        config: the SOPI config (its ``fine`` section).
    """

    def __init__(self, config: SopiConfig) -> None:
        super().__init__()
        self.moving = CompositeEncoder(config.fine)
        self.fixed = CompositeEncoder(config.fine)
        self.fixed.load_state_dict(self.moving.state_dict())

    def forward(self, drr: Tensor, radiograph: Tensor) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        """``(B, 1, H, W)`` DRR at the current pose and X-ray -> embedded features ``(e_m, e_f)``."""
        return self.moving(drr), self.fixed(radiograph)
