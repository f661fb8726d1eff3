"""ProST: projective spatial transformer (Gao et al. 2020; Van Houtte et al. 2022, eq. 1-2).

A canonical grid of ``K`` samples per detector ray, fixed relative to the source and detector,
is placed in the world by the view's projection matrix; trilinear sampling of the volume at the
grid gives the *beam-space* volume ``(B, C, K, rows, cols)``, and its sum times the step length
along each ray gives the line integral of ``docs/contract.md`` section 3.

Beam space: sample ``k`` of pixel ``(row, col)`` lies on that pixel's ray at depth
``near + (k + 0.5) * (far - near) / K`` mm (midpoint rule), where ``near`` and ``far`` are planes
parallel to the detector that bracket the volume's box. Pure PyTorch: one code path on CPU and GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from biplanar.config import DEFAULT_NUM_SAMPLES
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
        num_samples: ``K``, samples per ray (default :data:`biplanar.config.DEFAULT_NUM_SAMPLES`).
        margin_mm: extra depth added before and after the volume's box (room for posed volumes).
        max_samples_per_chunk: rows are processed in chunks of at most this many samples
            (batch x channels x K x rows x cols), bounding peak memory; with gradients the chunks
            are recomputed in backward (activation checkpointing) so memory stays bounded.
    """

    source_world: Tensor  # buffers, registered in __init__
    rays_world: Tensor
    depths_mm: Tensor
    step_mm: Tensor
    world_to_grid: Tensor

    def __init__(
        self,
        view: ProjectionView,
        grid: VolumeGrid,
        num_samples: int = DEFAULT_NUM_SAMPLES,
        margin_mm: float = 0.0,
        max_samples_per_chunk: int = 2**24,
    ) -> None:
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
        origin, direction = self._rays_in_grid(volume.shape[0], pose, volume.dtype)
        rows_per_chunk = self._rows_per_chunk(volume)
        chunked = rows_per_chunk < self.image_shape[0] and torch.is_grad_enabled()
        outputs = []
        for start in range(0, self.image_shape[0], rows_per_chunk):
            arguments = (volume, origin, direction[:, start : start + rows_per_chunk], beam)
            if chunked:
                outputs.append(checkpoint(self._project_rows, *arguments, use_reentrant=False))
            else:
                outputs.append(self._project_rows(*arguments))
        output = torch.cat(outputs, dim=-2)
        if beam:
            return output
        return output * self.step_mm.to(output.dtype)

    def project_with_pose_jacobian(
        self, volume: Tensor, params: Tensor, params_to_pose: Callable[[Tensor], Tensor]
    ) -> tuple[Tensor, Tensor]:
        """The line integrals at a pose and their exact derivatives with respect to the pose's parameters.

        With ``p_k(theta) = origin(theta) + w_k direction(theta)`` the grid position of sample ``k`` of
        a ray, the line integral is ``step * sum_k V(p_k)``, so its derivative along ``theta_j`` is
        ``step * sum_k grad V(p_k) . (d origin/d theta_j + w_k d direction/d theta_j)``.
        ``grad V`` at every sample comes from one backward pass of trilinear sampling (each sample
        depends on its own position only); the ray derivatives from forward-mode differentiation
        of ``params_to_pose``. No second-order pass through ``grid_sample`` is needed, so a loss
        built on ``J^T dL/dI`` (SOPI's double backward) back-propagates through the image only.

        Args:
            volume: ``(B, 1, I, J, K)`` values per mm on ``grid`` (one channel).
            params: ``(B, P)`` pose parameters (e.g. rad and mm).
            params_to_pose: maps ``(B, P)`` parameters to ``(B, 4, 4)`` poses (as ``forward``'s
                ``pose``); differentiable in forward mode.

        Returns:
            ``(image, jacobian)`` without a graph: ``(B, 1, rows, cols)`` line integrals (as
            ``forward(volume, params_to_pose(params))``) and ``(B, 1, rows, cols, P)``
            ``d image / d params`` (value x mm per unit of each parameter).
        """
        self.grid.check_volume(volume)
        if volume.shape[1] != 1 or params.dim() != 2 or params.shape[0] != volume.shape[0]:
            raise ValueError(
                f"volume, params: expected (B, 1, I, J, K) and (B, P), got {tuple(volume.shape)} "
                f"and {tuple(params.shape)}"
            )
        volume, params = volume.detach(), params.detach()

        def rays(values: Tensor) -> tuple[Tensor, Tensor]:
            return self._rays_in_grid(volume.shape[0], params_to_pose(values), volume.dtype)

        origin, direction = rays(params)
        tangents = [
            torch.func.jvp(rays, (params,), (basis.expand_as(params),))[1]
            for basis in torch.eye(params.shape[1], dtype=params.dtype, device=params.device)
        ]
        d_origin = torch.stack([tangent[0] for tangent in tangents], dim=-1)  # (B, 3, P)
        d_direction = torch.stack([tangent[1] for tangent in tangents], dim=-1)  # (B, rows, cols, 3, P)
        depths = self.depths_mm.to(volume.dtype).view(1, -1, 1, 1, 1)
        rows_per_chunk = self._rows_per_chunk(volume)
        images, chunks = [], []
        for start in range(0, self.image_shape[0], rows_per_chunk):
            rows = slice(start, start + rows_per_chunk)
            with torch.enable_grad():
                points = torch.addcmul(
                    origin.view(-1, 1, 1, 1, 3), depths, direction[:, rows].unsqueeze(1)
                ).requires_grad_(True)
                sampled = F.grid_sample(volume, points, mode="bilinear", padding_mode="zeros", align_corners=True)
                (spatial,) = torch.autograd.grad(sampled.sum(), points)  # (B, K, r, c, 3)
            images.append(sampled.detach().sum(dim=2))
            chunks.append(
                torch.einsum("brci,bip->brcp", spatial.sum(1), d_origin)
                + torch.einsum("brci,brcip->brcp", (spatial * depths).sum(1), d_direction[:, rows])
            )
        step = self.step_mm.to(volume.dtype)
        return torch.cat(images, dim=-2) * step, (torch.cat(chunks, dim=1) * step[..., None]).unsqueeze(1)

    def _rays_in_grid(self, batch: int, pose: Tensor | None, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Rays in grid coordinates: ``origin (B, 3)`` and ``direction (B, rows, cols, 3)`` per mm of depth.

        The sample at depth ``w`` on a ray is ``source + w * ray`` in the world, so in grid
        coordinates of the posed volume it is ``origin + w * direction``: one multiply-add per sample.
        """
        to_grid = self.world_to_grid.to(dtype).expand(batch, 4, 4)
        if pose is not None:
            if pose.shape != (batch, 4, 4):
                raise ValueError(f"pose: expected shape ({batch}, 4, 4), got {tuple(pose.shape)}")
            to_grid = to_grid @ torch.linalg.inv(pose)
        origin = to_grid[:, :3, :3] @ self.source_world.to(dtype) + to_grid[:, :3, 3]
        direction = torch.einsum("bij,rcj->brci", to_grid[:, :3, :3], self.rays_world.to(dtype))
        return origin, direction

    def _rows_per_chunk(self, volume: Tensor) -> int:
        """Detector rows per chunk so that a chunk holds at most ``max_samples_per_chunk`` samples."""
        rows, cols = self.image_shape
        per_row = volume.shape[0] * volume.shape[1] * self.num_samples * cols
        return max(1, min(rows, self.max_samples_per_chunk // per_row))

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
