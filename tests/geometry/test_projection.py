"""Projection geometry against the conventions of CONTRACT section 2 and closed forms."""

import json

import numpy as np
import pytest
import torch

from biplanar.data.analytic import ball_volume
from biplanar.errors import InputError
from biplanar.geometry import CarmPose, ProjectionView, VolumeGrid, biplanar_pair
from biplanar.geometry.projection import beam_obliquity_deg
from biplanar.io.geometry_file import parse_geometry, read_geometry, write_geometry
from biplanar.layers.prost import ProST

ISOCENTER = np.array([4.0, -7.0, 12.0])
SHAPE = (224, 160)


def carm_view(lao_rao=0.0, cranio_caudal=0.0, isocenter=ISOCENTER):
    carm = CarmPose(lao_rao, cranio_caudal, 925.0, 1000.0, (0.93, 0.9), tuple(isocenter))
    return ProjectionView.from_carm(carm, SHAPE)


@pytest.mark.parametrize(
    "lao_rao, cranio_caudal, direction",
    [
        (0.0, 0.0, [0, 1, 0]),  # AP: source anterior
        (90.0, 0.0, [-1, 0, 0]),  # LAT: source on the patient's left
        (-90.0, 0.0, [1, 0, 0]),  # source on the patient's right
        (0.0, 90.0, [0, 0, 1]),  # +cranio-caudal moves the source towards superior
    ],
)
def test_source_position_convention(lao_rao, cranio_caudal, direction):
    view = carm_view(lao_rao, cranio_caudal)
    np.testing.assert_allclose(view.source_world, ISOCENTER + 925.0 * np.array(direction), atol=1e-9)


@pytest.mark.parametrize(
    "lao_rao, cranio_caudal, axis, expected",
    [
        (0.0, 0.0, (0, 1, 0), 0.0),  # AP
        (180.0, 0.0, (0, 1, 0), 0.0),  # PA: the same line
        (25.0, 0.0, (0, 1, 0), 25.0),
        (-25.0, 0.0, (0, 3, 0), 25.0),  # any length of the axis
        (0.0, 12.0, (0, 1, 0), 12.0),  # a cranio-caudal tilt counts too
        (90.0, 0.0, (1, 0, 0), 0.0),  # LAT
        (60.0, 0.0, (1, 0, 0), 30.0),
        (90.0, 0.0, (0, 1, 0), 90.0),
    ],
)
def test_beam_obliquity_is_the_angle_between_beam_and_axis_lines(lao_rao, cranio_caudal, axis, expected):
    view = carm_view(lao_rao, cranio_caudal)
    assert beam_obliquity_deg(view, np.array(axis, dtype=float)) == pytest.approx(expected, abs=1e-6)


def test_detector_axes_at_zero_angles():
    """u (columns) points to -x, v (rows) to -z; the isocentre hits the detector centre."""
    view = carm_view()
    points = torch.tensor(ISOCENTER + np.array([[0, 0, 0], [-10, 0, 0], [0, 0, -10]]))
    uv, depth = view.project(points)
    centre = np.array([(SHAPE[1] - 1) / 2, (SHAPE[0] - 1) / 2])
    np.testing.assert_allclose(uv[0].numpy(), centre, atol=1e-9)
    magnification = 1000.0 / 925.0
    np.testing.assert_allclose(uv[1].numpy() - centre, [10 * magnification / 0.9, 0], atol=1e-9)
    np.testing.assert_allclose(uv[2].numpy() - centre, [0, 10 * magnification / 0.93], atol=1e-9)
    np.testing.assert_allclose(depth.numpy(), [925.0] * 3, atol=1e-9)


def test_matrix_view_round_trip_through_source():
    """C-arm -> matrix -> source position; a view rebuilt from the matrix alone agrees."""
    for angle in (0.0, 37.0, 90.0, -20.0):
        carm = carm_view(angle, 11.0)
        from_matrix = ProjectionView(carm.matrix * 3.7, SHAPE)
        np.testing.assert_allclose(from_matrix.source_world, carm.source_world, atol=1e-9)
        np.testing.assert_allclose(from_matrix.matrix, carm.matrix, atol=1e-12)
        d = carm.carm.axes_world()[0]
        np.testing.assert_allclose(from_matrix.principal_direction, -d, atol=1e-12)


