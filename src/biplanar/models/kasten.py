"""Kasten et al. 2020 baseline: direct 3D label-map regression from two radiographs (Table 1).

Kasten, Doktofsky, Kovler, "End-to-end convolutional neural network for 3D reconstruction of
knee bones from bi-planar X-ray images" (MLMIR 2020): per-view 2D encoders; each encoder map is
copied along the projection direction into a 3D volume; a 3D decoder with these copies as skip
connections outputs a label map; loss Dice + cross-entropy.

Here the copies follow each view's calibrated geometry (:class:`RayCopy`): a voxel takes the
feature at the detector position its centre projects to, so the features are copied along the
X-ray *rays* of any calibrated pair (orthogonal or not), straight onto the atlas grid. That is
inv-ProST (:class:`~biplanar.layers.inv_prost.InverseProST`) of a beam that is constant along
its rays, without the depth axis (inv-ProST's zero padding fades a constant beam in the outer
half cell of its depth range; tested equal elsewhere).

Sizes follow the experiment config's ``local.encoder_features`` ``(w_0, ..., w_{L-1})``:

- encoders (one per view, input the radiograph divided by its maximum): level ``l`` is a stride-2
  and a stride-1 3x3 convolution (+ batch norm + LeakyReLU) to ``w_l`` features, so its map is
  ``2^(l+1)`` times smaller than the radiograph;
- decoder, coarse to fine, step ``d = 0 .. L-1`` on the atlas grid pooled by ``2^(L-1-d)``
  (:func:`~biplanar.geometry.volume_grid.pooled_grid`): the ray copies of both views'
  level-``L-1-d`` maps, concatenated with the previous step's output upsampled x2, then 3x3x3
  convolutions + LeakyReLU to ``2 w_{L-1-d}`` features (two convolutions, one at full size);
- head: a 1x1x1 convolution to 2 logits (background, femur) per voxel.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biplanar.config import ExperimentConfig
from biplanar.geometry.projection import ProjectionView
from biplanar.geometry.volume_grid import VolumeGrid, pooled_grid
from biplanar.models.blocks import conv_block_2d, conv_block_3d
from biplanar.models.network import normalise_radiographs
from biplanar.models.projectors import ViewPair

NUM_CLASSES = 2  # background, femur


class RayCopy(nn.Module):
    """Copies a detector-plane feature map along the rays of ``view`` onto the voxels of ``grid``.

    Args:
        view: the calibrated view.
        grid: the target voxel grid (world RAS+ mm).

    The map may have any size ``(h, w)``: its cells tile the detector (``h x w`` cells over
    ``rows x cols`` pixels, as inv-ProST's beams do).
    """

    detector_grid: Tensor  # buffer, registered in __init__

    def __init__(self, view: ProjectionView, grid: VolumeGrid) -> None:
        super().__init__()
        self.grid = grid
        uv_px, _ = view.project(grid.voxel_centres_world(torch.float64))  # (I, J, K, 2)
        rows, cols = view.image_shape
        # grid_sample (align_corners=False): x -> map columns, y -> map rows, cell edges at -1 and 1;
        # pixel centre u = c is the centre of detector pixel c.
        detector = torch.stack(
            [2.0 * (uv_px[..., 0] + 0.5) / cols - 1.0, 2.0 * (uv_px[..., 1] + 0.5) / rows - 1.0], dim=-1
        )
        # (I, J, K, 2) -> (1, I, J * K, 2): a 2D sampling grid of I rows by J K columns.
        self.register_buffer("detector_grid", detector.float().flatten(1, 2).unsqueeze(0))

    def forward(self, image: Tensor) -> Tensor:
        """Args:
            image: ``(B, C, h, w)`` detector-plane features.

        Returns:
            ``(B, C, I, J, K)``: at each voxel, ``image`` (bilinear) where its centre projects; zero
            where it projects outside the detector.
        """
        if image.dim() != 4:
            raise ValueError(f"image: expected shape (B, C, h, w), got {tuple(image.shape)}")
        grid = self.detector_grid.to(image.dtype).expand(image.shape[0], -1, -1, -1)
        sampled = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return sampled.view(*image.shape[:2], *self.grid.shape)


class RayCopyCache:
    """:class:`RayCopy` layers per view and grid level, built once (fixed geometry, no parameters).

    Args:
        grid: the atlas grid; level ``f`` is ``pooled_grid(grid, f)``.
        capacity: how many layers to keep (least recently used ones are dropped).
    """

    def __init__(self, grid: VolumeGrid, capacity: int = 64) -> None:
        self.grid, self.capacity = grid, capacity
        self._layers: OrderedDict[tuple, RayCopy] = OrderedDict()

    def layer(self, view: ProjectionView, factor: int, device: torch.device) -> RayCopy:
        key = (view.matrix.round(9).tobytes(), tuple(view.image_shape), factor, str(device))
        if key not in self._layers:
            self._layers[key] = RayCopy(view, pooled_grid(self.grid, factor)).to(device)
            if len(self._layers) > self.capacity:
                self._layers.popitem(last=False)
        self._layers.move_to_end(key)
        return self._layers[key]

    def copy(self, images: list[Tensor], views: list[ViewPair], factor: int) -> Tensor:
        """Ray copies of each view's map on the grid pooled by ``factor``.

        Args:
            images: per view (AP, LAT), ``(B, C, h, w)``.
            views: ``B`` pairs ``(AP, LAT)``.

        Returns:
            ``(B, 2 C, I / f, J / f, K / f)``: the AP copies then the LAT copies.
        """
        per_sample = [
            torch.cat(
                [self.layer(view, factor, image.device)(image[b : b + 1]) for view, image in zip(pair, images)], dim=1
            )
            for b, pair in enumerate(views)
        ]
        return torch.cat(per_sample, dim=0)


def _encoder(widths: tuple[int, ...]) -> nn.ModuleList:
    inputs = (1, *widths[:-1])
    return nn.ModuleList(
        nn.Sequential(conv_block_2d(c, w, stride=2), conv_block_2d(w, w)) for c, w in zip(inputs, widths)
    )


class KastenNet(nn.Module):
    """Two radiographs -> femur label logits on the atlas grid (module doc).

    Args:
        config: the experiment config (``local.encoder_features`` sizes the network;
            ``geometry.image_shape`` must be divisible by ``2^L``).
        grid: the atlas grid; its sizes must be divisible by ``2^(L-1)``.
    """

    def __init__(self, config: ExperimentConfig, grid: VolumeGrid) -> None:
        super().__init__()
        widths = tuple(config.local.encoder_features)
        self.config, self.grid, self.levels = config, grid, len(widths)
        pooled_grid(grid, 2 ** (self.levels - 1))  # raises unless the grid divides
        self.ray_copies = RayCopyCache(grid)
        self.encoders = nn.ModuleList([_encoder(widths), _encoder(widths)])  # AP, LAT
        decoder, previous = [], 0
        for level in reversed(range(self.levels)):
            width = 2 * widths[level]
            blocks = [conv_block_3d(previous + 2 * widths[level], width, batch_norm=False)]
            if level > 0:
                blocks.append(conv_block_3d(width, width, batch_norm=False))
            decoder.append(nn.Sequential(*blocks))
            previous = width
        self.decoder = nn.ModuleList(decoder)
        self.head = nn.Conv3d(previous, NUM_CLASSES, 1)

    def forward(self, radiographs: Tensor, views: list[ViewPair]) -> Tensor:
        """Args:
            radiographs: ``(B, 2, rows, cols)`` masked line integrals, channel 0 AP, 1 LAT.
            views: ``B`` pairs ``(AP, LAT)`` of calibrated views.

        Returns:
            ``(B, 2, I, J, K)`` logits (background, femur) on the atlas grid.
        """
        batch = radiographs.shape[0]
        if radiographs.dim() != 4 or radiographs.shape[1] != 2 or len(views) != batch:
            raise ValueError(
                f"radiographs: expected shape (B, 2, rows, cols) with B = len(views) = {len(views)}, "
                f"got {tuple(radiographs.shape)}"
            )
        radiographs = normalise_radiographs(radiographs)
        maps = []  # per view, the L encoder maps, finest first
        for channel, encoder in enumerate(self.encoders):
            features, levels = radiographs[:, channel : channel + 1], []
            for block in encoder.children():  # the encoder's blocks (an nn.ModuleList), in order
                features = block(features)
                levels.append(features)
            maps.append(levels)
        x = None
        for step, block in enumerate(self.decoder):
            level = self.levels - 1 - step
            parts = [self.ray_copies.copy([maps[0][level], maps[1][level]], views, 2**level)]
            if x is not None:  # pooled by 2^(level + 1) -> 2^level: exactly x2 (pooled_grid's alignment)
                parts.append(F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False))
            x = block(torch.cat(parts, dim=1))
        return self.head(x)

    def predict_labels(self, radiographs: Tensor, views: list[ViewPair]) -> Tensor:
        """``(B, 1, I, J, K)`` femur probability (softmax) on the atlas grid."""
        return torch.softmax(self.forward(radiographs, views), dim=1)[:, 1:2]
