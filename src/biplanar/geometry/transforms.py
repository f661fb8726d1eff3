"""Similarity and rigid transforms of volumes: parameters <-> 4x4 matrices, the package's one API for them.

Parameters (the paper's 7, and SOPI's 6 without the scale), about a centre ``c`` in world mm:

    params = (rx, ry, rz, tx, ty, tz, log_s)        radians, radians, radians, mm, mm, mm, -
    R = Rx(rx) @ Ry(ry) @ Rz(rz)                    (SOPI eq. 2-3 order: A = M_t M_rx M_ry M_rz)
    x' = c + exp(log_s) * R @ (x - c) + t

Rigid parameters are the first 6 (``log_s = 0``). The matrices are homogeneous maps of world mm
(RAS+) to world mm. One function per conversion:

    euler_to_rotation / rotation_to_euler       (B, 3) angles <-> (B, 3, 3) rotations
    similarity_matrix / similarity_params       (B, 7) <-> (B, 4, 4), about a given centre
    rigid_matrix / rigid_params                 (..., 6) <-> (..., 4, 4), any leading batch shape,
                                                about a centre (default: the world origin, where
                                                the translation column is ``t`` itself)

The rotation vectors, geodesic distances and pose errors of SOPI are in :mod:`biplanar.geometry.se3`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def euler_to_rotation(angles_rad: Tensor) -> Tensor:
    """``(B, 3)`` angles ``(rx, ry, rz)`` in radians -> ``(B, 3, 3)`` ``Rx @ Ry @ Rz``."""
    cos, sin = torch.cos(angles_rad), torch.sin(angles_rad)
    one, zero = torch.ones_like(cos[:, 0]), torch.zeros_like(cos[:, 0])

    def stack(rows: list[list[Tensor]]) -> Tensor:
        return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)

    rot_x = stack([[one, zero, zero], [zero, cos[:, 0], -sin[:, 0]], [zero, sin[:, 0], cos[:, 0]]])
    rot_y = stack([[cos[:, 1], zero, sin[:, 1]], [zero, one, zero], [-sin[:, 1], zero, cos[:, 1]]])
    rot_z = stack([[cos[:, 2], -sin[:, 2], zero], [sin[:, 2], cos[:, 2], zero], [zero, zero, one]])
    return rot_x @ rot_y @ rot_z


def rotation_to_euler(rotation: Tensor) -> Tensor:
    """``(B, 3, 3)`` rotation -> ``(B, 3)`` radians with ``R = Rx @ Ry @ Rz``, ``|ry| < pi/2``."""
    # R[0, 2] = sin(ry); R[1, 2] = -sin(rx)cos(ry); R[2, 2] = cos(rx)cos(ry);
    # R[0, 1] = -cos(ry)sin(rz); R[0, 0] = cos(ry)cos(rz).
    ry = torch.asin(rotation[:, 0, 2].clamp(-1.0, 1.0))
    rx = torch.atan2(-rotation[:, 1, 2], rotation[:, 2, 2])
    rz = torch.atan2(-rotation[:, 0, 1], rotation[:, 0, 0])
    return torch.stack([rx, ry, rz], dim=-1)


def _about_centre(linear: Tensor, translation_mm: Tensor, centre_world: Tensor) -> Tensor:
    """``(B, 4, 4)`` for ``x' = c + linear @ (x - c) + t``."""
    batch = linear.shape[0]
    centre = centre_world.to(linear).expand(batch, 3)
    offset = centre + translation_mm - (linear @ centre.unsqueeze(-1)).squeeze(-1)
    matrix = torch.zeros(batch, 4, 4, dtype=linear.dtype, device=linear.device)
    matrix[:, :3, :3] = linear
    matrix[:, :3, 3] = offset
    matrix[:, 3, 3] = 1.0
    return matrix


def similarity_matrix(params: Tensor, centre_world: Tensor) -> Tensor:
    """``(B, 7)`` similarity parameters (see module doc) -> ``(B, 4, 4)`` matrix about ``centre_world`` (3,) mm."""
    if params.dim() != 2 or params.shape[1] != 7:
        raise ValueError(f"params: expected shape (B, 7), got {tuple(params.shape)}")
    linear = torch.exp(params[:, 6]).view(-1, 1, 1) * euler_to_rotation(params[:, :3])
    return _about_centre(linear, params[:, 3:6], centre_world)


