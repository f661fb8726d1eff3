"""SOPI's networks and config: presets, bad input, shapes, closed-form pieces (split attention,
standardisation, the fold of the CT features into the detector orientation)."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch

from biplanar.data.grid_presets import grid_preset
from biplanar.errors import InputError
from biplanar.models.sopi import NETWORKS, FineRegistrationNet, RTPINet, build_network, load_sopi_config, standardise
from biplanar.models.sopi.config import SopiConfig
from biplanar.models.sopi.encoder import CascadeFusionBlock, CompositeEncoder, SplitAttentionConv2d

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny() -> SopiConfig:
    return load_sopi_config("sopi_tiny")


# --- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "preset", ["sopi_tiny", "sopi_lite", "sopi_lite_clinical", "sopi_lumbar", "sopi_lumbar_clinical"]
)
def test_presets_load_and_round_trip(preset: str) -> None:
    config = load_sopi_config(preset)
    assert config.name == preset
    assert SopiConfig.from_dict(config.to_dict()) == config


def test_param_sigmas_are_radians_then_mm(tiny: SopiConfig) -> None:
    sigmas = tiny.param_sigmas()
    assert torch.allclose(sigmas[:3], torch.full((3,), math.radians(tiny.data.rotation_sigma_deg)))
    assert sigmas[3:].tolist() == list(tiny.data.translation_sigma_mm)


@pytest.mark.parametrize(
    "document, field",
    [
        ({"rtpi": {"volume_features": "wide"}}, "rtpi.volume_features"),
        ({"loss": {"regulariser": "l1"}}, "loss.regulariser"),
        ({"data": {"translation_sigma_mm": [1.0, 2.0]}}, "data.translation_sigma_mm"),
        ({"fine": {"level_features": [3, 8, 8]}}, "fine.level_features"),
        ({"training": {"steps": 0}}, "training.steps"),
        ({"search": {"step_decrease": 1.5}}, "search.step_decrease"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_bad_config_names_the_field(document: dict, field: str) -> None:
    with pytest.raises(InputError, match=re.escape(field)):
        SopiConfig.from_dict(document, "test.yaml")


def test_missing_config_file(tmp_path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_sopi_config(tmp_path / "nope.yaml")


# --- building blocks ----------------------------------------------------------------------------


def test_standardise_is_zero_mean_unit_std_and_affine_invariant() -> None:
    image = torch.rand(3, 1, 9, 7)
    out = standardise(image)
    assert torch.allclose(out.flatten(1).mean(1), torch.zeros(3), atol=1e-6)
    assert torch.allclose(out.flatten(1).std(1), torch.ones(3), atol=1e-4)
    assert torch.allclose(standardise(5.0 * image + 2.0), out, atol=1e-4)


def test_split_attention_with_zero_attention_logits_averages_the_splits() -> None:
    # Zero logits give softmax weights 1/radix: the output is the mean of the radix splits.
    layer = SplitAttentionConv2d(4, radix=2).eval()
    final = layer.attention[-1]
    torch.nn.init.zeros_(final.weight)
    torch.nn.init.zeros_(final.bias)
    x = torch.randn(2, 4, 5, 6)
    splits = layer.splits(x).view(2, 2, 4, 5, 6)
    assert torch.allclose(layer(x), splits.mean(dim=1), atol=1e-6)


def test_split_attention_rejects_channels_not_divisible_by_radix() -> None:
    with pytest.raises(ValueError, match="radix"):
        SplitAttentionConv2d(5, radix=2)


def test_cascade_fusion_block_scales() -> None:
    block = CascadeFusionBlock(6, (4, 8, 16), radix=2, reduction=4)
    p3, p4, p5 = block(torch.randn(2, 6, 14, 10))
    assert p3.shape == (2, 4, 14, 10) and p4.shape == (2, 8, 7, 5) and p5.shape == (2, 16, 4, 3)


# --- RTPI ---------------------------------------------------------------------------------------


def test_rtpi_shapes_and_parameter_scaling(tiny: SopiConfig) -> None:
    torch.manual_seed(0)
    network = RTPINet(tiny).eval()
    rows, cols = tiny.geometry.image_shape
    volume = 0.02 * torch.rand(2, 1, *grid_preset("tiny").shape)
    radiograph = torch.rand(2, 1, rows, cols)
    scaled = network(volume, radiograph)
    assert scaled.shape == (2, 6)
    assert torch.allclose(network.params(volume, radiograph), scaled * tiny.param_sigmas())


def test_rtpi_takes_a_ct_of_any_grid(tiny: SopiConfig) -> None:
    network = RTPINet(tiny).eval()
    rows, cols = tiny.geometry.image_shape
    assert network(0.02 * torch.rand(1, 1, 61, 50, 15), torch.rand(1, 1, rows, cols)).shape == (1, 6)


def test_rtpi_depends_on_both_inputs(tiny: SopiConfig) -> None:
    torch.manual_seed(1)
    network = RTPINet(tiny).train()
    rows, cols = tiny.geometry.image_shape
    volume = (0.02 * torch.rand(2, 1, *grid_preset("tiny").shape)).requires_grad_()
    radiograph = torch.rand(2, 1, rows, cols).requires_grad_()
    network(volume, radiograph).sum().backward()
    assert volume.grad.abs().sum() > 0 and radiograph.grad.abs().sum() > 0


def test_rtpi_fold_puts_the_ct_in_detector_orientation(tiny: SopiConfig) -> None:
    # Identity 3D branch (no blocks): the folded map of a volume with one bright voxel column at
    # high i (patient's right) and high k (superior) must light up the top-left of the map: the
    # AP detector's rows run inferior and its columns to the patient's left.
    config = dataclasses.replace(tiny, rtpi=dataclasses.replace(tiny.rtpi, volume_features=()))
    network = RTPINet(config)
    volume = torch.zeros(1, 1, *tiny.rtpi.volume_shape)
    volume[0, 0, -1, :, -1] = 1.0  # i = I-1 (right), every j (along the beam), k = K-1 (superior)
    folded = network.volume_features(volume * 0.02)
    assert folded.shape == (1, tiny.rtpi.volume_shape[1], tiny.rtpi.volume_shape[2], tiny.rtpi.volume_shape[0])
    hot = (folded[0].sum(0) > 0).nonzero().tolist()
    assert hot == [[0, 0]]


def test_rtpi_rejects_bad_shapes(tiny: SopiConfig) -> None:
    network = RTPINet(tiny)
    rows, cols = tiny.geometry.image_shape
    with pytest.raises(ValueError, match="volume_mu"):
        network(torch.rand(1, 2, 8, 8, 8), torch.rand(1, 1, rows, cols))
    with pytest.raises(ValueError, match="radiograph"):
        network(torch.rand(1, 1, 8, 8, 8), torch.rand(2, 1, rows, cols))


# --- fine registration encoders ------------------------------------------------------------------


def test_composite_encoder_levels(tiny: SopiConfig) -> None:
    rows, cols = tiny.geometry.image_shape
    levels = CompositeEncoder(tiny.fine)(torch.rand(2, 1, rows, cols))
    c3, c4, c5 = tiny.fine.level_features
    assert [tuple(level.shape) for level in levels] == [(2, c3, 14, 10), (2, c4, 7, 5), (2, c5, 4, 3)]
    with pytest.raises(ValueError, match="image"):
        CompositeEncoder(tiny.fine)(torch.rand(2, 3, rows, cols))


def test_fine_encoders_have_the_same_structure_and_unshared_weights(tiny: SopiConfig) -> None:
    network = FineRegistrationNet(tiny)
    moving, fixed = dict(network.moving.named_parameters()), dict(network.fixed.named_parameters())
    assert moving.keys() == fixed.keys()
    assert all(moving[name].data_ptr() != fixed[name].data_ptr() for name in moving)
    rows, cols = tiny.geometry.image_shape
    image = torch.rand(1, 1, rows, cols)
    e_m, e_f = network.eval()(image, image)
    assert all(torch.equal(m, f) for m, f in zip(e_m, e_f))  # the fixed encoder starts as a copy
    with torch.no_grad():
        network.moving.stem[0][0].weight.add_(1.0)  # training one leaves the other as it was
    e_m, e_f = network(image, image)
    assert not torch.allclose(e_m[0], e_f[0])


@pytest.mark.parametrize("name", NETWORKS)
def test_build_network(tiny: SopiConfig, name: str) -> None:
    assert isinstance(build_network(tiny, name), RTPINet if name == "rtpi" else FineRegistrationNet)


def test_build_network_rejects_unknown_name(tiny: SopiConfig) -> None:
    with pytest.raises(ValueError, match="network"):
        build_network(tiny, "coarse")
