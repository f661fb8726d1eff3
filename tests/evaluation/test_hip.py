"""Hip measurements and landmarks carried through pull displacements, against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from biplanar.data.atlas import load_atlas
from biplanar.data.phantom import SubjectSpec, landmarks_world
from biplanar.evaluation.hip import (
    carry_landmarks,
    fibonacci_sphere,
    hip_errors,
    hip_measurements,
    invert_points,
    subject_hip_truth,
    version_deg,
    with_condylar_axis,
)
from biplanar.layers.warp import affine_displacement

ANGLES = ("neck_shaft_angle_deg", "anteversion_deg")


@pytest.fixture(scope="module")
def atlas():
    atlas = load_atlas("tiny")
    return atlas, with_condylar_axis(atlas.landmarks)


def _rotation(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """Rodrigues: the rotation by ``angle_rad`` about the unit ``axis`` (right hand)."""
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle_rad) * k + (1 - math.cos(angle_rad)) * k @ k


def _pull_field(matrix: np.ndarray, grid) -> torch.Tensor:
    """``(1, 3, I, J, K)`` float64 displacement of the pull matrix ``(4, 4)``: u(p) = T p - p."""
    return affine_displacement(torch.tensor(matrix, dtype=torch.float64)[None], grid)


def _about(point: np.ndarray, linear: np.ndarray, translation: np.ndarray | None = None) -> np.ndarray:
    """``(4, 4)`` for x' = point + linear (x - point) + translation (default: none)."""
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = point + (np.zeros(3) if translation is None else translation) - linear @ point
    return matrix


def _assert_same(measured: dict, expected: dict, atol: float = 1e-6) -> None:
    assert set(measured) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(measured[key], value, atol=atol, err_msg=key)


def test_the_atlas_measures_the_mean_femur(atlas):
    _, landmarks = atlas
    measured = hip_measurements(landmarks)
    assert measured["head_diameter_mm"] == pytest.approx(47.0)
    assert measured["neck_shaft_angle_deg"] == pytest.approx(128.0)
    assert measured["femoral_offset_mm"] == pytest.approx(41.0)
    assert measured["anteversion_deg"] == pytest.approx(12.0)


def test_identity_displacement_returns_the_atlas_values(atlas):
    atlas, landmarks = atlas
    carried = carry_landmarks(landmarks, torch.zeros(1, 3, *atlas.grid.shape), atlas.grid)
    assert carried["carry_residual_mm"] == 0.0
    _assert_same(hip_measurements(carried), hip_measurements(landmarks))
    for key in ("greater_trochanter_tip_mm", "lesser_trochanter_tip_mm", "shaft_axis_point_mm", "condylar_axis"):
        np.testing.assert_allclose(carried[key], landmarks[key], atol=1e-9)


def test_a_constant_displacement_moves_the_landmarks_by_minus_it(atlas):
    """u = c everywhere: warped(p) = atlas(p + c), so the atlas point L shows at p = L - c."""
    atlas, landmarks = atlas
    shift = np.array([4.0, -2.5, 3.0])
    field = torch.tensor(shift).view(1, 3, 1, 1, 1).expand(1, 3, *atlas.grid.shape)
    carried = carry_landmarks(landmarks, field.numpy()[0], atlas.grid)  # numpy (3, I, J, K) accepted
    expected = hip_measurements(landmarks)
    expected["head_centre_mm"] = np.asarray(landmarks["head_centre_mm"]) - shift
    _assert_same(hip_measurements(carried), expected)
    np.testing.assert_allclose(
        carried["greater_trochanter_tip_mm"], np.asarray(landmarks["greater_trochanter_tip_mm"]) - shift, atol=1e-9
    )


