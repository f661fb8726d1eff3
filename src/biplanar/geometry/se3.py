"""SE(3) utilities for rigid pose estimation (SOPI, Chen et al. 2023), batched over leading dims.

Rigid parameters and their matrices are those of :mod:`biplanar.geometry.transforms`
(:func:`~biplanar.geometry.transforms.rigid_matrix` and
:func:`~biplanar.geometry.transforms.rigid_params`, the only conversions):

    params = (rx, ry, rz, tx, ty, tz)          radians, radians, radians, mm, mm, mm
    A = M_t @ M_rx @ M_ry @ M_rz               (SOPI eq. 2-3), rotations about ``centre_mm``
    x' = c + R @ (x - c) + t,  R = Rx(rx) @ Ry(ry) @ Rz(rz)

``A`` is a ``(..., 4, 4)`` homogeneous map of world mm (RAS+) to world mm; with ``centre_mm = 0``
(the default) its translation column is ``t`` itself. Rotation vectors ``w`` (axis * angle, rad)
map to rotations by Rodrigues' formula, ``R = exp([w]x)``. All functions accept float32/float64
tensors with any leading batch shape ``...`` and are differentiable (the logarithm and the
geodesic angle are not differentiable at the identity, where the angle has a kink).
"""

from __future__ import annotations

import torch
from torch import Tensor

from biplanar.geometry.transforms import centre_or_origin, check_trailing_shape, rigid_matrix

_SMALL_ANGLE_RAD = 1e-2  # below it, Taylor series replace sin(t)/t and (1 - cos t)/t^2


def skew(vector: Tensor) -> Tensor:
    """``(..., 3)`` -> ``(..., 3, 3)`` cross-product matrix ``[v]x`` (``[v]x u = v x u``)."""
    check_trailing_shape(vector, (3,), "vector")
    x, y, z = vector.unbind(-1)
    zero = torch.zeros_like(x)
    rows = [torch.stack(r, dim=-1) for r in ([zero, -z, y], [z, zero, -x], [-y, x, zero])]
    return torch.stack(rows, dim=-2)


def _vee_antisymmetric(rotation: Tensor) -> Tensor:
    """``(..., 3, 3)`` -> ``(..., 3)`` ``vee((R - R^T) / 2) = sin(theta) * axis``."""
    return 0.5 * torch.stack(
        [
            rotation[..., 2, 1] - rotation[..., 1, 2],
            rotation[..., 0, 2] - rotation[..., 2, 0],
            rotation[..., 1, 0] - rotation[..., 0, 1],
        ],
        dim=-1,
    )


