"""Calibrated projection views: a 3x4 projection matrix, or a C-arm description that builds one.

Conventions (``docs/contract.md`` section 1-2):

- A radiograph is ``(rows, cols)``; ``u`` is the column index, ``v`` the row index; pixel
  ``(row r, col c)`` has its centre at ``(u, v) = (c, r)``.
- ``P`` (3x4) maps a homogeneous world point (mm) to ``[u*w, v*w, w]``; points in front of the
  source have ``w > 0``. biplanar stores ``P`` scaled so that ``||P[2, :3]|| = 1``: then ``w``
  is the depth of the point in mm along the principal axis, measured from the source.
- A point at depth ``w`` on the ray of pixel ``(u, v)`` is ``source + w * M^-1 [u, v, 1]``,
  ``M = P[:, :3]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor


def _rotation_about(axis: str, angle_rad: float) -> np.ndarray:
    """``(3, 3)`` right-handed rotation about a world axis ``'x'``, ``'y'`` or ``'z'``."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


@dataclass(frozen=True)
class CarmPose:
    """A C-arm position (CONTRACT section 2, ``carm``).

    At ``lao_rao_deg = cranio_caudal_deg = 0`` the source is anterior (+y) of the isocentre, the
    detector's ``u`` axis points to -x and ``v`` to -z. ``lao_rao_deg`` rotates the whole C-arm
    about +z (right-hand rule: +90 puts the source on the patient's left); ``cranio_caudal_deg``
    then rotates it about its own ``u`` axis (+ moves the source towards superior).

    Attributes:
        lao_rao_deg: rotation about +z, degrees.
        cranio_caudal_deg: rotation about the C-arm's detector ``u`` axis, degrees.
        source_isocenter_mm: distance from the source to the isocentre, mm.
        source_detector_mm: distance from the source to the detector plane, mm.
        pixel_spacing_mm: ``(row, col)`` spacing at the detector, mm.
        isocenter_mm: ``(3,)`` world mm, or ``None`` for "the centre of the volume" (resolved by
            :meth:`ProjectionView.from_carm`).
    """

    lao_rao_deg: float = 0.0
    cranio_caudal_deg: float = 0.0
    source_isocenter_mm: float = 925.0
    source_detector_mm: float = 1000.0
    pixel_spacing_mm: tuple[float, float] = (0.93, 0.93)
    isocenter_mm: tuple[float, float, float] | None = None

    def rotation(self) -> np.ndarray:
        """``(3, 3)`` rotation taking the canonical C-arm (source at +y) to this one."""
        return _rotation_about("z", np.deg2rad(self.lao_rao_deg)) @ _rotation_about(
            "x", np.deg2rad(self.cranio_caudal_deg)
        )

    def axes_world(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unit vectors ``(d, u_axis, v_axis)``: isocentre-to-source direction, column and row axes."""
        rotation = self.rotation()
        return (
            rotation @ np.array([0.0, 1.0, 0.0]),
            rotation @ np.array([-1.0, 0.0, 0.0]),
            rotation @ np.array([0.0, 0.0, -1.0]),
        )


def carm_projection_matrix(carm: CarmPose, image_shape: tuple[int, int], isocenter_mm: np.ndarray) -> np.ndarray:
    """The ``(3, 4)`` projection matrix of a C-arm view, scaled so that ``w`` is depth in mm.

    Args:
        carm: the C-arm position.
        image_shape: ``(rows, cols)`` of the detector.
        isocenter_mm: ``(3,)`` world mm of the isocentre.
    """
    if carm.source_detector_mm <= 0 or carm.source_isocenter_mm <= 0:
        raise ValueError("carm: source_isocenter_mm and source_detector_mm must be positive")
    if min(carm.pixel_spacing_mm) <= 0:
        raise ValueError("carm: pixel_spacing_mm must be positive")
    d, u_axis, v_axis = carm.axes_world()
    source = np.asarray(isocenter_mm, dtype=np.float64) + carm.source_isocenter_mm * d
    rows, cols = image_shape
    centre_u, centre_v = (cols - 1) / 2.0, (rows - 1) / 2.0
    focal_u = carm.source_detector_mm / carm.pixel_spacing_mm[1]
    focal_v = carm.source_detector_mm / carm.pixel_spacing_mm[0]
    # Rows act on (X - source): depth w = -d . (X - source) > 0 in front of the source.
    intrinsic_rotation = np.stack([focal_u * u_axis - centre_u * d, focal_v * v_axis - centre_v * d, -d])
    return np.concatenate([intrinsic_rotation, -(intrinsic_rotation @ source)[:, None]], axis=1)


@dataclass(frozen=True)
class ProjectionView:
    """One calibrated view: a projection matrix and the detector's image shape.

    Attributes:
        matrix: ``(3, 4)`` float64 projection matrix, normalised so that ``||matrix[2, :3]|| = 1``
            and ``w > 0`` in front of the source (``w`` = depth in mm).
        image_shape: ``(rows, cols)``.
        name: the view's name in the geometry file (``"AP"``, ``"LAT"``, ...).
        carm: the C-arm description it was built from, if any.
    """

    matrix: np.ndarray
    image_shape: tuple[int, int]
    name: str = ""
    carm: CarmPose | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        matrix = np.asarray(self.matrix, dtype=np.float64)
        if matrix.shape != (3, 4) or not np.all(np.isfinite(matrix)):
            raise ValueError(f"projection_matrix: expected 3x4 finite numbers, got shape {matrix.shape}")
        if not np.linalg.cond(matrix[:, :3]) < 1e12:
            raise ValueError("projection_matrix: the left 3x3 block is singular (no finite source)")
        matrix = matrix / np.linalg.norm(matrix[2, :3])
        object.__setattr__(self, "matrix", matrix)
        rows, cols = (int(n) for n in self.image_shape)
        if rows < 1 or cols < 1:
            raise ValueError(f"image_shape: expected two positive sizes, got {self.image_shape}")
        object.__setattr__(self, "image_shape", (rows, cols))

    @classmethod
    def from_carm(
        cls,
        carm: CarmPose,
        image_shape: tuple[int, int],
        default_isocenter_mm: np.ndarray | None = None,
        name: str = "",
    ) -> ProjectionView:
        """A view from a C-arm position; ``default_isocenter_mm`` fills ``carm.isocenter_mm=None``."""
        isocenter = carm.isocenter_mm if carm.isocenter_mm is not None else default_isocenter_mm
        if isocenter is None:
            raise ValueError("carm.isocenter_mm: not given and no volume centre to default to")
        return cls(carm_projection_matrix(carm, image_shape, np.asarray(isocenter)), image_shape, name, carm)

    @property
    def source_world(self) -> np.ndarray:
        """``(3,)`` world mm of the X-ray source, the null space of ``P``."""
        return -np.linalg.solve(self.matrix[:, :3], self.matrix[:, 3])

    @property
    def principal_direction(self) -> np.ndarray:
        """``(3,)`` unit vector from the source towards the detector (along which ``w`` grows)."""
        return self.matrix[2, :3].copy()

    def project(self, points_world: Tensor) -> tuple[Tensor, Tensor]:
        """Project world points onto the detector.

        Args:
            points_world: ``(..., 3)`` world mm.

        Returns:
            ``uv_px``: ``(..., 2)`` detector coordinates ``(u, v)`` in pixels;
            ``depth_mm``: ``(...)`` depth ``w`` along the principal axis from the source, mm.
        """
        matrix = torch.as_tensor(self.matrix, dtype=points_world.dtype, device=points_world.device)
        homogeneous = points_world @ matrix[:, :3].T + matrix[:, 3]
        depth = homogeneous[..., 2]
        return homogeneous[..., :2] / depth.unsqueeze(-1), depth

    def pixel_rays(self, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
        """``(rows, cols, 3)`` ray vectors ``M^-1 [u, v, 1]``, world mm per mm of depth.

        The point at depth ``w`` on pixel ``(row, col)``'s ray is ``source + w * rays[row, col]``.
        """
        rows, cols = self.image_shape
        v, u = torch.meshgrid(
            torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64), indexing="ij"
        )
        uv1 = torch.stack([u, v, torch.ones_like(u)], dim=-1)
        inverse = torch.as_tensor(np.linalg.inv(self.matrix[:, :3]))
        return (uv1 @ inverse.T).to(dtype=dtype, device=device)

    def depth_range(self, corners_world: np.ndarray) -> tuple[float, float]:
        """``(near, far)`` depths in mm of the planes parallel to the detector that bracket points.

        Args:
            corners_world: ``(N, 3)`` world mm, e.g. a volume's box corners.
        """
        depths = corners_world @ self.matrix[2, :3] + self.matrix[2, 3]
        near, far = float(depths.min()), float(depths.max())
        if near <= 0:
            raise ValueError(f"view {self.name or '?'}: the volume reaches behind the X-ray source")
        return near, far


def beam_obliquity_deg(view: ProjectionView, nominal_axis: np.ndarray) -> float:
    """Angle (deg, 0 to 90) between a view's beam and the line of ``nominal_axis`` ``(3,)`` (world,
    any length), either way along it: 0 for an AP view and ``(0, 1, 0)`` whether AP or PA."""
    axis = np.asarray(nominal_axis, dtype=np.float64)
    cosine = abs(float(view.principal_direction @ axis)) / float(np.linalg.norm(axis))
    return math.degrees(math.acos(min(1.0, cosine)))


def view_angles_deg(view: ProjectionView) -> tuple[float, float]:
    """``(lao_rao_deg, cranio_caudal_deg)`` of a view, from its projection matrix.

    The isocentre-to-source direction is ``d = -principal_direction``; for a C-arm
    (``docs/contract.md`` section 2) ``d = Rz(lao_rao) Rx(cranio_caudal) (0, 1, 0)
    = (-sin a cos c, cos a cos c, sin c)``, so ``a = atan2(-d_x, d_y)`` and ``c = asin(d_z)``.
    A plain projection matrix gets the angles of the C-arm with the same viewing direction.
    """
    d = -view.principal_direction
    return (math.degrees(math.atan2(-d[0], d[1])), math.degrees(math.asin(float(np.clip(d[2], -1.0, 1.0)))))