def test_a_pull_scale_shrinks_the_femur_by_its_inverse(atlas):
    """The pull x' = c + s (x - c) shows the atlas smaller by 1/s about c: lengths / s, angles kept."""
    atlas, landmarks = atlas
    scale, centre = 1.12, np.asarray(landmarks["head_centre_mm"])
    carried = carry_landmarks(landmarks, _pull_field(_about(centre, scale * np.eye(3)), atlas.grid), atlas.grid)
    measured, original = hip_measurements(carried), hip_measurements(landmarks)
    # The fixed point stops within 1e-4 mm.
    assert measured["head_diameter_mm"] == pytest.approx(original["head_diameter_mm"] / scale, abs=1e-4)
    assert measured["femoral_offset_mm"] == pytest.approx(original["femoral_offset_mm"] / scale, abs=1e-4)
    for key in ANGLES:
        assert measured[key] == pytest.approx(original[key], abs=1e-4)
    np.testing.assert_allclose(measured["head_centre_mm"], centre, atol=1e-4)


def test_a_rigid_pull_moves_points_by_its_inverse_and_keeps_the_shape(atlas):
    atlas, landmarks = atlas
    rotation = _rotation(np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8]), math.radians(12.0))
    matrix = _about(atlas.grid.centre_world, rotation, np.array([3.0, 1.0, -2.0]))
    carried = carry_landmarks(landmarks, _pull_field(matrix, atlas.grid), atlas.grid)
    assert carried["carry_residual_mm"] < 1e-3
    inverse = np.linalg.inv(matrix)
    for key in ("head_centre_mm", "greater_trochanter_tip_mm", "lesser_trochanter_tip_mm"):
        np.testing.assert_allclose(carried[key], inverse[:3, :3] @ landmarks[key] + inverse[:3, 3], atol=1e-4)
    np.testing.assert_allclose(carried["neck_axis"], rotation.T @ landmarks["neck_axis"], atol=1e-6)
    np.testing.assert_allclose(carried["condylar_axis"], landmarks["condylar_axis"])  # the neutral leg's
    measured, original = hip_measurements(carried), hip_measurements(landmarks)
    for key in ("head_diameter_mm", "femoral_offset_mm", "neck_shaft_angle_deg"):
        assert measured[key] == pytest.approx(original[key], abs=1e-4)


@pytest.mark.parametrize("angle_deg", [-10.0, 4.0, 15.0])
def test_a_leg_turned_about_its_shaft_reads_its_turn_as_anteversion(atlas, angle_deg):
    """The pull turning the femur about its shaft axis (positive: medial towards anterior, an internal
    turn of the leg) shows the neck turned by the angle while the reference stays the patient's:
    anteversion + angle, the shape unchanged (module doc: the leg's rotation is not observable)."""
    atlas, landmarks = atlas
    shaft, point = np.asarray(landmarks["shaft_axis"]), np.asarray(landmarks["shaft_axis_point_mm"])
    turn = _rotation(shaft, math.radians(-angle_deg))  # anterior = medial x shaft
    carried = carry_landmarks(landmarks, _pull_field(_about(point, turn.T), atlas.grid), atlas.grid)
    np.testing.assert_allclose(carried["neck_axis"], turn @ landmarks["neck_axis"], atol=1e-5)
    measured, original = hip_measurements(carried), hip_measurements(landmarks)
    assert measured["anteversion_deg"] == pytest.approx(original["anteversion_deg"] + angle_deg, abs=1e-3)
    for key in ("head_diameter_mm", "femoral_offset_mm", "neck_shaft_angle_deg"):
        assert measured[key] == pytest.approx(original[key], abs=1e-4)


def _cylinder(point: np.ndarray, axis: np.ndarray, radius_mm: float, depths_mm: np.ndarray) -> np.ndarray:
    """``(N, 3)`` points of the cylinder of ``radius_mm`` around the line ``point + t axis`` (unit
    ``axis``), in rings at ``point - depth * axis`` for each depth (mm)."""
    across = np.linalg.svd(axis[None])[2][1:]  # (2, 3) unit vectors perpendicular to the axis
    angles = np.linspace(0.0, 2 * math.pi, 72, endpoint=False)
    ring = radius_mm * (np.cos(angles)[:, None] * across[0] + np.sin(angles)[:, None] * across[1])
    return (point - depths_mm[:, None, None] * axis + ring[None]).reshape(-1, 3)


