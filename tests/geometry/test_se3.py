"""SE(3) utilities: exp/log round trips, closed-form angles, metric axioms, SOPI eq. 7 direction, gradcheck
(rigid parameters <-> matrices: tests/geometry/test_transforms.py)."""

import math

import pytest
import torch

from biplanar.geometry.se3 import (
    geodesic_direction,
    pose_errors,
    rotation_geodesic_deg,
    so3_exp,
    so3_log,
)
from biplanar.geometry.transforms import rigid_matrix

CENTRE = torch.tensor([12.0, -30.0, 55.0], dtype=torch.float64)


def random_rotvecs(count: int, max_angle: float, seed: int = 0) -> torch.Tensor:
    """``(count, 3)`` float64 rotation vectors, random axes, angles uniform in ``[0, max_angle]``."""
    gen = torch.Generator().manual_seed(seed)
    axes = torch.randn(count, 3, generator=gen, dtype=torch.float64)
    angles = max_angle * torch.rand(count, 1, generator=gen, dtype=torch.float64)
    return axes / axes.norm(dim=-1, keepdim=True) * angles


def random_params(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """``(*shape, 6)`` float64: |rx|, |rz| < pi, |ry| < 80 deg, |t| < 50 mm."""
    gen = torch.Generator().manual_seed(seed)
    unit = 2.0 * torch.rand(*shape, 6, generator=gen, dtype=torch.float64) - 1.0
    return unit * torch.tensor([math.pi, math.radians(80.0), math.pi, 50.0, 50.0, 50.0], dtype=torch.float64)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_exp_log_round_trip_up_to_pi(dtype, atol):
    rotvec = random_rotvecs(2000, math.pi - 1e-6, seed=4).to(dtype)
    torch.testing.assert_close(so3_log(so3_exp(rotvec)), rotvec, rtol=0.0, atol=atol)


def test_exp_is_a_rotation():
    rotation = so3_exp(random_rotvecs(100, math.pi, seed=5))
    eye = torch.eye(3, dtype=torch.float64).expand(100, 3, 3)
    torch.testing.assert_close(rotation @ rotation.transpose(1, 2), eye)
    torch.testing.assert_close(torch.linalg.det(rotation), torch.ones(100, dtype=torch.float64))


@pytest.mark.parametrize("angle", [0.0, 1e-9, 1e-5, 3e-3, 0.5, math.pi / 2, 3.0, math.pi - 1e-7, math.pi])
def test_log_of_axis_rotations_is_axis_times_angle(angle):
    for axis in range(3):
        params = torch.zeros(6, dtype=torch.float64)
        params[axis] = angle
        rotation = rigid_matrix(params)[:3, :3]
        rotvec = so3_log(rotation)
        assert rotvec.norm().item() == pytest.approx(angle, abs=1e-12)
        if angle < math.pi - 1e-6:  # at pi the axis sign is arbitrary
            expected = torch.zeros(3, dtype=torch.float64)
            expected[axis] = angle
            torch.testing.assert_close(rotvec, expected, rtol=0.0, atol=1e-12)


def test_exp_matches_rodrigues_closed_form_about_z():
    angle = 0.7
    rotation = so3_exp(torch.tensor([0.0, 0.0, angle], dtype=torch.float64))
    cos, sin = math.cos(angle), math.sin(angle)
    expected = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(rotation, expected)


@pytest.mark.parametrize("angle_deg", [0.0, 0.01, 5.0, 90.0, 179.0, 180.0])
def test_geodesic_equals_rotation_angle_for_axis_rotations(angle_deg):
    for axis in range(3):
        params = torch.zeros(6, dtype=torch.float64)
        params[axis] = math.radians(angle_deg)
        rotation = rigid_matrix(params)[:3, :3]
        distance = rotation_geodesic_deg(torch.eye(3, dtype=torch.float64), rotation)
        assert distance.item() == pytest.approx(angle_deg, abs=1e-9)


def test_geodesic_metric_axioms():
    rotations = so3_exp(random_rotvecs(3 * 500, math.pi, seed=6)).view(3, 500, 3, 3)
    a, b, c = rotations
    ab, ba = rotation_geodesic_deg(a, b), rotation_geodesic_deg(b, a)
    torch.testing.assert_close(ab, ba)
    assert (ab > 0).all()
    assert rotation_geodesic_deg(a, a).abs().max() < 1e-6
    assert (rotation_geodesic_deg(a, c) <= ab + rotation_geodesic_deg(b, c) + 1e-9).all()
    assert (ab <= 180.0 + 1e-9).all()


def test_geodesic_is_left_and_right_invariant():
    a, b, g = so3_exp(random_rotvecs(3 * 50, math.pi, seed=7)).view(3, 50, 3, 3)
    distance = rotation_geodesic_deg(a, b)
    torch.testing.assert_close(rotation_geodesic_deg(g @ a, g @ b), distance)
    torch.testing.assert_close(rotation_geodesic_deg(a @ g, b @ g), distance)


def test_pose_errors_closed_form():
    true = torch.zeros(6, dtype=torch.float64)
    est = torch.tensor([0.0, math.radians(5.0), 0.0, 3.0, 4.0, 0.0], dtype=torch.float64)
    rotation_deg, translation_mm = pose_errors(rigid_matrix(est), rigid_matrix(true))
    assert rotation_deg.item() == pytest.approx(5.0, abs=1e-9)
    assert translation_mm.item() == pytest.approx(5.0, abs=1e-12)


def test_pose_errors_about_a_centre_use_the_parameters_about_it():
    est, true = random_params((2, 10), seed=8)
    _, translation_mm = pose_errors(rigid_matrix(est, CENTRE), rigid_matrix(true, CENTRE), CENTRE)
    torch.testing.assert_close(translation_mm, (est[:, 3:] - true[:, 3:]).norm(dim=-1))


def test_geodesic_direction_closed_form():
    params = torch.zeros(6, dtype=torch.float64)
    target = torch.tensor([0.0, 0.0, 0.3, 0.0, -2.0, 0.0], dtype=torch.float64)
    direction = geodesic_direction(params, target)
    torch.testing.assert_close(direction, torch.tensor([0.0, 0.0, 1.0, 0.0, -1.0, 0.0], dtype=torch.float64))


def test_geodesic_direction_is_zero_at_the_target_and_unit_elsewhere():
    params, target = random_params((2, 32), seed=9)
    direction = geodesic_direction(params, target)
    torch.testing.assert_close(direction[:, :3].norm(dim=-1), torch.ones(32, dtype=torch.float64))
    torch.testing.assert_close(direction[:, 3:].norm(dim=-1), torch.ones(32, dtype=torch.float64))
    assert geodesic_direction(params, params).abs().max() == 0.0


def test_small_step_along_the_direction_approaches_the_target():
    params, target = random_params((2, 32), seed=10)
    params[:, :3] *= 0.5  # keep the Euler chart away from gimbal lock
    target[:, :3] *= 0.5
    direction = geodesic_direction(params, target)
    step = 1e-3
    current = rigid_matrix(params)
    moved_rotation = so3_exp(step * direction[:, :3]) @ current[:, :3, :3]
    before = rotation_geodesic_deg(current[:, :3, :3], rigid_matrix(target)[:, :3, :3])
    after = rotation_geodesic_deg(moved_rotation, rigid_matrix(target)[:, :3, :3])
    torch.testing.assert_close(before - after, torch.full_like(before, math.degrees(step)), rtol=0, atol=1e-6)


def test_gradcheck_exp_log():
    rotvec = random_rotvecs(4, 3.0, seed=11).requires_grad_()
    assert torch.autograd.gradcheck(so3_exp, (rotvec,))
    assert torch.autograd.gradcheck(lambda w: so3_log(so3_exp(w)), (rotvec,))


def test_gradcheck_small_angles_and_geodesic():
    rotvec = (1e-3 * random_rotvecs(4, 1.0, seed=13)).requires_grad_()  # Taylor branch
    assert torch.autograd.gradcheck(so3_exp, (rotvec,))
    a = so3_exp(random_rotvecs(4, 2.0, seed=14)).requires_grad_()
    b = so3_exp(random_rotvecs(4, 2.0, seed=15))
    assert torch.autograd.gradcheck(lambda x: rotation_geodesic_deg(x, b), (a,))
