"""Which side of the patient a view's source is on, against the side the network learnt."""

import numpy as np
import pytest

from biplanar.geometry.facing import source_reversed
from biplanar.geometry.mirror import SagittalMirror
from biplanar.geometry.projection import CarmPose, ProjectionView

CENTRE = np.array([4.0, -2.0, 7.0])


def carm_view(lao_rao: float, cranio_caudal: float = 0.0) -> ProjectionView:
    return ProjectionView.from_carm(
        CarmPose(lao_rao, cranio_caudal, 925.0, 1000.0, (1.5, 1.5), tuple(CENTRE)), (60, 40)
    )


@pytest.mark.parametrize(
    "view_name, lao_rao, cranio_caudal, reversed_source",
    [
        ("AP", 0.0, 0.0, False),
        ("AP", -30.0, 15.0, False),  # the generalized range the network learnt
        ("AP", 180.0, 0.0, True),  # a PA
        ("AP", 120.0, 0.0, True),
        ("LAT", 90.0, 0.0, False),  # the source on the patient's left: a right femur's medial side
        ("LAT", 60.0, -10.0, False),
        ("LAT", -90.0, 0.0, True),  # View Position LL: the source on the patient's right
        ("LAT", -120.0, 0.0, True),
    ],
)
def test_the_source_side_is_read_from_the_projection_matrix(view_name, lao_rao, cranio_caudal, reversed_source):
    assert source_reversed(carm_view(lao_rao, cranio_caudal), CENTRE, view_name) is reversed_source


def test_a_left_hips_lateral_is_reversed_once_mirrored_exactly_when_its_source_is_lateral():
    mirror = SagittalMirror(CENTRE[0])
    assert not source_reversed(mirror.view(carm_view(-90.0)), CENTRE, "LAT")  # left hip, LL: medial source
    assert source_reversed(mirror.view(carm_view(90.0)), CENTRE, "LAT")  # left hip, RL: lateral source
