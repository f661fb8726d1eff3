"""ProST: projective spatial transformer (Gao et al. 2020; Van Houtte et al. 2022, eq. 1-2).

A canonical grid of ``K`` samples per detector ray, fixed relative to the source and detector,
is placed in the world by the view's projection matrix; trilinear sampling of the volume at the
grid gives the *beam-space* volume ``(B, C, K, rows, cols)``, and its sum times the step length
along each ray gives the line integral of ``docs/contract.md`` section 3.

Beam space: sample ``k`` of pixel ``(row, col)`` lies on that pixel's ray at depth
``near + (k + 0.5) * (far - near) / K`` mm (midpoint rule), where ``near`` and ``far`` are planes
parallel to the detector that bracket the volume's box. Pure PyTorch, on CPU and GPU.

Line integrals have two algorithms (``algorithm``): ``"rays"`` sums the beam-space samples as
above; ``"slices"`` walks the voxel slices across each ray (Joseph's method,
:mod:`biplanar.layers.slice_walk`): one bilinear sample per ray and slice, the trapezoid rule on the
slice planes. Both approximate the same integral of the trilinear interpolant. On the real CT at
the paper size (relative L1 to 2048 ray samples) the slice walk is the closer one for AP and LAT
views (6e-6 to 8e-6, against 1.6e-5 to 1e-4 for 256 ray samples) and about twice as far at 30 to
45 degrees, where a ray moves up to a voxel sideways per slice (2e-4 to 4e-4, against ~2e-4);
the two images agree to NCC 0.99999. On CPU it is 8 to 10x faster with or without gradients
(``docs/benchmarks.md``). ``"auto"`` (the default) walks slices on CPU and samples rays elsewhere;
beam space always samples rays.
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
from biplanar.layers.sampling import cpu_batch_splits
from biplanar.layers.slice_walk import (
    CHUNK_SAMPLES,
    SliceGroup,
    SliceRays,
    place_rays,
    slice_groups,
    slice_ray_tangents,
    slice_rays,
    walk_slices,
    walk_slices_with_gradients,
)

# Trilinear sampling with zero padding sees the volume up to one voxel beyond its outer centres.
SUPPORT_PAD_VOX = 1.0
# Line-integral algorithms of ProST (module docstring).
ALGORITHMS = ("auto", "rays", "slices")


def beam_depth_range(view: ProjectionView, grid: VolumeGrid, margin_mm: float = 0.0) -> tuple[float, float]:
    """``(near, far)`` depths in mm of the planes bracketing ``grid`` (and ``margin_mm`` more) in ``view``."""
    near, far = view.depth_range(grid.corners_world(pad_vox=SUPPORT_PAD_VOX))
    return max(near - margin_mm, 1e-3), far + margin_mm


class ProST(nn.Module):
    """Projects a volume on the grid ``grid`` along ``view``.

    Args:
        view: the calibrated view.
        grid: the voxel grid of the volumes this layer will project.
        num_samples: ``K``, samples per ray (default :data:`biplanar.config.DEFAULT_NUM_SAMPLES`)
            of beam space and of the ``"rays"`` line integrals; the slice walk samples each ray
            once per voxel slice whatever ``K``.
        margin_mm: extra depth added before and after the volume's box (room for posed volumes,
            which ray sampling cuts at these planes; the slice walk sees the whole volume).
        max_samples_per_chunk: rows (rays) or slices (slice walk) are processed in chunks of at
            most this many samples (batch x channels x K x rows x cols; slices x channels x rows x
            cols), bounding peak memory; with gradients the chunks are recomputed in backward
            (activation checkpointing) so memory stays bounded.
        algorithm: ``"auto"``, ``"rays"`` or ``"slices"``: how line integrals are computed
            (module docstring; :meth:`algorithm_for`). ``"slices"`` needs at least 2 voxels along
            every axis.
    """

    source_world: Tensor  # buffers, registered in __init__
    rays_world: Tensor
    depths_mm: Tensor
    step_mm: Tensor
    world_to_grid: Tensor
    ray_lengths: Tensor

    def __init__(
        self,
        view: ProjectionView,
        grid: VolumeGrid,
        num_samples: int = DEFAULT_NUM_SAMPLES,
        margin_mm: float = 0.0,
        max_samples_per_chunk: int = 2**24,
        algorithm: str = "auto",
    ) -> None:
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"num_samples: expected >= 1, got {num_samples}")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm: expected one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
        if algorithm == "slices" and min(grid.shape) < 2:
            raise ValueError(f"algorithm: 'slices' needs >= 2 voxels along every axis, got grid shape {grid.shape}")
        self.algorithm = algorithm
        # The slice walk's crossings without a pose, per (dtype, device): fixed geometry, built on first use.
        self._shared_crossings: dict[tuple[torch.dtype, torch.device], list[tuple[SliceGroup, SliceRays]]] = {}
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
        # (rows, cols) world mm per mm of depth; not in the state dict (derived from the view).
        self.register_buffer("ray_lengths", rays.norm(dim=-1).float(), persistent=False)
        self.register_buffer("world_to_grid", torch.as_tensor(grid.world_to_grid_matrix()).float())

    @property
    def num_samples(self) -> int:
        return self.depths_mm.shape[0]

    def algorithm_for(self, volume: Tensor, beam: bool = False) -> str:
        """The algorithm ``forward(volume, beam=beam)`` runs: ``"rays"`` or ``"slices"``.

        Beam space is made of the ray samples, so ``beam=True`` always samples rays. For line
        integrals ``"auto"`` walks slices on CPU, where 2-D sampling is vectorised and threaded
        over slices while 3-D sampling is neither, and samples rays on other devices (one 3-D
        grid_sample call; the slice walk is not measured on GPU yet).
        """
        if beam or self.algorithm == "rays":
            return "rays"
        if self.algorithm == "slices":
            return "slices"
        return "slices" if volume.device.type == "cpu" and min(self.grid.shape) > 1 else "rays"

    def forward(self, volume: Tensor, pose: Tensor | None = None, beam: bool = False) -> Tensor:
        """Project ``volume``, optionally moved by ``pose``.

        Args:
            volume: ``(B, C, I, J, K)`` values per mm (attenuation 1/mm for a DRR) on ``grid``; with
                ``pose``, ``B`` may be 1: the same volume at each of the poses.
            pose: ``(B, 4, 4)`` world-to-world map moving the volume: the projected volume is
                ``volume(pose^-1 x)``. ``None`` for the identity.
            beam: return the beam-space volume instead of the line integral.

        Returns:
            ``(B, C, rows, cols)`` line integrals (value x mm), or with ``beam=True`` the
            beam-space samples ``(B, C, K, rows, cols)``.
        """
        self.grid.check_volume(volume)
        if self.algorithm_for(volume, beam) == "slices":
            return self._project_slices(volume, pose)
        if pose is not None and volume.shape[0] == 1:
            volume = volume.expand(pose.shape[0], *volume.shape[1:])
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
        depends on its own position only); the ray derivatives from differentiating
        ``params_to_pose``. The slice walk (when :meth:`algorithm_for` picks it) does the same
        with its crossings, whose position and path length per slice also move with the pose
        (:meth:`_slice_pose_jacobian`). No second-order pass through ``grid_sample`` is needed, so a loss
        built on ``J^T dL/dI`` (SOPI's double backward) back-propagates through the image only.

        Args:
            volume: ``(B, 1, I, J, K)`` values per mm on ``grid`` (one channel).
            params: ``(B, P)`` pose parameters (e.g. rad and mm).
            params_to_pose: maps ``(B, P)`` parameters to ``(B, 4, 4)`` poses (as ``forward``'s
                ``pose``); differentiable.

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
        rays = self._rays_with_tangents(params, params_to_pose, volume.dtype)
        if self.algorithm_for(volume) == "slices":
            return self._slice_pose_jacobian(volume, *rays)
        origin, direction, d_origin, d_direction = rays
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

    def _project_slices(self, volume: Tensor, pose: Tensor | None) -> Tensor:
        """Line integrals ``(B, C, rows, cols)`` of ``volume`` ``(B, C, I, J, K)`` by the slice walk.

        Without a pose every batch element has the same rays: the batch joins the channels, one walk
        serves them all, and its crossings are computed once per dtype and device and kept.
        """
        batch, channels = volume.shape[:2]
        if pose is None:
            key = (volume.dtype, volume.device)
            if key not in self._shared_crossings:
                # Plain tensors even under inference mode, so that later calls with gradients can use them.
                with torch.inference_mode(False), torch.no_grad():
                    origin, direction = self._rays_in_grid(1, None, volume.dtype)
                    self._shared_crossings[key] = self._crossings(origin[0], direction[0])
            stacked = volume.reshape(batch * channels, *self.grid.shape)
            return self._walk(stacked, self._shared_crossings[key]).view(batch, channels, *self.image_shape)
        if batch == 1 and pose.shape[0] > 1:
            return self._project_poses(volume[0], pose)
        origin, direction = self._rays_in_grid(batch, pose, volume.dtype)
        images = [self._walk(volume[b], self._crossings(origin[b], direction[b])) for b in range(batch)]
        return torch.stack(images).view(batch, channels, *self.image_shape)

    def _project_poses(self, volume: Tensor, pose: Tensor) -> Tensor:
        """Line integrals ``(N, C, rows, cols)`` of one volume ``(C, I, J, K)`` at ``N`` poses ``(N, 4, 4)``.

        The rays of several poses go in one walk per walk axis (a search's candidates in one call),
        as many poses as one chunk of :data:`~biplanar.layers.slice_walk.CHUNK_SAMPLES` samples
        holds: small images gain from fewer, larger calls; large ones would only add chunks.
        """
        count = pose.shape[0]
        samples_per_pose = volume.shape[0] * self.ray_lengths.numel() * max(self.grid.shape)
        group = max(1, CHUNK_SAMPLES // samples_per_pose)
        origin, direction = self._rays_in_grid(count, pose, volume.dtype)
        images = []
        for start in range(0, count, group):
            directions = direction[start : start + group].reshape(-1, 3)
            origins = origin[start : start + group, None].expand(-1, self.ray_lengths.numel(), 3).reshape(-1, 3)
            image = self._walk(volume, self._crossings(origins, directions))  # (C, n * rows * cols)
            images.append(image.view(volume.shape[0], -1, *self.image_shape).transpose(0, 1))
        return torch.cat(images)

    def _crossings(self, origin: Tensor, direction: Tensor) -> list[tuple[SliceGroup, SliceRays]]:
        """Each walk-axis group of the rays ``origin (3,)`` (or one per ray), ``direction (..., 3)``
        (grid units, :meth:`_rays_in_grid`; the view's rays, or those of several poses one after the
        other) with its crossings; differentiable in the rays."""
        directions = direction.reshape(-1, 3)
        lengths = self.ray_lengths.to(directions.dtype).reshape(-1)
        lengths = lengths.repeat(directions.shape[0] // lengths.shape[0])
        return [
            (group, slice_rays(origin, directions, lengths, self.grid.shape, group))
            for group in slice_groups(directions, self.grid.shape)
        ]

    def _walk(self, volume: Tensor, crossings: list[tuple[SliceGroup, SliceRays]]) -> Tensor:
        """``(C, R)`` line integrals of ``volume`` ``(C, I, J, K)`` along the ``R`` rays of ``crossings``,
        each group on its walk axis."""
        if len(crossings) == 1 and crossings[0][0].rays is None:  # one walk axis for all rays
            ((group, rays),) = crossings
            return walk_slices(volume, rays, group.axis, self.max_samples_per_chunk)
        count = sum(rays.weight.shape[0] for _, rays in crossings)
        image = volume.new_zeros(volume.shape[0], count)
        for group, rays in crossings:
            image = place_rays(image, walk_slices(volume, rays, group.axis, self.max_samples_per_chunk), group.rays)
        return image

    def _slice_pose_jacobian(
        self, volume: Tensor, origin: Tensor, direction: Tensor, d_origin: Tensor, d_direction: Tensor
    ) -> tuple[Tensor, Tensor]:
        """:meth:`project_with_pose_jacobian` by the slice walk, from the rays and their derivatives
        (:meth:`_rays_with_tangents`).

        A ray's line integral is ``w sum_s V(base + c_s slope)``, with ``w`` its path length per
        slice and ``base``, ``slope`` its crossings (:class:`~biplanar.layers.slice_walk.SliceRays`),
        all three functions of the pose; so its derivative along ``theta_j`` is
        ``dw sum_s V_s + w (sum_s g_s . d base + sum_s c_s g_s . d slope)`` with ``g_s`` the
        in-plane gradient of ``V_s`` (``dw``, ``d base``, ``d slope``:
        :func:`~biplanar.layers.slice_walk.slice_ray_tangents`).
        """
        lengths = self.ray_lengths.to(volume.dtype).reshape(-1)
        count = d_origin.shape[-1]
        images, jacobians = [], []
        for b in range(volume.shape[0]):
            directions, d_directions = direction[b].reshape(-1, 3), d_direction[b].reshape(-1, 3, count)
            image = volume.new_zeros(lengths.shape[0])
            jacobian = volume.new_zeros(lengths.shape[0], count)
            for group in slice_groups(directions, self.grid.shape):
                crossing = slice_rays(origin[b], directions, lengths, self.grid.shape, group)
                d_base, d_slope, d_weight = slice_ray_tangents(
                    crossing, origin[b], directions, d_origin[b], d_directions, group
                )
                sums, gradients, moments = walk_slices_with_gradients(volume[b], crossing, group.axis)
                d_sums = torch.einsum("ri,rip->rp", gradients, d_base) + torch.einsum("ri,rip->rp", moments, d_slope)
                values = crossing.weight * sums
                derivatives = d_weight * sums[:, None] + crossing.weight[:, None] * d_sums
                image = place_rays(image, values, group.rays)
                jacobian = place_rays(jacobian, derivatives, group.rays, dim=0)
            images.append(image.view(*self.image_shape))
            jacobians.append(jacobian.view(*self.image_shape, -1))
        return torch.stack(images).unsqueeze(1), torch.stack(jacobians).unsqueeze(1)

    def _rays_with_tangents(
        self, params: Tensor, params_to_pose: Callable[[Tensor], Tensor], dtype: torch.dtype
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The rays in grid coordinates at the pose of ``params`` (:meth:`_rays_in_grid`) and their
        derivatives along each of the ``P`` parameters.

        The pose's derivatives come from one reverse-mode pass: ``params`` repeated once per entry
        of the pose's top three rows (the last row of an affine pose is constant), copy ``k``
        differentiating entry ``k``; the rays are linear
        in ``to_grid = world_to_grid inv(pose)``, whose derivative is ``-to_grid d pose inv(pose)``.
        (Forward-mode AD gives the same, but its first use in a process imports ``torch._dynamo``,
        about 1.7 s on this project's CPU.)

        Returns:
            ``origin (B, 3)``, ``direction (B, rows, cols, 3)``, ``d_origin (B, 3, P)`` and
            ``d_direction (B, rows, cols, 3, P)``.
        """
        batch, count = params.shape[0], 12  # the entries of the top three rows
        with torch.enable_grad():
            copies = params.detach().repeat(count, 1).requires_grad_(True)  # (12 B, P)
            poses = params_to_pose(copies)  # (12 B, 4, 4): each copy's pose is the same
            entries = poses[:, :3].reshape(count, batch, count).diagonal(dim1=0, dim2=2)  # (B, 12): copy k, entry k
            (gradients,) = torch.autograd.grad(entries.sum(), copies, allow_unused=True, materialize_grads=True)
        tangents = params.new_zeros(batch, 4, 4, params.shape[1])  # (B, 4, 4, P)
        tangents[:, :3] = gradients.view(3, 4, *params.shape).permute(2, 0, 1, 3)
        inverse = torch.linalg.inv(poses[:batch].detach().to(dtype))
        to_grid = self.world_to_grid.to(dtype) @ inverse  # (B, 4, 4)
        d_to_grid = -torch.einsum("bij,bjkp,bkl->bpil", to_grid, tangents.to(dtype), inverse)
        origin, direction = self._rays_of(to_grid)
        batch, count = d_to_grid.shape[:2]
        d_origin, d_direction = self._rays_of(d_to_grid.reshape(batch * count, 4, 4))  # linear in to_grid
        d_origin = d_origin.view(batch, count, 3).movedim(1, -1)
        d_direction = d_direction.view(batch, count, *direction.shape[1:]).movedim(1, -1)
        return origin, direction, d_origin, d_direction

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
        return self._rays_of(to_grid)

    def _rays_of(self, to_grid: Tensor) -> tuple[Tensor, Tensor]:
        """``origin (B, 3)`` and ``direction (B, rows, cols, 3)`` of the rays for ``(B, 4, 4)``
        world-to-grid maps (linear in them)."""
        origin = to_grid[:, :3, :3] @ self.source_world.to(to_grid.dtype) + to_grid[:, :3, 3]
        direction = torch.einsum("bij,rcj->brci", to_grid[:, :3, :3], self.rays_world.to(to_grid.dtype))
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
        """How many batch elements to split one volume's rays into, along the depth samples
        (:func:`~biplanar.layers.sampling.cpu_batch_splits`: every CPU core for one volume)."""
        return cpu_batch_splits(volume, self.num_samples)
