"""Similarity / rigid parameters <-> matrices: round trips and named convention pins."""

import math

import pytest
import torch

from biplanar.geometry.transforms import (
    rigid_matrix,
    rigid_params,
    similarity_matrix,
    similarity_params,
    transform_points,
)

CENTRE = torch.tensor([12.0, -30.0, 55.0], dtype=torch.float64)


def random_params(batch: int, seed: int = 0) -> torch.Tensor:
    """``(batch, 7)`` float64: rx, rz in (-pi, pi), |ry| < 80 deg, t in (-50, 50) mm, scale 0.8..1.25."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(batch, generator=gen, dtype=torch.float64)

    ry_max = math.radians(80.0)
    return torch.stack(
        [
            uniform(-math.pi, math.pi),
            uniform(-ry_max, ry_max),
            uniform(-math.pi, math.pi),
            uniform(-50.0, 50.0),
            uniform(-50.0, 50.0),
            uniform(-50.0, 50.0),
            uniform(math.log(0.8), math.log(1.25)),
        ],
        dim=1,
    )


def test_similarity_round_trip():
    params = random_params(256)
    recovered = similarity_params(similarity_matrix(params, CENTRE), CENTRE)
    torch.testing.assert_close(recovered, params, rtol=0.0, atol=1e-9)


def test_rz_plus_90_maps_plus_x_to_plus_y_about_centre():
    params = torch.tensor([[0.0, 0.0, math.pi / 2, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    matrix = similarity_matrix(params, CENTRE)
    moved = transform_points(matrix, (CENTRE + torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))[None])
    torch.testing.assert_close(moved[0], CENTRE + torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize(
    "axis, source, target",
    [
        (0, [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]),  # rx = +90: +y -> +z
        (1, [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]),  # ry = +90 deg: +z -> +x (right-hand rule)
    ],
)
def test_rx_ry_plus_90_follow_the_right_hand_rule(axis, source, target):
    params = torch.zeros(1, 7, dtype=torch.float64)
    params[0, axis] = math.pi / 2
    moved = transform_points(similarity_matrix(params, CENTRE), (CENTRE + torch.tensor(source).double())[None])
    torch.testing.assert_close(moved[0], CENTRE + torch.tensor(target).double())


def test_scale_about_centre_keeps_the_centre_and_scales_offsets():
    params = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, math.log(1.2)]], dtype=torch.float64)
    matrix = similarity_matrix(params, CENTRE)
    offset = torch.tensor([3.0, -4.0, 5.0], dtype=torch.float64)
    moved = transform_points(matrix, torch.stack([CENTRE, CENTRE + offset])[None])[0]
    torch.testing.assert_close(moved[0], CENTRE)
    torch.testing.assert_close(moved[1], CENTRE + 1.2 * offset)


def test_translation_is_added_after_the_linear_part():
    params = random_params(4, seed=1)
    matrix = similarity_matrix(params, CENTRE)
    moved_centre = transform_points(matrix, CENTRE.expand(4, 1, 3))[:, 0]
    torch.testing.assert_close(moved_centre, CENTRE + params[:, 3:6])


def test_rigid_equals_similarity_with_zero_log_scale():
    params = random_params(16, seed=2)
    params[:, 6] = 0.0
    torch.testing.assert_close(
        rigid_matrix(params[:, :6], CENTRE), similarity_matrix(params, CENTRE), rtol=0.0, atol=1e-12
    )


def random_rigid_params(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """``(*shape, 6)`` float64, the rigid part of :func:`random_params`."""
    return random_params(math.prod(shape), seed)[:, :6].reshape(*shape, 6)


@pytest.mark.parametrize("centre", [None, CENTRE])
def test_rigid_round_trip_over_leading_dims(centre):
    params = random_rigid_params((4, 5), seed=11)
    matrix = rigid_matrix(params, centre)
    assert matrix.shape == (4, 5, 4, 4)
    torch.testing.assert_close(rigid_params(matrix, centre), params, rtol=0.0, atol=1e-10)


def test_rigid_matrix_is_per_element_over_leading_dims():
    params = random_rigid_params((2, 3), seed=12)
    torch.testing.assert_close(rigid_matrix(params, CENTRE)[1, 2], rigid_matrix(params[1, 2], CENTRE), rtol=0, atol=0)
    torch.testing.assert_close(
        rigid_matrix(params, CENTRE).reshape(6, 4, 4), rigid_matrix(params.reshape(6, 6), CENTRE)
    )


def test_rigid_translation_column_is_t_about_the_origin():
    params = random_rigid_params((3,), seed=13)
    torch.testing.assert_close(rigid_matrix(params)[:, :3, 3], params[:, 3:])


def test_rigid_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"params: expected shape \(\.\.\., 6\)"):
        rigid_matrix(torch.zeros(2, 7))
    with pytest.raises(ValueError, match=r"matrix: expected shape \(\.\.\., 4, 4\)"):
        rigid_params(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="centre_world"):
        rigid_matrix(torch.zeros(6), torch.zeros(2))


def test_gradcheck_rigid_conversions():
    params = random_rigid_params((3,), seed=14).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: rigid_matrix(p, CENTRE), (params,))
    assert torch.autograd.gradcheck(rigid_params, (rigid_matrix(params).detach().requires_grad_(),))


def test_similarity_matrix_is_orthogonal_times_scale():
    params = random_params(16, seed=3)
    linear = similarity_matrix(params, CENTRE)[:, :3, :3]
    scale = torch.exp(params[:, 6]).view(-1, 1, 1)
    eye = torch.eye(3, dtype=torch.float64).expand(16, 3, 3)
    torch.testing.assert_close(linear.transpose(1, 2) @ linear, scale**2 * eye, rtol=0.0, atol=1e-12)
    torch.testing.assert_close(torch.linalg.det(linear), scale.view(-1) ** 3, rtol=0.0, atol=1e-12)


@pytest.mark.parametrize(
    "call, argument",
    [
        (similarity_matrix, torch.zeros(2, 6)),
        (similarity_matrix, torch.zeros(7)),
        (rigid_matrix, torch.zeros(2, 7)),
        (similarity_params, torch.zeros(2, 3, 4)),
        (similarity_params, torch.zeros(4, 4)),
    ],
)
def test_bad_shapes_raise(call, argument):
    with pytest.raises(ValueError, match="expected shape"):
        call(argument, CENTRE.float())


def test_transform_points_bad_shapes_raise():
    matrix = torch.eye(4).expand(2, 4, 4)
    with pytest.raises(ValueError, match="expected shape"):
        transform_points(matrix, torch.zeros(3, 5, 3))
    with pytest.raises(ValueError, match="expected shape"):
        transform_points(matrix, torch.zeros(2, 5, 2))
    with pytest.raises(ValueError, match="expected shape"):
        transform_points(torch.eye(4), torch.zeros(1, 5, 3))
