"""The local module (Van Houtte et al. 2022, Fig. 1): beam-space U-nets -> a stationary velocity field.

Per view, the radiograph and the DRR of the affine-warped atlas (2 channels) enter a U-net whose
encoder is 2D (each level a strided and a non-strided convolution) and whose decoder is 3D, in
that view's beam space: the last 2D map is copied ``M`` times along the ray axis, and each decoder
step is a stride-1 3D convolution + LeakyReLU followed (for the first ``L`` steps) by x2
upsampling. Skip connections copy each 2D encoder map (and, at full size, the input) along the
ray axis to the decoder's depth, then apply a 3D convolution + batch norm + LeakyReLU. Each
branch's beam-space output is brought onto the atlas grid by inv-ProST; the two are concatenated
and convolved into a 3-channel velocity field (mm, world components).

Beam-space tensors are ``(B, C, depth, rows, cols)``; depth runs from the near plane to the far
plane (see ``biplanar.layers.prost``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from biplanar.config import LocalConfig
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.models.blocks import conv_3d, conv_block_2d, conv_block_3d
from biplanar.models.projectors import BEAM_COLUMNS_AND_DEPTH, ProjectorCache, ViewPair, as_learnt_side


def convolve_ray_copies(convolution: nn.Conv3d, image: Tensor, depth: int) -> Tensor:
    """``convolution`` of ``image`` copied ``depth`` times along the ray axis, computed in 2D.

    The copies are constant along the ray axis, so each output slice is a 2D convolution of
    ``image`` with the 3x3x3 kernel summed over its depth taps that fall inside the volume: all three
    in the interior, all but the first at the near end and all but the last at the far end (the
    zero padding). One 2D convolution with these three kernels replaces a 3D one over ``depth``
    times as many voxels, forward and backward; the values are the same (to rounding).

    Args:
        convolution: a 3x3x3 convolution, stride 1, zero padding 1, no dilation or groups.
        image: ``(B, C, H, W)``.
        depth: the number of copies, >= 1.

    Returns:
        ``(B, C_out, depth, H, W)``.
    """
    if (
        convolution.kernel_size != (3, 3, 3)
        or convolution.stride != (1, 1, 1)
        or convolution.padding != (1, 1, 1)
        or convolution.dilation != (1, 1, 1)
        or convolution.groups != 1
        or convolution.padding_mode != "zeros"
    ):
        raise ValueError("convolution: expected 3x3x3, stride 1, zero padding 1, no dilation or groups")
    weight = convolution.weight  # (C_out, C_in, 3, 3, 3): taps along (depth, rows, cols)
    if depth == 1:
        slices = F.conv2d(image, weight[:, :, 1], padding=1).unsqueeze(2)
    else:
        kernels = torch.cat([weight[:, :, 1:].sum(2), weight.sum(2), weight[:, :, :-1].sum(2)])
        near, interior, far = F.conv2d(image, kernels, padding=1).unsqueeze(2).split(weight.shape[0], dim=1)
        slices = torch.cat([near, interior.expand(-1, -1, depth - 2, -1, -1), far], dim=2)
    if convolution.bias is None:
        return slices
    return slices + convolution.bias.view(1, -1, 1, 1, 1)


def on_ray_copies(block: nn.Module, image: Tensor, depth: int) -> Tensor:
    """``block`` (a sequence that starts with a 3D convolution, as
    :func:`~biplanar.models.blocks.conv_block_3d`) applied to ``image`` ``(B, C, H, W)`` copied
    ``depth`` times along the ray axis: ``(B, C_out, depth, H, W)``."""
    if not isinstance(block, nn.Sequential) or not isinstance(block[0], nn.Conv3d):
        raise TypeError(f"block: expected a Sequential starting with a Conv3d, got {type(block).__name__}")
    output = convolve_ray_copies(block[0], image, depth)
    for layer in list(block)[1:]:
        output = layer(output)
    return output


class BeamUNet(nn.Module):
    """2D encoder, 3D beam-space decoder.

    Args:
        in_channels: 2D input channels.
        config: the local section of the config.
    """

    def __init__(self, in_channels: int, config: LocalConfig) -> None:
        super().__init__()
        self.ray_copies, self.skip = config.ray_copies, config.skip
        widths = list(config.encoder_features)
        inputs = [in_channels] + widths[:-1]
        self.encoder = nn.ModuleList(
            nn.Sequential(conv_block_2d(c, w, stride=2), conv_block_2d(w, w)) for c, w in zip(inputs, widths)
        )
        # Skip sources from the deepest upsampled level to full size: encoder maps, then the input.
        skip_channels = (widths[:-1][::-1] + [in_channels]) if self.skip else []
        self.skips = nn.ModuleList(conv_block_3d(c, c) for c in skip_channels)
        decoder = []
        channels = widths[-1]
        for step, width in enumerate(config.decoder_features):
            decoder.append(conv_block_3d(channels, width, batch_norm=False))
            channels = width + (skip_channels[step] if step < len(skip_channels) else 0)
        self.decoder = nn.ModuleList(decoder)
        self.out_channels = channels

    def forward(self, image: Tensor) -> Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, out_channels, M * 2**L, H, W)`` beam-space features."""
        maps = [image]
        for block in self.encoder:
            maps.append(block(maps[-1]))
        levels = len(self.encoder)
        x = on_ray_copies(self.decoder[0], maps[-1], self.ray_copies)
        for step in range(len(self.decoder)):
            if step > 0:
                x = self.decoder[step](x)
            if step < levels:
                x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
                if self.skip:
                    source = maps[levels - 1 - step]  # same rows x cols as x now
                    x = torch.cat([x, on_ray_copies(self.skips[step], source, x.shape[2])], dim=1)
        return x


