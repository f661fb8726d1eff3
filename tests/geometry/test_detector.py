"""Any detector onto the model's: the projection matrix follows the resampling exactly."""

import numpy as np
import pytest
import torch

from biplanar.data.phantom import make_subject
from biplanar.geometry.detector import DetectorResampling, focal_lengths_px
from biplanar.geometry.presets import biplanar_pair
from biplanar.geometry.projection import CarmPose, ProjectionView
from biplanar.layers.prost import ProST
from biplanar.physics import hu_to_mu

MODEL_SHAPE = (112, 80)  # the bundled lite model's detector
MODEL_SPACING_MM = 1.86
SOURCE_DETECTOR_MM = 1000.0
SOURCE_ISOCENTER_MM = 925.0
MODEL_FOCAL_PX = SOURCE_DETECTOR_MM / MODEL_SPACING_MM
MODEL_ISOCENTER_PIXEL_MM = SOURCE_ISOCENTER_MM / MODEL_FOCAL_PX  # 1.72 mm


def test_focal_lengths_of_a_carm():
    carm = CarmPose(30.0, 10.0, 925.0, SOURCE_DETECTOR_MM, (0.5, 0.8), (5.0, -3.0, 2.0))
    view = ProjectionView.from_carm(carm, (300, 200))
    assert focal_lengths_px(view) == pytest.approx((SOURCE_DETECTOR_MM / 0.8, SOURCE_DETECTOR_MM / 0.5))


@pytest.mark.parametrize("lao_rao", [0.0, 100.0])
def test_resampled_view_equals_the_model_detector_view(lao_rao):
    centre = np.array([3.0, 4.0, -5.0])
    user = ProjectionView.from_carm(CarmPose(lao_rao, 0.0, 925.0, 1000.0, (0.6, 0.6), tuple(centre)), (448, 320))
    model = ProjectionView.from_carm(
        CarmPose(lao_rao, 0.0, 925.0, 1000.0, (MODEL_SPACING_MM,) * 2, tuple(centre)), MODEL_SHAPE
    )
    resampling = DetectorResampling.onto_model(user, MODEL_SHAPE, MODEL_ISOCENTER_PIXEL_MM, centre)
    np.testing.assert_allclose(resampling.view(user).matrix, model.matrix, atol=1e-9)
    assert resampling.scale == pytest.approx((MODEL_SPACING_MM / 0.6,) * 2)


def test_an_off_centre_isocentre_lands_on_the_model_detector_centre():
    # The user's C-arm is centred elsewhere (its detector is off our isocentre): the resampled view
    # keeps the source, takes the model's pixel size at our isocentre's depth and puts the isocentre
    # at the detector centre.
    centre = np.array([12.0, -7.0, 30.0])
    user = ProjectionView.from_carm(CarmPose(100.0, 5.0, 925.0, 1000.0, (0.5, 0.7), (0.0, 0.0, 0.0)), (448, 320))
    resampled = DetectorResampling.onto_model(user, MODEL_SHAPE, MODEL_ISOCENTER_PIXEL_MM, centre).view(user)
    np.testing.assert_allclose(resampled.source_world, user.source_world, atol=1e-9)
    depth = float(user.principal_direction @ (centre - user.source_world))
    assert focal_lengths_px(resampled) == pytest.approx((depth / MODEL_ISOCENTER_PIXEL_MM,) * 2)
    uv, _ = resampled.project(torch.as_tensor(centre)[None])
    np.testing.assert_allclose(uv[0].numpy(), [(MODEL_SHAPE[1] - 1) / 2, (MODEL_SHAPE[0] - 1) / 2], atol=1e-9)


@pytest.mark.parametrize("source_detector, source_isocenter", [(1200.0, 1000.0), (1000.0, 800.0), (1800.0, 1650.0)])
def test_other_distances_resample_to_the_models_pixel_at_the_isocentre(source_detector, source_isocenter):
    # Two points 30 mm apart in the isocentre's plane, across the central ray, land as many model
    # pixels apart as at the training distances: 30 / 1.72 mm, whatever the user's distances.
    centre = np.array([3.0, 4.0, -5.0])
    carm = CarmPose(90.0, 0.0, source_isocenter, source_detector, (0.6, 0.6), tuple(centre))
    user = ProjectionView.from_carm(carm, (448, 320))
    resampled = DetectorResampling.onto_model(user, MODEL_SHAPE, MODEL_ISOCENTER_PIXEL_MM, centre).view(user)
    uv, _ = resampled.project(torch.as_tensor(np.stack([centre, centre + [0.0, 0.0, 30.0]])))
    assert float(torch.linalg.norm(uv[1] - uv[0])) == pytest.approx(30.0 / MODEL_ISOCENTER_PIXEL_MM, rel=1e-9)
    np.testing.assert_allclose(uv[0].numpy(), [(MODEL_SHAPE[1] - 1) / 2, (MODEL_SHAPE[0] - 1) / 2], atol=1e-9)


