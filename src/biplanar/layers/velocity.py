"""Stationary velocity fields: their exponential (a diffeomorphism) and its composition with an affine.

Fields follow :mod:`biplanar.layers.warp`: ``(B, 3, I, J, K)``, mm, world components ``(x, y, z)``
at the voxel centres of a :class:`VolumeGrid`, pull convention ``warped(p) = volume(p + u(p))``.

Scaling and squaring (Arsigny et al. 2006; VoxelMorph; the paper's local module)::

    u_0 = v / 2**steps,        u_{n+1}(p) = u_n(p) + u_n(p + u_n(p))       (phi_{n+1} = phi_n o phi_n)

gives ``phi = exp(v) = id + u_steps``. The field is resampled with trilinear interpolation and
``"border"`` padding, so a field is continued by its border values outside the grid (a constant
velocity integrates to exactly its translation). Written on :class:`SpatialTransformer` rather than
MONAI's ``DVF2DDF`` because the fields here are world mm on an arbitrary affine grid (MONAI's are
voxel units along the array axes); the two agree on a unit axis-aligned grid (tested).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from biplanar.geometry.transforms import check_matrix
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.layers.sampling import grid_sample_3d
from biplanar.layers.warp import SpatialTransformer, affine_displacement, check_displacement


class VelocityIntegrator(nn.Module):
    """``exp`` of a stationary velocity field by scaling and squaring.

    Args:
        grid: the voxel grid of the velocity and displacement fields.
        steps: number of squarings (``>= 1``); the field is first divided by ``2**steps``.
    """

    def __init__(self, grid: VolumeGrid, steps: int = 7) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"steps: expected >= 1, got {steps}")
        self.grid, self.steps = grid, steps
        self.transformer = SpatialTransformer(grid, mode="bilinear", padding_mode="border")

    def forward(self, velocity: Tensor) -> Tensor:
        """Integrate ``velocity`` over unit time.

        Args:
            velocity: ``(B, 3, I, J, K)`` mm (per unit time), world components, on ``grid``.

        Returns:
            ``(B, 3, I, J, K)`` displacement ``u`` in mm, world components, of ``phi = exp(v)``:
            ``phi(p) = p + u(p)``.
        """
        check_displacement(velocity, self.grid, name="velocity")
        # The squarings run in grid_sample units: world mm and grid units differ by one linear map,
        # under which resampling commutes, so converting once each way gives the same field as
        # converting at every step, without its cost.
        transformer = self.transformer
        identity = transformer.identity_grid(velocity.dtype, velocity.device)  # (I, J, K, 3)
        # (B, 3, I, J, K), grid units, contiguous: grid_sample's input.
        offsets = (transformer.to_grid_units(velocity) / 2**self.steps).movedim(-1, 1).contiguous()
        for _ in range(self.steps):
            sample_grid = identity + offsets.movedim(1, -1)
            offsets = offsets + grid_sample_3d(offsets, sample_grid, "bilinear", "border", align_corners=True)
        return transformer.to_world_mm(offsets.movedim(1, -1))


def compose_affine_displacement(matrix: Tensor, displacement: Tensor, grid: VolumeGrid) -> Tensor:
    """The total field ``Psi`` of an affine pull ``T`` followed by a dense warp ``phi = id + u``.

    ``volume o Psi = (volume o T) o phi``, i.e. ``Psi(p) = T(p + u(p))``, so
    ``disp_Psi(p) = T(p + u(p)) - p = (T p - p) + A u(p)`` with ``A`` the linear part of ``T``:
    a closed form, no resampling.

    Args:
        matrix: ``(B, 4, 4)`` world mm -> world mm pull matrix ``T`` (``warped(p) = volume(T p)``).
        displacement: ``(B, 3, I, J, K)`` mm, world components, the field ``u`` of ``phi`` on ``grid``.
        grid: the voxel grid of the fields.

    Returns:
        ``(B, 3, I, J, K)`` displacement of ``Psi`` in mm, world components.
    """
    check_matrix(matrix)
    check_displacement(displacement, grid)
    if matrix.shape[0] != displacement.shape[0]:
        raise ValueError(
            f"matrix: expected batch {displacement.shape[0]} (the displacement's), got {tuple(matrix.shape)}"
        )
    linear_of_displacement = torch.einsum("bij,bjxyz->bixyz", matrix[:, :3, :3], displacement)
    return affine_displacement(matrix, grid) + linear_of_displacement
