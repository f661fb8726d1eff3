"""The affine module (Van Houtte et al. 2022, Fig. 1): two radiographs -> 7 similarity parameters.

Per view, the radiograph and the DRR of the atlas (2 channels) enter a 2D encoder of strided
convolutions (each level halves the size and doubles the features). With ``encoders="combined"``
(the paper) a third branch concatenates, at every level, the AP features, the LAT features and
its own preceding map and convolves them; its last map is flattened into a dense layer regressing
the parameters. With ``encoders="separate"`` (the ablation) the two encoders' last maps are only
concatenated before the dense layer.

Output parameters (see ``biplanar.geometry.transforms``): ``(rx, ry, rz)`` radians,
``(tx, ty, tz)`` mm, ``log_s``; the dense layer's outputs are multiplied by
:data:`PARAMETER_SCALES` so that a unit output is a typical pose offset.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biplanar.config import AffineConfig
from biplanar.models.blocks import conv_block_2d

# A unit output of the dense layer means 0.1 rad, 10 mm, or a 5 % scale change.
PARAMETER_SCALES = (0.1, 0.1, 0.1, 10.0, 10.0, 10.0, 0.05)


class AffineModule(nn.Module):
    """Regresses the similarity transform from the two radiographs and the atlas DRRs.

    Args:
        config: the affine section of the experiment config.
        image_shape: ``(rows, cols)``, divisible by ``2**config.levels``.
    """

    def __init__(self, config: AffineConfig, image_shape: tuple[int, int]) -> None:
        super().__init__()
        self.combined = config.encoders == "combined"
        widths = [config.base_features * 2**level for level in range(config.levels)]
        self.ap_encoder = self._encoder(widths)
        self.lat_encoder = self._encoder(widths)
        if self.combined:
            # Level l sees AP_l, LAT_l and the preceding combined map pooled to their size.
            inputs = [2 * widths[0]] + [2 * w + previous for w, previous in zip(widths[1:], widths)]
            self.combiners = nn.ModuleList(conv_block_2d(c, w) for c, w in zip(inputs, widths))
        rows, cols = (n // 2**config.levels for n in image_shape)
        flat = widths[-1] * rows * cols * (1 if self.combined else 2)
        self.dense = nn.Linear(flat, 7)
        nn.init.normal_(self.dense.weight, std=config.init_std)
        nn.init.zeros_(self.dense.bias)
        self.register_buffer("parameter_scales", torch.tensor(PARAMETER_SCALES))

    @staticmethod
    def _encoder(widths: list[int]) -> nn.ModuleList:
        inputs = [2] + widths[:-1]
        return nn.ModuleList(conv_block_2d(c, w, stride=2) for c, w in zip(inputs, widths))

    def forward(self, ap: Tensor, lat: Tensor) -> Tensor:
        """Args:
            ap, lat: ``(B, 2, rows, cols)``: the normalised radiograph and atlas DRR of each view.

        Returns:
            ``(B, 7)`` similarity parameters (radians, mm, log-scale).
        """
        combined = None
        for level, (ap_block, lat_block) in enumerate(zip(self.ap_encoder, self.lat_encoder)):
            ap, lat = ap_block(ap), lat_block(lat)
            if self.combined:
                parts = [ap, lat] if combined is None else [ap, lat, F.avg_pool2d(combined, 2)]
                combined = self.combiners[level](torch.cat(parts, dim=1))
        # ``combined`` is set at every level exactly when ``self.combined``.
        features = torch.cat([ap, lat], dim=1) if combined is None else combined
        return self.dense(features.flatten(1)) * self.parameter_scales
