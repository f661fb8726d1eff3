"""ProST: projective spatial transformer (Gao et al. 2020; Van Houtte et al. 2022, eq. 1-2).

A canonical grid of ``K`` samples per detector ray, fixed relative to the source and detector,
is placed in the world by the view's projection matrix; trilinear sampling of the volume at the
grid gives the *beam-space* volume ``(B, C, K, rows, cols)``, and its sum times the step length
along each ray gives the line integral of ``shared/CONTRACT.md`` section 3.

Beam space: sample ``k`` of pixel ``(row, col)`` lies on that pixel's ray at depth
``near + (k + 0.5) * (far - near) / K`` mm (midpoint rule), where ``near`` and ``far`` are planes
parallel to the detector that bracket the volume's box. Pure PyTorch: one code path on CPU and GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from biplanar.geometry.projection import ProjectionView
from biplanar.geometry.volume_grid import VolumeGrid

# Trilinear sampling with zero padding sees the volume up to one voxel beyond its outer centres.
SUPPORT_PAD_VOX = 1.0


def beam_depth_range(view: ProjectionView, grid: VolumeGrid, margin_mm: float = 0.0) -> tuple[float, float]:
    """``(near, far)`` depths in mm of the planes bracketing ``grid`` (and ``margin_mm`` more) in ``view``."""
    near, far = view.depth_range(grid.corners_world(pad_vox=SUPPORT_PAD_VOX))
    return max(near - margin_mm, 1e-3), far + margin_mm


class ProST(nn.Module):
    """Projects a volume on the grid ``grid`` along ``view``.

    Args:
        view: the calibrated view.
        grid: the voxel grid of the volumes this layer will project.
        num_samples: ``K``, samples per ray.
        margin_mm: extra depth added before and after the volume's box (room for posed volumes).
        max_samples_per_chunk: rows are processed in chunks of at most this many samples
            (batch x channels x K x rows x cols), bounding peak memory; with gradients the chunks
            are recomputed in backward (activation checkpointing) so memory stays bounded.
    """

    def __init__(self, view: ProjectionView, grid: VolumeGrid, num_samples: int = 256,
                 margin_mm: float = 0.0, max_samples_per_chunk: int = 2**24) -> None:
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"num_samples: expected >= 1, got {num_samples}")
        self.view, self.grid = view, grid
        self.image_shape = view.image_shape
        self.max_samples_per_chunk = max_samples_per_chunk
        near, far = beam_depth_range(view, grid, margin_mm)
        self.near_mm, self.far_mm = near, far
        step = (far - near) / num_samples
        rays = view.pixel_rays(torch.float64)
        self.register_buffer("source_world", torch.as_tensor(view.source_world).float())
        self.register_buffer("rays_world", rays.float())  # (rows, cols, 3), mm per mm of depth
        self.register_buffer("depths_mm", (near + step * (torch.arange(num_samples) + 0.5)).float())
        self.register_buffer("step_mm", (step * rays.norm(dim=-1)).float())  # (rows, cols)
        self.register_buffer("world_to_grid", torch.as_tensor(grid.world_to_grid_matrix()).float())

    @property
    def num_samples(self) -> int:
        return self.depths_mm.shape[0]

    def forward(self, volume: Tensor, pose: Tensor | None = None, beam: bool = False) -> Tensor:
        """Project ``volume``, optionally moved by ``pose``.

        Args:
            volume: ``(B, C, I, J, K)`` values per mm (attenuation 1/mm for a DRR) on ``grid``.
            pose: ``(B, 4, 4)`` world-to-world map moving the volume: the projected volume is
                ``volume(pose^-1 x)``. ``None`` for the identity.
            beam: return the beam-space volume instead of the line integral.

        Returns:
            ``(B, C, rows, cols)`` line integrals (value x mm), or with ``beam=True`` the
            beam-space samples ``(B, C, K, rows, cols)``.
        """
        self.grid.check_volume(volume)
        batch = volume.shape[0]
        to_grid = self.world_to_grid.to(volume.dtype).expand(batch, 4, 4)
        if pose is not None:
            if pose.shape != (batch, 4, 4):
                raise ValueError(f"pose: expected shape ({batch}, 4, 4), got {tuple(pose.shape)}")
            to_grid = to_grid @ torch.linalg.inv(pose)
        # The sample at depth w on a ray is source + w * ray, so in grid coordinates it is
        # origin + w * direction: one multiply-add per sample.
        origin = to_grid[:, :3, :3] @ self.source_world.to(volume.dtype) + to_grid[:, :3, 3]
        direction = torch.einsum("bij,rcj->brci", to_grid[:, :3, :3], self.rays_world.to(volume.dtype))
        rows, cols = self.image_shape
        per_row = batch * volume.shape[1] * self.num_samples * cols
        rows_per_chunk = max(1, min(rows, self.max_samples_per_chunk // per_row))
        chunked = rows_per_chunk < rows and torch.is_grad_enabled()
        outputs = []
        for start in range(0, rows, rows_per_chunk):
            arguments = (volume, origin, direction[:, start:start + rows_per_chunk], beam)
            if chunked:
                outputs.append(checkpoint(self._project_rows, *arguments, use_reentrant=False))
            else:
                outputs.append(self._project_rows(*arguments))
        output = torch.cat(outputs, dim=-2)
        if beam:
            return output
        return output * self.step_mm.to(output.dtype)

    def _project_rows(self, volume: Tensor, origin: Tensor, direction: Tensor, beam: bool) -> Tensor:
        """Project the rays of some rows: ``direction`` is ``(B, rows_chunk, cols, 3)`` in grid units."""
        batch, channels = volume.shape[:2]
        depths = self.depths_mm.to(volume.dtype)
        splits = self._ray_splits(volume)
        # Batch element (b, s) samples depths[s-th part]: (B * S, K / S, rows_chunk, cols, 3).
        depths = depths.view(1, splits, -1, 1, 1, 1)
        # One fused multiply-add: no (B, S, K/S, r, c, 3) temporary for depths * direction.
        grid = torch.addcmul(origin.view(batch, 1, 1, 1, 1, 3), depths, direction.unsqueeze(1).unsqueeze(1))
        grid = grid.flatten(0, 1)
        source = volume.expand(splits, *volume.shape[1:]) if splits > 1 else volume
        sampled = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        # (B * S, C, K / S, r, c) -> (B, C, K, r, c): the S parts are consecutive depth ranges.
        sampled = sampled.view(batch, splits, channels, *sampled.shape[2:])
        if beam:
            return sampled.transpose(1, 2).flatten(2, 3)
        return sampled.sum(dim=(1, 3))

    def _ray_splits(self, volume: Tensor) -> int:
        """How many batch elements to split one volume's rays into.

        5-D grid_sample on CPU parallelises only over the batch: with one volume, splitting its
        samples into several batch elements (a stride-0 view of the volume, no copy) uses every
        core. On GPU, and for batches, no split.
        """
        if volume.shape[0] > 1 or volume.device.type != "cpu":
            return 1
        threads = torch.get_num_threads()
        return max(s for s in range(1, threads + 1) if self.num_samples % s == 0)
