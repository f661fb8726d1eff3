"""inv-ProST (Van Houtte et al. 2022, eq. 3): beam space back onto a volume grid.

Each voxel of the target grid is sampled from a beam-space tensor at its beam coordinates: its
detector position ``(u, v)`` and its normalised depth ``(w - near) / (far - near)`` along its ray
(see ``prost``). Outside the X-ray cone or the depth range the result is zero.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from biplanar.geometry.projection import ProjectionView
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.layers.prost import beam_depth_range
from biplanar.layers.sampling import grid_sample_3d


class InverseProST(nn.Module):
    """Resamples beam-space tensors of ``view`` onto the voxels of ``grid``.

    Args:
        view: the calibrated view the beam space belongs to.
        grid: the target voxel grid (the atlas grid).
        margin_mm: must equal the ``margin_mm`` of the :class:`ProST` whose beam space is inverted.

    The beam tensor may have any size ``(Kb, Hb, Wb)``: its cells tile the detector
    (``Hb x Wb`` over ``rows x cols`` pixels) and the depth range (``Kb`` slabs), so decoder
    outputs at other resolutions map onto the same geometry.
    """

    beam_grid: Tensor  # buffer, registered in __init__

    def __init__(self, view: ProjectionView, grid: VolumeGrid, margin_mm: float = 0.0) -> None:
        super().__init__()
        self.grid = grid
        near, far = beam_depth_range(view, grid, margin_mm)
        uv_px, depth_mm = view.project(grid.voxel_centres_world(torch.float64))
        rows, cols = view.image_shape
        # grid_sample order for a (Kb, Hb, Wb) tensor is (x -> Wb, y -> Hb, z -> Kb), cell edges
        # at -1 and 1 (align_corners=False): pixel centre u = c maps to the centre of cell c.
        beam_grid = torch.stack(
            [
                2.0 * (uv_px[..., 0] + 0.5) / cols - 1.0,
                2.0 * (uv_px[..., 1] + 0.5) / rows - 1.0,
                2.0 * (depth_mm - near) / (far - near) - 1.0,
            ],
            dim=-1,
        )
        self.register_buffer("beam_grid", beam_grid.float().unsqueeze(0))  # (1, I, J, K, 3)

    def forward(self, beam: Tensor) -> Tensor:
        """Args:
            beam: ``(B, C, Kb, Hb, Wb)`` beam-space tensor.

        Returns:
            ``(B, C, I, J, K)`` on ``grid``; zero outside the cone and the depth range.
        """
        if beam.dim() != 5:
            raise ValueError(f"beam: expected shape (B, C, Kb, Hb, Wb), got {tuple(beam.shape)}")
        grid = self.beam_grid.to(beam.dtype).expand(beam.shape[0], *self.beam_grid.shape[1:])
        return grid_sample_3d(beam, grid, "bilinear", "zeros", align_corners=False)