def _shaft_axis_below_lt(landmarks: dict, tilt_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """A diaphysis axis ``((3,) point, (3,) unit direction)``: the landmarks' shaft axis turned by
    ``tilt_deg`` about the anterior direction through its point 60 mm below the lesser trochanter."""
    shaft, point = np.asarray(landmarks["shaft_axis"]), np.asarray(landmarks["shaft_axis_point_mm"])
    below = point - ((point - np.asarray(landmarks["lesser_trochanter_tip_mm"])) @ shaft + 60.0) * shaft
    anterior = np.cross(shaft, np.asarray(landmarks["condylar_axis"]))
    return below, _rotation(anterior / np.linalg.norm(anterior), math.radians(tilt_deg)) @ shaft


def _femur_surface(landmarks: dict, shaft_tilt_deg: float = 0.0, parts: str = "head neck shaft") -> np.ndarray:
    """``(N, 3)`` world mm: points of an analytic femur's surface, the head sphere, a cylindrical neck
    of radius 15 mm around the landmarks' neck axis and a diaphysis of radius 14 mm around
    :func:`_shaft_axis_below_lt` (each in ``parts``)."""
    centre, neck, radius = np.asarray(landmarks["head_centre_mm"]), np.asarray(landmarks["neck_axis"]), 23.5
    pieces = []
    if "head" in parts:
        pieces.append(centre + radius * fibonacci_sphere(400))
    if "neck" in parts:
        cylinder = _cylinder(centre, neck, 15.0, np.linspace(0.0, 45.0, 91))
        pieces.append(cylinder[np.linalg.norm(cylinder - centre, axis=1) > radius])
    if "shaft" in parts:
        point, shaft = _shaft_axis_below_lt(landmarks, shaft_tilt_deg)
        pieces.append(_cylinder(point, shaft, 14.0, np.linspace(-39.75, 39.75, 160)))  # no ring on a slab edge
    return np.concatenate(pieces)


def test_the_surface_neck_and_shaft_axes_are_the_cylinders_axes_and_turn_with_a_rigid_pull(atlas):
    """With the atlas surface given, the neck and shaft axes are measured on the carried surface (the
    shape model's definitions): the cylinders' own axes, rotated by a rigid pull's inverse rotation."""
    atlas, landmarks = atlas
    surface = _femur_surface(landmarks, shaft_tilt_deg=4.0)
    _, tilted_shaft = _shaft_axis_below_lt(landmarks, 4.0)
    carried = carry_landmarks(landmarks, torch.zeros(1, 3, *atlas.grid.shape), atlas.grid, surface)
    np.testing.assert_allclose(carried["neck_axis"], landmarks["neck_axis"], atol=1e-9)
    # To 0.2 deg: the slabs, cut perpendicular to the atlas's axis, hold part rings of the tilted cylinder.
    np.testing.assert_allclose(carried["shaft_axis"], tilted_shaft, atol=3e-3)
    measured_shaft = np.asarray(carried["shaft_axis"])
    rotation = _rotation(np.array([0.2, 0.9, -0.4]) / np.linalg.norm([0.2, 0.9, -0.4]), math.radians(10.0))
    matrix = _about(atlas.grid.centre_world, rotation, np.array([-2.0, 3.0, 1.0]))
    carried = carry_landmarks(landmarks, _pull_field(matrix, atlas.grid), atlas.grid, surface)
    np.testing.assert_allclose(carried["neck_axis"], rotation.T @ landmarks["neck_axis"], atol=1e-5)
    np.testing.assert_allclose(carried["shaft_axis"], rotation.T @ measured_shaft, atol=1e-5)


def test_the_shaft_tilt_changes_the_neck_shaft_angle_by_the_tilt(atlas):
    """A diaphysis turned by ``t`` about the anterior axis (in the neck's plane, nearly): the
    neck-shaft angle measured on the surface changes by ``t``."""
    atlas, landmarks = atlas
    zero = torch.zeros(1, 3, *atlas.grid.shape)
    angles = [
        hip_measurements(carry_landmarks(landmarks, zero, atlas.grid, _femur_surface(landmarks, tilt)))[
            "neck_shaft_angle_deg"
        ]
        for tilt in (0.0, 3.0)
    ]
    assert angles[0] == pytest.approx(hip_measurements(landmarks)["neck_shaft_angle_deg"], abs=1e-6)
    assert abs(angles[1] - angles[0]) == pytest.approx(3.0, abs=0.3)


def test_a_surface_without_a_neck_is_refused_and_one_without_the_shaft_band_keeps_the_carried_axis(atlas):
    atlas, landmarks = atlas
    zero = torch.zeros(1, 3, *atlas.grid.shape)
    with pytest.raises(ValueError, match="no surface vertex 3-10 mm beyond the head sphere"):
        carry_landmarks(landmarks, zero, atlas.grid, _femur_surface(landmarks, parts="head shaft"))
    short = carry_landmarks(landmarks, zero, atlas.grid, _femur_surface(landmarks, parts="head neck"))
    np.testing.assert_allclose(short["shaft_axis"], landmarks["shaft_axis"], atol=1e-9)


def test_with_the_faces_the_neck_is_the_carried_surfaces_centroid_not_its_vertices_mean(atlas, crowded_neck_tube):
    """The atlas's neck as a tube meshed with crowded vertices on one side: with its faces, the
    measured neck axis is the tube's (the landmarks' neck axis); from the vertices alone it leans."""
    atlas, landmarks = atlas
    neck = np.asarray(landmarks["neck_axis"])
    basis = np.linalg.svd(neck[None])[2]  # rows: the neck axis (up to sign), then two perpendiculars
    basis[0] = neck
    tube, faces = crowded_neck_tube
    vertices = np.asarray(landmarks["head_centre_mm"]) + tube @ basis  # the tube's +x is the neck axis
    zero = torch.zeros(1, 3, *atlas.grid.shape)

    def tilt_deg(carried: dict) -> float:
        return math.degrees(math.acos(min(1.0, float(np.asarray(carried["neck_axis"]) @ neck))))

    assert tilt_deg(carry_landmarks(landmarks, zero, atlas.grid, vertices)) > 5.0
    assert tilt_deg(carry_landmarks(landmarks, zero, atlas.grid, vertices, faces)) < 0.1


def test_with_the_faces_the_shaft_is_the_carried_surfaces_slab_centroids(atlas, crowded_neck_tube, make_crowded_tube):
    """The atlas's diaphysis as a tube around its shaft axis meshed with crowded vertices, the crowd
    turning along it by 180 deg (so the vertex means of the slabs lean differently): with the faces
    the measured shaft axis is the tube's; from the vertices alone it tilts."""
    atlas, landmarks = atlas
    shaft, point = np.asarray(landmarks["shaft_axis"]), np.asarray(landmarks["shaft_axis_point_mm"])
    lt_depth = (point - np.asarray(landmarks["lesser_trochanter_tip_mm"])) @ shaft
    shaft_tube, shaft_faces = make_crowded_tube(lt_depth + np.linspace(25.0, 95.0, 141), math.pi)
    neck_tube, neck_faces = crowded_neck_tube

    def placed(tube: np.ndarray, origin: np.ndarray, axis: np.ndarray) -> np.ndarray:
        basis = np.linalg.svd(axis[None])[2]
        basis[0] = axis
        return origin + tube @ basis  # the tube's +x along the axis

    vertices = np.concatenate(
        [
            placed(neck_tube, np.asarray(landmarks["head_centre_mm"]), np.asarray(landmarks["neck_axis"])),
            placed(shaft_tube, point, shaft),
        ]
    )
    faces = np.concatenate([neck_faces, shaft_faces + len(neck_tube)])
    zero = torch.zeros(1, 3, *atlas.grid.shape)

    def tilt_deg(carried: dict) -> float:
        return math.degrees(math.acos(min(1.0, float(np.asarray(carried["shaft_axis"]) @ shaft))))

    assert tilt_deg(carry_landmarks(landmarks, zero, atlas.grid, vertices)) > 5.0
    assert tilt_deg(carry_landmarks(landmarks, zero, atlas.grid, vertices, faces)) < 0.2  # twisted triangles


@pytest.mark.parametrize("angle_deg", [-15.0, 7.0, 20.0])
def test_turning_the_neck_about_the_shaft_changes_anteversion_by_the_angle(atlas, angle_deg):
    """Head centre and neck axis rotated about the shaft axis (positive: medial towards anterior)
    with the condylar reference fixed: anteversion + angle, everything else unchanged."""
    _, landmarks = atlas
    shaft, point = np.asarray(landmarks["shaft_axis"]), np.asarray(landmarks["shaft_axis_point_mm"])
    rotation = _rotation(shaft / np.linalg.norm(shaft), math.radians(-angle_deg))  # anterior = medial x shaft
    turned = {
        **landmarks,
        "neck_axis": rotation @ landmarks["neck_axis"],
        "head_centre_mm": point + rotation @ (np.asarray(landmarks["head_centre_mm"]) - point),
    }
    measured, original = hip_measurements(turned), hip_measurements(landmarks)
    assert measured["anteversion_deg"] == pytest.approx(original["anteversion_deg"] + angle_deg, abs=1e-9)
    for key in ("head_diameter_mm", "femoral_offset_mm", "neck_shaft_angle_deg"):
        assert measured[key] == pytest.approx(original[key], abs=1e-9)


@pytest.mark.parametrize("angle_deg", [-30.0, 0.0, 12.0, 95.0])
def test_version_is_the_angle_from_medial_towards_anterior_about_the_shaft(angle_deg):
    """Shaft +z, condylar axis +x tilted along the shaft (the tilt is projected out): a neck
    ``cos(a) * medial + sin(a) * anterior`` raised out of the plane reads ``a``."""
    shaft, medial, anterior = np.array([0.0, 0.0, 1.0]), np.array([-1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    angle = math.radians(angle_deg)
    neck = math.cos(angle) * medial + math.sin(angle) * anterior + 0.6 * shaft
    assert np.allclose(np.cross(medial, shaft), anterior)
    measured = version_deg(neck / np.linalg.norm(neck), shaft, np.array([1.0, 0.0, 0.3]) / math.hypot(1.0, 0.3))
    assert measured == pytest.approx(angle_deg, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_phantom_truth_landmarks_measure_the_generator_parameters(seed):
    spec = SubjectSpec.sample(seed)
    document = {
        "parameters": {"femur": spec.femur.to_dict()},
        "pose": spec.pose.to_dict(),
        "landmarks": landmarks_world(spec).to_dict(),
    }
    measured = hip_measurements(with_condylar_axis(document["landmarks"], document["pose"]))
    _assert_same(measured, subject_hip_truth(document), atol=1e-9)
    errors = hip_errors(measured, document)
    assert all(abs(value) < 1e-9 for value in errors.values())


def test_hip_errors_are_signed_differences_and_a_distance():
    truth = {
        "head_centre_mm": [0.0, 0.0, 0.0],
        "head_diameter_mm": 46.0,
        "neck_shaft_angle_deg": 130.0,
        "femoral_offset_mm": 40.0,
        "anteversion_deg": 10.0,
    }
    measured = {
        "head_centre_mm": [3.0, 4.0, 0.0],
        "head_diameter_mm": 45.0,
        "neck_shaft_angle_deg": 132.5,
        "femoral_offset_mm": 41.0,
        "anteversion_deg": 4.0,
    }
    assert hip_errors(measured, truth) == {
        "head_centre_error_mm": 5.0,
        "head_diameter_error_mm": -1.0,
        "neck_shaft_angle_error_deg": 2.5,
        "femoral_offset_error_mm": 1.0,
        "anteversion_error_deg": -6.0,
    }
    with pytest.raises(ValueError, match="anteversion_deg"):
        hip_errors({key: value for key, value in measured.items() if key != "anteversion_deg"}, truth)


def test_fixed_point_inverts_a_smooth_deformation(atlas):
    atlas, _ = atlas
    points = atlas.grid.voxel_centres_world(torch.float64)
    # A smooth non-affine field: 3 mm sine waves, Jacobian norm well below 1.
    field = (
        3.0
        * torch.stack(
            [torch.sin(points[..., 1] / 15.0), torch.cos(points[..., 2] / 20.0), torch.sin(points[..., 0] / 25.0)],
            dim=0,
        )[None]
    )
    targets = np.array([[-10.0, 5.0, 40.0], [20.0, -10.0, -30.0], [0.0, 0.0, 0.0]])
    found, residual = invert_points(field, atlas.grid, targets)
    assert residual < 1e-3
    exact = found + 3.0 * np.stack(
        [np.sin(found[:, 1] / 15.0), np.cos(found[:, 2] / 20.0), np.sin(found[:, 0] / 25.0)], axis=1
    )
    np.testing.assert_allclose(exact, targets, atol=0.05)  # trilinear vs exact sine between voxel centres


STEEP_LINEAR_MAPS = {
    # p -> p + A (p - c), invertible, with |A| > 1: the fixed-point iteration alone diverges.
    "stretch along z by 2.85": np.diag([0.0, 0.0, 1.85]),
    "rotation by 90 deg about z": np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) - np.eye(3),
}


@pytest.mark.parametrize("name", sorted(STEEP_LINEAR_MAPS))
def test_steep_invertible_fields_are_inverted_exactly(atlas, name):
    """Where ``u``'s Jacobian has norm above 1 (here a linear field, which trilinear interpolation
    reproduces exactly), the Newton steps find the closed-form inverse ``c + (I + A)^-1 (L - c)``."""
    atlas, _ = atlas
    gradient = STEEP_LINEAR_MAPS[name]
    centre = np.asarray(atlas.grid.centre_world)
    points = atlas.grid.voxel_centres_world(torch.float64).numpy()
    field = torch.as_tensor(np.moveaxis((points - centre) @ gradient.T, -1, 0)[None])
    targets = centre + np.array([[4.0, -3.0, 10.0], [-6.0, 2.0, -8.0], [0.0, 0.0, 0.0], [1.5, 7.0, 3.0]])
    found, residual = invert_points(field, atlas.grid, targets)
    assert residual < 1e-4
    exact = centre + (targets - centre) @ np.linalg.inv(np.eye(3) + gradient).T
    np.testing.assert_allclose(found, exact, atol=1e-4)


def test_bad_landmarks_and_fields_are_refused(atlas):
    atlas, landmarks = atlas
    with pytest.raises(ValueError, match="condylar_axis"):
        hip_measurements(atlas.landmarks)  # the shipped file has no condylar axis: with_condylar_axis adds it
    with pytest.raises(ValueError, match="neck_axis"):
        hip_measurements({**landmarks, "neck_axis": [1.0, float("nan"), 0.0]})
    with pytest.raises(ValueError, match="displacement_mm"):
        carry_landmarks(landmarks, torch.zeros(1, 3, 4, 4, 4), atlas.grid)
