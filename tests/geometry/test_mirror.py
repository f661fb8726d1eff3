"""The mid-sagittal mirror that registers a left femur as a right one."""

import numpy as np
import pytest
import torch

from biplanar.geometry.mirror import SagittalMirror
from biplanar.geometry.projection import CarmPose, ProjectionView
from biplanar.geometry.volume_grid import VolumeGrid

CENTRE = np.array([4.0, -2.0, 7.0])
SHAPE = (60, 40)


def carm_view(lao_rao: float, cranio_caudal: float = 0.0) -> ProjectionView:
    return ProjectionView.from_carm(CarmPose(lao_rao, cranio_caudal, 925.0, 1000.0, (1.5, 1.5), tuple(CENTRE)), SHAPE)


def test_matrix_is_an_involution_fixing_the_plane():
    mirror = SagittalMirror(CENTRE[0])
    np.testing.assert_allclose(mirror.matrix @ mirror.matrix, np.eye(4))
    np.testing.assert_allclose(mirror.points(np.array([CENTRE[0], 5.0, 6.0])), [CENTRE[0], 5.0, 6.0])
    np.testing.assert_allclose(mirror.points(np.array([CENTRE[0] + 3.0, 5.0, 6.0])), [CENTRE[0] - 3.0, 5.0, 6.0])


@pytest.mark.parametrize("lao_rao, mirrored_lao_rao", [(0.0, 0.0), (90.0, -90.0), (-90.0, 90.0), (20.0, -20.0)])
def test_a_mirrored_carm_view_is_the_mirror_angle_carm_view(lao_rao, mirrored_lao_rao):
    # F P S of a C-arm centred on the mirror plane is the C-arm at the mirrored angle: a proper view.
    mirror = SagittalMirror(CENTRE[0])
    np.testing.assert_allclose(
        mirror.view(carm_view(lao_rao, 10.0)).matrix, carm_view(mirrored_lao_rao, 10.0).matrix, atol=1e-9
    )


def test_mirrored_points_project_onto_flipped_columns():
    mirror = SagittalMirror(CENTRE[0])
    view = carm_view(35.0, -5.0)
    points = np.array([[10.0, 3.0, -20.0], [-25.0, 14.0, 30.0], [0.0, 0.0, 0.0]])
    uv, _ = view.project(torch.as_tensor(points))
    uv_mirrored, _ = mirror.view(view).project(torch.as_tensor(mirror.points(points)))
    np.testing.assert_allclose(uv_mirrored[:, 0].numpy(), SHAPE[1] - 1 - uv[:, 0].numpy(), atol=1e-9)
    np.testing.assert_allclose(uv_mirrored[:, 1].numpy(), uv[:, 1].numpy(), atol=1e-9)
    image = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(mirror.image(image)[:, 0], image[:, 3])


def test_volumes_fields_and_transforms_mirror_consistently():
    grid = VolumeGrid.from_spacing((6, 4, 5), (2.0, 1.0, 1.5))
    mirror = SagittalMirror.of_grid(grid)
    assert mirror.centre_x == pytest.approx(grid.centre_world[0])
    volume = np.arange(6 * 4 * 5, dtype=np.float32).reshape(6, 4, 5)
    # Voxel i of the mirrored volume holds the value at the mirror image of voxel i's centre.
    centres = grid.vox_to_world(torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64)).numpy()
    mirrored_centres = torch.as_tensor(mirror.points(centres))
    source = np.round(grid.world_to_vox(mirrored_centres).numpy()).astype(int)[0]
    assert mirror.volume(volume)[0, 1, 2] == volume[tuple(source)]
    field = np.zeros((6, 4, 5, 1, 3))
    field[..., :] = (3.0, -1.0, 2.0)  # a translation
    np.testing.assert_allclose(mirror.displacement(field)[2, 1, 1, 0], (-3.0, -1.0, 2.0))
    translation = np.eye(4)
    translation[:3, 3] = (3.0, -1.0, 2.0)
    np.testing.assert_allclose(mirror.transform(translation)[:3, 3], (-3.0, -1.0, 2.0))
    np.testing.assert_allclose(mirror.directions(np.array([1.0, 2.0, 3.0])), (-1.0, 2.0, 3.0))


def test_rotated_grids_are_refused():
    rotated = VolumeGrid((4, 4, 4), np.array([[0.0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))
    with pytest.raises(ValueError, match="i axis must run along"):
        SagittalMirror.of_grid(rotated)
