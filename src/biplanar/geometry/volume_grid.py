"""The voxel grid of a volume, and the single place where its frames are converted.

Frames (stated here once, used everywhere in biplanar):

- ``world``: millimetres, the NIfTI RAS+ frame (+x patient's right, +y anterior, +z superior).
- ``vox``: continuous indices ``(i, j, k)`` into the NIfTI data array; voxel centres sit on integers.
- ``grid``: the normalised coordinates of :func:`torch.nn.functional.grid_sample` with
  ``align_corners=True`` for a tensor laid out ``(B, C, I, J, K)``. grid_sample's last
  coordinate indexes the *first* spatial axis, so ``grid = (k, j, i)`` scaled to ``[-1, 1]``:
  ``(i, j, k) -> (k, j, i)``.

Volume tensors are always ``(B, C, I, J, K)``: channel first, then the NIfTI array order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class VolumeGrid:
    """Shape and voxel-to-world affine of a volume.

    Attributes:
        shape: ``(I, J, K)`` voxels.
        affine: ``(4, 4)`` float64, maps homogeneous voxel indices ``(i, j, k, 1)`` to world mm.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray

    def __post_init__(self) -> None:
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"VolumeGrid.affine: expected shape (4, 4), got {affine.shape}")
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"VolumeGrid.shape: expected 3 positive sizes, got {self.shape}")
        if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise ValueError("VolumeGrid.affine: the 3x3 part is singular")
        object.__setattr__(self, "affine", affine)
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))

    @classmethod
    def from_spacing(
        cls,
        shape: tuple[int, int, int],
        spacing_mm: tuple[float, float, float],
        centre_world: tuple[float, float, float] = (0.0, 0.0, 0.0),
    ) -> VolumeGrid:
        """An axis-aligned RAS+ grid with the given voxel spacing whose centre is ``centre_world``."""
        affine = np.diag([*map(float, spacing_mm), 1.0])
        half_extent = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0 * np.asarray(spacing_mm)
        affine[:3, 3] = np.asarray(centre_world, dtype=np.float64) - half_extent
        return cls(shape, affine)  # __post_init__ normalises shape to a tuple of ints

    @property
    def spacing_mm(self) -> np.ndarray:
        """``(3,)`` voxel size along i, j, k in mm."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def centre_world(self) -> np.ndarray:
        """``(3,)`` world mm of the centre of the voxel box."""
        centre_vox = (np.asarray(self.shape, dtype=np.float64) - 1.0) / 2.0
        return self.affine[:3, :3] @ centre_vox + self.affine[:3, 3]

    def corners_world(self, pad_vox: float = 0.0) -> np.ndarray:
        """``(8, 3)`` world mm of the corners of the box of voxel centres, grown by ``pad_vox`` voxels."""
        lo = -pad_vox
        hi = np.asarray(self.shape, dtype=np.float64) - 1.0 + pad_vox
        corners_vox = np.array([[a, b, c] for a in (lo, hi[0]) for b in (lo, hi[1]) for c in (lo, hi[2])])
        return corners_vox @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_grid_matrix(self) -> np.ndarray:
        """``(4, 4)`` float64 affine from homogeneous world mm to grid_sample coordinates."""
        sizes = np.asarray(self.shape, dtype=np.float64)
        # vox -> normalised vox in [-1, 1] (align_corners=True); a size-1 axis maps to 0.
        scale = np.where(sizes > 1, 2.0 / np.maximum(sizes - 1.0, 1.0), 0.0)
        vox_to_norm = np.diag([*scale, 1.0])
        vox_to_norm[:3, 3] = np.where(sizes > 1, -1.0, 0.0)
        # (i, j, k) -> (k, j, i): grid_sample's coordinate order.
        reverse = np.eye(4)[[2, 1, 0, 3]]
        return reverse @ vox_to_norm @ np.linalg.inv(self.affine)

    def world_to_vox(self, points_world: Tensor) -> Tensor:
        """Continuous voxel indices of world points.

        Args:
            points_world: ``(..., 3)`` world mm.

        Returns:
            ``(..., 3)`` voxel indices ``(i, j, k)``.
        """
        inverse = torch.as_tensor(np.linalg.inv(self.affine), dtype=points_world.dtype, device=points_world.device)
        return points_world @ inverse[:3, :3].T + inverse[:3, 3]

    def vox_to_world(self, points_vox: Tensor) -> Tensor:
        """World mm of continuous voxel indices ``(..., 3)``."""
        affine = torch.as_tensor(self.affine, dtype=points_vox.dtype, device=points_vox.device)
        return points_vox @ affine[:3, :3].T + affine[:3, 3]

    def voxel_centres_world(
        self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> Tensor:
        """``(I, J, K, 3)`` world mm of every voxel centre."""
        axes = [torch.arange(n, dtype=torch.float64, device=device) for n in self.shape]
        points_vox = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
        return self.vox_to_world(points_vox).to(dtype)

    def check_volume(self, volume: Tensor, name: str = "volume") -> None:
        """Raise if ``volume`` is not ``(B, C, I, J, K)`` on this grid."""
        if volume.dim() != 5 or tuple(volume.shape[2:]) != self.shape:
            raise ValueError(
                f"{name}: expected shape (B, C, {', '.join(map(str, self.shape))}), got {tuple(volume.shape)}"
            )


def pooled_grid(grid: VolumeGrid, factor: int) -> VolumeGrid:
    """The grid of ``avg_pool3d(volume, factor)`` for a volume on ``grid``.

    Coarse voxel ``n`` covers fine voxels ``factor * n .. factor * n + factor - 1`` along each axis;
    its centre is fine index ``factor * n + (factor - 1) / 2``.

    Raises:
        ValueError: ``factor < 1`` or a grid size not divisible by ``factor``.
    """
    if factor < 1 or any(n % factor for n in grid.shape):
        raise ValueError(f"factor: expected a divisor >= 1 of every grid size {grid.shape}, got {factor}")
    coarse_to_fine = np.diag([float(factor)] * 3 + [1.0])
    coarse_to_fine[:3, 3] = (factor - 1) / 2.0
    nx, ny, nz = grid.shape
    return VolumeGrid((nx // factor, ny // factor, nz // factor), grid.affine @ coarse_to_fine)