def _cos_sin_angle(rotation: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(..., 3, 3)`` -> ``cos(theta)`` (...), ``sin(theta) * axis`` (..., 3), ``theta`` (...) rad."""
    cos = 0.5 * (rotation.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0)
    sin_axis = _vee_antisymmetric(rotation)
    # theta = atan2(|sin_axis|, cos): accurate over [0, pi], unlike acos near 0 or asin near pi.
    sin_sq = (sin_axis * sin_axis).sum(-1)
    sin = torch.sqrt(torch.where(sin_sq > 0, sin_sq, torch.ones_like(sin_sq)))
    sin = torch.where(sin_sq > 0, sin, torch.zeros_like(sin))
    return cos, sin_axis, torch.atan2(sin, cos)


def so3_exp(rotvec: Tensor) -> Tensor:
    """``(..., 3)`` rotation vector (axis * angle, rad) -> ``(..., 3, 3)`` rotation (Rodrigues)."""
    check_trailing_shape(rotvec, (3,), "rotvec")
    theta_sq = (rotvec * rotvec).sum(-1, keepdim=True).unsqueeze(-1)  # (..., 1, 1)
    small = theta_sq < _SMALL_ANGLE_RAD**2
    theta = torch.sqrt(torch.where(small, torch.ones_like(theta_sq), theta_sq))
    sinc = torch.where(small, 1.0 - theta_sq / 6.0 + theta_sq**2 / 120.0, torch.sin(theta) / theta)
    cosc = torch.where(small, 0.5 - theta_sq / 24.0 + theta_sq**2 / 720.0, (1.0 - torch.cos(theta)) / theta**2)
    hat = skew(rotvec)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device)
    return eye + sinc * hat + cosc * (hat @ hat)


def so3_log(rotation: Tensor) -> Tensor:
    """``(..., 3, 3)`` rotation -> ``(..., 3)`` rotation vector (axis * angle), angle in ``[0, pi]`` rad.

    Near 0 uses ``theta / sin(theta) * vee(R - R^T) / 2`` (Taylor series for small angles);
    for angles above 90 deg the axis comes from the symmetric part ``(R + R^T)/2 - cos I =
    (1 - cos) a a^T``, which stays accurate up to pi (where the sign of the axis is arbitrary).
    """
    check_trailing_shape(rotation, (3, 3), "rotation")
    cos, sin_axis, theta = _cos_sin_angle(rotation)
    sin = torch.sin(theta)
    # Branch 1 (cos >= 0): w = theta / sin(theta) * sin_axis.
    small = theta < _SMALL_ANGLE_RAD
    sin_safe = torch.where(small | (cos < 0), torch.ones_like(sin), sin)
    factor = torch.where(small, 1.0 + theta**2 / 6.0 + 7.0 * theta**4 / 360.0, theta / sin_safe)
    near_zero = factor.unsqueeze(-1) * sin_axis
    # Branch 2 (cos < 0): the column of the symmetric part with the largest diagonal is parallel to the axis.
    eye = torch.eye(3, dtype=rotation.dtype, device=rotation.device)
    outer = 0.5 * (rotation + rotation.transpose(-1, -2)) - cos[..., None, None] * eye  # (1 - cos) a a^T
    column = outer.diagonal(dim1=-2, dim2=-1).argmax(-1)  # (...)
    picked = torch.gather(outer, -1, column[..., None, None].expand(*outer.shape[:-1], 1)).squeeze(-1)
    norm = picked.norm(dim=-1, keepdim=True)
    axis = picked / torch.where(norm > 0, norm, torch.ones_like(norm))
    sign = torch.where((axis * sin_axis).sum(-1, keepdim=True) < 0, -1.0, 1.0).to(axis)
    near_pi = sign * axis * theta.unsqueeze(-1)
    return torch.where((cos < 0).unsqueeze(-1), near_pi, near_zero)


def rotation_geodesic_rad(rotation_a: Tensor, rotation_b: Tensor) -> Tensor:
    """``(..., 3, 3)`` x2 -> ``(...)`` angle (rad, ``[0, pi]``) of ``R_a^T R_b``: the SO(3) geodesic distance."""
    check_trailing_shape(rotation_a, (3, 3), "rotation_a")
    check_trailing_shape(rotation_b, (3, 3), "rotation_b")
    return _cos_sin_angle(rotation_a.transpose(-1, -2) @ rotation_b)[2]


def rotation_geodesic_deg(rotation_a: Tensor, rotation_b: Tensor) -> Tensor:
    """``(..., 3, 3)`` x2 -> ``(...)`` geodesic distance in degrees (see :func:`rotation_geodesic_rad`)."""
    return torch.rad2deg(rotation_geodesic_rad(rotation_a, rotation_b))


def pose_errors(matrix_est: Tensor, matrix_true: Tensor, centre_mm: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Rotation error (deg) and translation error (mm) of ``(..., 4, 4)`` rigid poses, each ``(...)``.

    The rotation error is the geodesic angle between the rotation parts. The translation error
    is the norm of the difference of the translation parameters about ``centre_mm`` (default
    the world origin), i.e. the distance between the two images of the centre point.
    """
    check_trailing_shape(matrix_est, (4, 4), "matrix_est")
    check_trailing_shape(matrix_true, (4, 4), "matrix_true")
    rotation = rotation_geodesic_deg(matrix_est[..., :3, :3], matrix_true[..., :3, :3])
    centre = torch.cat([centre_or_origin(centre_mm, matrix_est), matrix_est.new_ones(1)])
    moved_est = (matrix_est @ centre)[..., :3]
    moved_true = (matrix_true.to(matrix_est) @ centre)[..., :3]
    return rotation, (moved_est - moved_true).norm(dim=-1)


def _unit(vector: Tensor, eps: float) -> Tensor:
    """``(..., 3)`` -> unit vector; zero where ``|v| <= eps``."""
    norm = vector.norm(dim=-1, keepdim=True)
    return torch.where(norm > eps, vector / norm.clamp_min(eps), torch.zeros_like(vector))


def geodesic_direction(
    params: Tensor, target_params: Tensor, centre_mm: Tensor | None = None, eps: float = 1e-8
) -> Tensor:
    """``(..., 6)`` current and target params -> ``(..., 6)`` unit direction towards the target (SOPI eq. 7).

    The rotation part is the unit rotation vector ``so3_log(R_target @ R^T)`` (the axis of the
    shortest rotation from ``R`` to ``R_target``, in the world frame); the translation part is
    the unit vector of ``t_target - t``. Each part is normalised separately and is zero where
    the current pose already matches the target in that part (``|.| <= eps``).
    """
    check_trailing_shape(params, (6,), "params")
    check_trailing_shape(target_params, (6,), "target_params")
    current = rigid_matrix(params, centre_mm)
    target = rigid_matrix(target_params.to(params), centre_mm)
    rotvec = so3_log(target[..., :3, :3] @ current[..., :3, :3].transpose(-1, -2))
    translation = target_params[..., 3:].to(params) - params[..., 3:]
    return torch.cat([_unit(rotvec, eps), _unit(translation, eps)], dim=-1)


__all__ = [
    "geodesic_direction",
    "pose_errors",
    "rotation_geodesic_deg",
    "rotation_geodesic_rad",
    "skew",
    "so3_exp",
    "so3_log",
]