def test_pixel_map_round_trip():
    user = ProjectionView.from_carm(CarmPose(0.0, 0.0, 925.0, 1000.0, (0.4, 0.7), (0.0, 0.0, 0.0)), (500, 300))
    resampling = DetectorResampling.onto_model(
        user, MODEL_SHAPE, MODEL_ISOCENTER_PIXEL_MM, np.array([10.0, 0.0, -20.0])
    )
    model_view = resampling.view(user)
    points = torch.tensor([[0.0, 0.0, 0.0], [25.0, -10.0, 40.0], [-30.0, 5.0, -60.0]], dtype=torch.float64)
    uv_user, _ = user.project(points)
    uv_model, _ = model_view.project(points)
    np.testing.assert_allclose(resampling.to_user_px(uv_model.numpy()), uv_user.numpy(), atol=1e-9)


def test_isocentre_behind_the_source_is_refused():
    user = ProjectionView.from_carm(CarmPose(0.0, 0.0, 925.0, 1000.0, (0.6, 0.6), (0.0, 0.0, 0.0)), (448, 320))
    with pytest.raises(ValueError, match="behind the X-ray source"):
        DetectorResampling.onto_model(user, MODEL_SHAPE, MODEL_ISOCENTER_PIXEL_MM, np.array([0.0, 2000.0, 0.0]))
    with pytest.raises(ValueError, match="image: expected shape"):
        DetectorResampling.onto_model(user, MODEL_SHAPE, MODEL_ISOCENTER_PIXEL_MM, np.zeros(3)).image(
            np.zeros((10, 10))
        )


@pytest.fixture(scope="module")
def phantom():
    subject = make_subject(11, "lite")
    return hu_to_mu(torch.as_tensor(subject.ct_hu)).float()[None, None], subject.grid


@pytest.mark.parametrize("view_name", ["AP", "LAT"])
def test_drr_on_a_large_fine_detector_resamples_to_the_model_drr(phantom, view_name):
    # The check: a DRR on 448 x 320 at 0.6 mm, resampled, against the DRR rendered directly
    # on the model's 112 x 80 at 1.86 mm: < 1 % relative error (L2). The remainder is the area
    # average of the resampling against the model DRR's point samples at pixel centres.
    volume, grid = phantom
    user = biplanar_pair(0.0, 90.0, (448, 320), (0.6, 0.6), grid.centre_world)[view_name]
    model = biplanar_pair(0.0, 90.0, MODEL_SHAPE, (MODEL_SPACING_MM,) * 2, grid.centre_world)[view_name]
    resampling = DetectorResampling.onto_model(user, MODEL_SHAPE, MODEL_ISOCENTER_PIXEL_MM, grid.centre_world)
    np.testing.assert_allclose(resampling.view(user).matrix, model.matrix, atol=1e-9)
    with torch.no_grad():
        user_drr = ProST(user, grid, 256)(volume)[0, 0].numpy()
        model_drr = ProST(model, grid, 256)(volume)[0, 0].numpy()
    resampled = resampling.image(user_drr)
    assert resampled.shape == MODEL_SHAPE
    assert np.linalg.norm(resampled - model_drr) / np.linalg.norm(model_drr) < 0.01


def test_a_smaller_field_is_filled_outside():
    user = ProjectionView.from_carm(CarmPose(0.0, 0.0, 925.0, 1000.0, (0.6, 0.6), (0.0, 0.0, 0.0)), (100, 80))
    resampling = DetectorResampling.onto_model(user, MODEL_SHAPE, MODEL_ISOCENTER_PIXEL_MM, np.zeros(3))
    resampled = resampling.image(np.ones((100, 80), dtype=np.float32), fill_value=0.0)
    covered = resampled > 0
    # 100 x 80 pixels of 0.6 mm cover about 32 x 26 model pixels of 1.86 mm, in the middle.
    assert 30 <= covered.sum(axis=0).max() <= 33 and 24 <= covered.sum(axis=1).max() <= 27
    assert covered[MODEL_SHAPE[0] // 2, MODEL_SHAPE[1] // 2] and not covered[0, 0]
    np.testing.assert_allclose(resampled[covered], 1.0)