def test_pixel_rays_hit_their_pixels():
    view = carm_view(25.0, -8.0)
    rays = view.pixel_rays()
    points = torch.as_tensor(view.source_world) + 931.5 * rays
    uv, depth = view.project(points)
    v, u = torch.meshgrid(torch.arange(SHAPE[0]), torch.arange(SHAPE[1]), indexing="ij")
    np.testing.assert_allclose(uv[..., 0].numpy(), u.numpy(), atol=1e-8)
    np.testing.assert_allclose(uv[..., 1].numpy(), v.numpy(), atol=1e-8)
    np.testing.assert_allclose(depth.numpy(), 931.5, atol=1e-8)


@pytest.mark.parametrize("kind", ["carm", "matrix"])
@pytest.mark.parametrize("angle", [0.0, 90.0, 30.0])
def test_small_ball_projects_where_the_matrix_says(kind, angle):
    """A 2 mm ball's DRR centroid lies within 0.5 px of P applied to its centre."""
    grid = VolumeGrid.from_spacing((64, 64, 64), (0.8, 0.8, 0.8), centre_world=ISOCENTER)
    ball_centre = ISOCENTER + np.array([9.0, -6.0, 14.0])
    volume = ball_volume(grid, ball_centre, 2.0).float()[None, None]
    view = carm_view(angle, 0.0)
    if kind == "matrix":
        view = ProjectionView(view.matrix, SHAPE)
    image = ProST(view, grid, 128)(volume)[0, 0].double()
    v, u = torch.meshgrid(torch.arange(SHAPE[0]), torch.arange(SHAPE[1]), indexing="ij")
    centroid = torch.stack([(image * u).sum(), (image * v).sum()]) / image.sum()
    expected, _ = view.project(torch.tensor(ball_centre))
    assert torch.linalg.norm(centroid - expected) < 0.5


def geometry_document(**overrides):
    view = carm_view()
    spec = {"image_shape": list(SHAPE), "projection_matrix": view.matrix.tolist()}
    spec.update(overrides)
    return {"views": {"AP": spec}}


def test_geometry_file_round_trip(tmp_path):
    views = biplanar_pair(5.0, 80.0, isocenter_mm=ISOCENTER)
    write_geometry(tmp_path / "g.json", views)
    read = read_geometry(tmp_path / "g.json")
    for name in ("AP", "LAT"):
        np.testing.assert_allclose(read[name].matrix, views[name].matrix, atol=1e-12)
        assert read[name].image_shape == SHAPE


def test_carm_without_isocenter_uses_the_default(tmp_path):
    document = {"views": {"AP": {"image_shape": list(SHAPE), "carm": {"lao_rao_deg": 0.0}}}}
    views = parse_geometry(document, "g.json", default_isocenter_mm=ISOCENTER)
    np.testing.assert_allclose(views["AP"].source_world, ISOCENTER + [0, 925, 0], atol=1e-9)
    with pytest.raises(InputError, match="isocenter"):
        parse_geometry(document, "g.json")


def test_matrix_and_carm_must_agree():
    carm = {
        "lao_rao_deg": 0.0,
        "source_isocenter_mm": 925.0,
        "source_detector_mm": 1000.0,
        "pixel_spacing_mm": [0.93, 0.9],
        "isocenter_mm": ISOCENTER.tolist(),
    }
    parse_geometry(geometry_document(carm=carm), "g.json")  # agrees: no error
    carm["lao_rao_deg"] = 0.01
    with pytest.raises(InputError, match="disagree"):
        parse_geometry(geometry_document(carm=carm), "g.json")


@pytest.mark.parametrize(
    "document, message",
    [
        ({"views": {}}, "no view"),
        ([], "'views'"),
        (geometry_document(projection_matrix=[[1, 0, 0], [0, 1, 0], [0, 0, 1]]), "projection_matrix"),
        (geometry_document(image_shape=[224]), "image_shape"),
        (geometry_document(image_shape=[0, 10]), "image_shape"),
        ({"views": {"AP": {"image_shape": [2, 2]}}}, "needs 'projection_matrix' or 'carm'"),
        (geometry_document(carm={"lao_rao_deg": "x"}), "carm.lao_rao_deg"),
        (geometry_document(carm={"tilt": 1}), "unknown field"),
        (geometry_document(projection_matrix=[[0] * 4] * 3), "singular"),
    ],
)
def test_bad_geometry_names_the_field(document, message):
    with pytest.raises(InputError, match=message) as error:
        parse_geometry(document, "g.json", default_isocenter_mm=ISOCENTER)
    assert str(error.value).startswith("g.json")


def test_unreadable_geometry_file(tmp_path):
    path = tmp_path / "g.json"
    with pytest.raises(InputError, match="not found"):
        read_geometry(path)
    path.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_geometry(path)
    path.write_text(json.dumps({"views": {"AP": {}}}))
    with pytest.raises(InputError, match="image_shape"):
        read_geometry(path)