class LocalModule(nn.Module):
    """Radiographs and DRRs of the affine-warped atlas -> velocity field on the atlas grid.

    Args:
        config: the local section of the config.
        grid: the atlas grid.
        projectors: the network's ProST / inv-ProST cache.
        activation_checkpointing: recompute the beam-space decoders in backward to save memory.
    """

    def __init__(
        self, config: LocalConfig, grid: VolumeGrid, projectors: ProjectorCache, activation_checkpointing: bool = False
    ) -> None:
        super().__init__()
        self.config, self.grid, self.projectors = config, grid, projectors
        self.activation_checkpointing = activation_checkpointing
        if config.decoder == "dual":
            unets = [BeamUNet(2, config), BeamUNet(2, config)]
            per_view = unets[0].out_channels
        else:  # one joint U-net; its output channels are split between the two views
            unets = [BeamUNet(4, config)]
            per_view = unets[0].out_channels // 2
        self.unets = nn.ModuleList(unets)
        self.per_view_channels = per_view
        self.to_velocity = conv_3d(2 * per_view, 3)
        nn.init.normal_(self.to_velocity.weight, std=config.velocity_init_std)
        if self.to_velocity.bias is not None:  # always: Conv3d has a bias by default
            nn.init.zeros_(self.to_velocity.bias)

    def _run(self, unet: nn.Module, image: Tensor) -> Tensor:
        if self.activation_checkpointing and torch.is_grad_enabled():
            return checkpoint(unet, image, use_reentrant=False)
        return unet(image)

    def forward(self, ap: Tensor, lat: Tensor, views: list[ViewPair], reversed_views: Tensor | None = None) -> Tensor:
        """Args:
            ap, lat: ``(B, 2, rows, cols)``: normalised radiograph and DRR of the affine-warped atlas,
                as the network learnt to see them (:func:`biplanar.models.network.normalise_pair`).
            views: ``B`` pairs ``(AP, LAT)`` of calibrated views.
            reversed_views: ``(B, 2)`` bool (:func:`biplanar.models.projectors.reversed_sources`):
                views whose inputs were shown reversed; their beam-space output is reversed back
                (columns and depth) before inv-ProST. None: no view is.

        Returns:
            ``(B, 3, I, J, K)`` stationary velocity field, mm, world components ``(x, y, z)``.
        """
        if len(self.unets) == 2:
            beams = [self._run(self.unets[0], ap), self._run(self.unets[1], lat)]
        else:
            joint = self._run(self.unets[0], torch.cat([ap, lat], dim=1))
            beams = [joint[:, : self.per_view_channels], joint[:, self.per_view_channels : 2 * self.per_view_channels]]
        if reversed_views is not None:
            beams = [
                as_learnt_side(beam, reversed_views[:, view], BEAM_COLUMNS_AND_DEPTH) for view, beam in enumerate(beams)
            ]
        if self.config.inv_prost:
            features = self.projectors.back_project(beams, views)
        else:  # ablation: beam-space maps resampled to the atlas grid, geometry ignored
            features = torch.cat(
                [F.interpolate(beam, size=self.grid.shape, mode="trilinear", align_corners=False) for beam in beams],
                dim=1,
            )
        return self.to_velocity(features)
