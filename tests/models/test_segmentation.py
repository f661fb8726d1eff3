"""The 2D femur segmentation U-Net: config, normalisation, padding, largest component, Dice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from biplanar.errors import InputError
from biplanar.models.segmentation import (
    SegmentationConfig,
    build_segmentation_net,
    largest_component,
    mask_dice,
    masks_from_logits,
    normalise_radiograph,
    segment,
    segmentation_logits,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = SegmentationConfig(channels=(4, 8, 16), strides=(2, 2), num_res_units=1)


@pytest.fixture(scope="module")
def small_net():
    torch.manual_seed(0)
    return build_segmentation_net(SMALL).eval()


def test_config_round_trip_and_checks():
    config = SegmentationConfig(channels=(8, 16), strides=(4,), num_res_units=0, dropout=0.1, norm="batch")
    assert SegmentationConfig.from_dict(config.to_dict()) == config
    assert config.size_multiple == 4
    assert SegmentationConfig().size_multiple == 8
    with pytest.raises(InputError, match="unknown field"):
        SegmentationConfig.from_dict({"depth": 3})
    with pytest.raises(InputError, match="strides"):
        SegmentationConfig(channels=(8, 16, 32), strides=(2,))
    with pytest.raises(InputError, match="dropout"):
        SegmentationConfig(dropout=1.0)
    with pytest.raises(InputError, match="norm"):
        SegmentationConfig(norm="group")


def test_default_network_shapes_and_size():
    """(B, 1, rows, cols) in and out; the default network's float32 weights are well under 10 MB."""
    net = build_segmentation_net(SegmentationConfig())
    assert net(torch.zeros(2, 1, 112, 80)).shape == (2, 1, 112, 80)
    size_bytes = sum(p.numel() * p.element_size() for p in net.state_dict().values())
    assert size_bytes < 3e6


def test_normalisation_percentiles_and_invariance():
    """p1 -> 0, p99 -> 1; invariant to a positive scale and offset; -x gives 1 - result."""
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(3, 1, 20, 16, generator=generator, dtype=torch.float64) * 5.0
    normalised = normalise_radiograph(image)
    levels = torch.quantile(normalised.flatten(1), torch.tensor([0.01, 0.99]), dim=1)
    assert torch.allclose(levels, torch.tensor([[0.0] * 3, [1.0] * 3]), atol=1e-5)
    assert torch.allclose(normalise_radiograph(3.7 * image - 2.0), normalised, atol=1e-5)
    assert torch.allclose(normalise_radiograph(-image), 1.0 - normalised, atol=1e-5)
    flat = normalise_radiograph(torch.full((1, 1, 4, 4), 2.5))
    assert torch.equal(flat, torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="B, 1, rows, cols"):
        normalise_radiograph(torch.zeros(4, 4))


def test_largest_component_keeps_the_biggest_blob():
    mask = np.zeros((10, 12), dtype=bool)
    mask[1:3, 1:3] = True  # 4 px
    mask[5:9, 4:10] = True  # 24 px
    mask[0, 11] = True  # 1 px
    kept = largest_component(mask)
    expected = np.zeros_like(mask)
    expected[5:9, 4:10] = True
    assert np.array_equal(kept, expected)
    diagonal = np.eye(3, dtype=bool)  # 4-connectivity: three one-pixel components, the first kept
    assert largest_component(diagonal).sum() == 1
    assert not largest_component(np.zeros((4, 4), dtype=bool)).any()


def test_logits_pad_odd_shapes_and_crop_back(small_net):
    """An image whose sides are not multiples of 4 is edge-padded, run and cropped back; a multiple is run as is."""
    generator = torch.Generator().manual_seed(2)
    odd = torch.rand(1, 1, 21, 15, generator=generator)
    logits = segmentation_logits(small_net, odd)
    assert logits.shape == (1, 1, 21, 15)
    padded = F.pad(normalise_radiograph(odd), (0, 1, 0, 3), mode="replicate")  # to 24 x 16
    with torch.no_grad():
        assert torch.allclose(logits, small_net(padded)[..., :21, :15], atol=1e-6)
    even = torch.rand(2, 1, 24, 16, generator=generator)
    with torch.no_grad():
        assert torch.allclose(segmentation_logits(small_net, even), small_net(normalise_radiograph(even)), atol=1e-6)


def test_segment_returns_one_component_of_the_input_shape(small_net):
    image = np.random.default_rng(3).random((21, 15)).astype(np.float32)
    mask = segment(small_net, image)
    assert mask.shape == (21, 15) and mask.dtype == bool
    assert np.array_equal(mask, largest_component(mask))
    assert np.array_equal(segment(small_net, torch.from_numpy(image)), mask)
    with pytest.raises(ValueError, match="rows, cols"):
        segment(small_net, image[None])


def test_segment_at_a_working_shape(small_net):
    """The radiograph's own shape as working shape changes nothing; another one gives a mask of the input's shape."""
    image = np.random.default_rng(4).random((24, 16)).astype(np.float32)
    assert np.array_equal(segment(small_net, image, working_shape=(24, 16)), segment(small_net, image))
    mask = segment(small_net, image, working_shape=(12, 8))
    assert mask.shape == (24, 16) and np.array_equal(mask, largest_component(mask))


def test_masks_from_logits_threshold_at_zero_logit():
    logits = torch.full((1, 1, 6, 6), -3.0)
    logits[0, 0, 1:4, 1:4] = 2.0
    logits[0, 0, 5, 5] = 0.5  # foreground but a separate, smaller component
    masks = masks_from_logits(logits)
    assert masks.shape == (1, 6, 6) and masks.sum() == 9 and masks[0, 1:4, 1:4].all()


def test_mask_dice_closed_form_and_empty_cases():
    """Two offset rectangles: 2 |P ∩ T| / (|P| + |T|) by hand; MONAI's empty-mask conventions."""
    predicted = np.zeros((3, 20, 20), dtype=bool)
    truth = np.zeros((3, 20, 20), dtype=bool)
    predicted[0, 2:12, 2:12] = True  # 100 px
    truth[0, 5:15, 2:10] = True  # 80 px, overlap rows 5..11 x cols 2..9 = 7 x 8 = 56
    truth[1, 0:3, 0:3] = True  # prediction empty
    dice = mask_dice(predicted, truth)
    assert dice == pytest.approx([2 * 56 / 180, 0.0, 1.0])
    with pytest.raises(ValueError, match="B, rows, cols"):
        mask_dice(predicted[0], truth[0])