def check_trailing_shape(tensor: Tensor, shape: tuple[int, ...], name: str) -> None:
    """Raise ``ValueError`` (``<name>: expected shape (..., 6), got ...``) unless ``tensor`` ends in ``shape``."""
    if tensor.dim() < len(shape) or tuple(tensor.shape[tensor.dim() - len(shape) :]) != shape:
        expected = "(..., " + ", ".join(str(s) for s in shape) + ")"
        raise ValueError(f"{name}: expected shape {expected}, got {tuple(tensor.shape)}")


def centre_or_origin(centre_world: Tensor | None, like: Tensor) -> Tensor:
    """``(3,)`` centre in world mm (the world origin when ``None``), in the dtype and device of ``like``."""
    if centre_world is None:
        return torch.zeros(3, dtype=like.dtype, device=like.device)
    centre = torch.as_tensor(centre_world).to(like)
    if centre.shape != (3,):
        raise ValueError(f"centre_world: expected shape (3,), got {tuple(centre.shape)}")
    return centre


def rigid_matrix(params: Tensor, centre_world: Tensor | None = None) -> Tensor:
    """``(..., 6)`` rigid parameters ``(rx, ry, rz, tx, ty, tz)`` -> ``(..., 4, 4)`` ``A = M_t M_rx M_ry M_rz``.

    The rotation is about ``centre_world`` ``(3,)`` world mm (default: the world origin).
    """
    check_trailing_shape(params, (6,), "params")
    flat = params.reshape(-1, 6)
    matrix = _about_centre(euler_to_rotation(flat[:, :3]), flat[:, 3:6], centre_or_origin(centre_world, params))
    return matrix.reshape(*params.shape[:-1], 4, 4)


def rigid_params(matrix: Tensor, centre_world: Tensor | None = None) -> Tensor:
    """Inverse of :func:`rigid_matrix`: ``(..., 4, 4)`` -> ``(..., 6)`` about ``centre_world``, ``|ry| < pi/2``."""
    check_trailing_shape(matrix, (4, 4), "matrix")
    flat = matrix.reshape(-1, 4, 4)
    rotation, offset = flat[:, :3, :3], flat[:, :3, 3]
    centre = centre_or_origin(centre_world, matrix)
    # offset = c + t - R c  =>  t = offset + R c - c
    translation = offset + rotation @ centre - centre
    params = torch.cat([rotation_to_euler(rotation), translation], dim=-1)
    return params.reshape(*matrix.shape[:-2], 6)


def check_matrix(matrix: Tensor, name: str = "matrix") -> None:
    """Raise ``ValueError`` unless ``matrix`` is ``(B, 4, 4)``."""
    if matrix.dim() != 3 or tuple(matrix.shape[1:]) != (4, 4):
        raise ValueError(f"{name}: expected shape (B, 4, 4), got {tuple(matrix.shape)}")


def similarity_params(matrix: Tensor, centre_world: Tensor) -> Tensor:
    """Inverse of :func:`similarity_matrix`: ``(B, 4, 4)`` -> ``(B, 7)`` about ``centre_world``."""
    check_matrix(matrix)
    linear = matrix[:, :3, :3]
    scale = torch.linalg.det(linear).abs().pow(1.0 / 3.0)
    rotation = linear / scale.view(-1, 1, 1)
    centre = centre_world.to(matrix).expand(matrix.shape[0], 3)
    translation = (matrix[:, :3, 3] + (linear @ centre.unsqueeze(-1)).squeeze(-1)) - centre
    return torch.cat([rotation_to_euler(rotation), translation, torch.log(scale)[:, None]], dim=1)


def transform_points(matrix: Tensor, points_world: Tensor) -> Tensor:
    """Apply ``(B, 4, 4)`` to ``(B, ..., 3)`` world mm points."""
    check_matrix(matrix)
    if points_world.dim() < 2 or points_world.shape[0] != matrix.shape[0] or points_world.shape[-1] != 3:
        raise ValueError(f"points_world: expected shape ({matrix.shape[0]}, ..., 3), got {tuple(points_world.shape)}")
    batch = matrix.shape[0]
    flat = points_world.reshape(batch, -1, 3)
    moved = flat @ matrix[:, :3, :3].transpose(1, 2) + matrix[:, None, :3, 3]
    return moved.reshape(points_world.shape)
