"""The registration network: shapes for every config and ablation, identity at initialisation, gradients."""

import dataclasses

import pytest
import torch

from biplanar.config import ExperimentConfig, load_config
from biplanar.data.atlas import load_atlas
from biplanar.errors import InputError
from biplanar.geometry import biplanar_pair
from biplanar.models.blocks import conv_block_3d
from biplanar.models.local import BeamUNet, convolve_ray_copies, on_ray_copies
from biplanar.models.network import AtlasRegistrationNet
from biplanar.models.projectors import BEAM_COLUMNS_AND_DEPTH, as_learnt_side

ABLATIONS = {
    "paper": {},
    "separate_affine_encoders": {"affine": {"encoders": "separate"}},
    "no_skip": {"local": {"skip": False}},
    "single_decoder": {"local": {"decoder": "single"}},
    "no_inv_prost": {"local": {"inv_prost": False}},
}


def variant(base: ExperimentConfig, changes: dict) -> ExperimentConfig:
    document = base.to_dict()
    for section, values in changes.items():
        document[section].update(values)
    return ExperimentConfig.from_dict(document)


def views_of(config: ExperimentConfig, ap_angle: float = 0.0, lat_angle: float = 90.0):
    geometry = config.geometry
    views = biplanar_pair(ap_angle, lat_angle, geometry.image_shape, (geometry.pixel_spacing_mm,) * 2)
    return views["AP"], views["LAT"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = load_config("tiny")
    return config, load_atlas("tiny")


@pytest.mark.parametrize("ablation", list(ABLATIONS))
def test_shapes_and_identity_at_initialisation(tiny, ablation):
    """The untrained network returns the atlas: T and phi near the identity (interpolation error only)."""
    config, atlas = tiny
    network = AtlasRegistrationNet(variant(config, ABLATIONS[ablation]), atlas).eval()
    pairs = [views_of(config), views_of(config, 20.0, 75.0)]  # an orthogonal and a generalized pair
    with torch.no_grad():
        radiographs = network.projectors.project(network.atlas_femur_mu.expand(2, -1, -1, -1, -1), pairs)
        output = network(radiographs, pairs)
    grid_shape = atlas.grid.shape
    assert output.params.shape == (2, 7) and output.affine_matrix.shape == (2, 4, 4)
    for field in (output.velocity, output.local_displacement, output.total_displacement):
        assert field.shape == (2, 3, *grid_shape)
    for volume in (output.affine_image, output.warped_image, output.warped_labels):
        assert volume.shape == (2, 1, *grid_shape)
    assert output.total_displacement.abs().max() < 0.05  # mm, on 2.7-4 mm voxels
    dice = (
        2
        * (output.warped_labels * network.atlas_labels).sum()
        / (output.warped_labels.sum() + 2 * network.atlas_labels.sum())
    )
    assert dice > 0.99


def test_gradients_reach_every_parameter(tiny):
    config, atlas = tiny
    network = AtlasRegistrationNet(config, atlas)
    pair = views_of(config)
    radiographs = network.projectors.project(network.atlas_femur_mu, [pair]).detach()
    output = network(radiographs, [pair])
    (output.warped_image.square().mean() + output.params.square().sum()).backward()
    missing = [name for name, p in network.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize("name, depth", [("tiny", 4 * 8), ("lite", 4 * 16), ("paper", 4 * 32)])
def test_beam_decoder_output_shape_for_every_config(name, depth):
    """The 3D decoder ends at M * 2^L depth and the full detector size (checked on a 1-sample batch)."""
    config = load_config(name)
    unet = BeamUNet(2, config.local)
    rows, cols = config.geometry.image_shape
    levels = len(config.local.encoder_features)
    if name == "paper":  # full-size forward is ~1 GB; check the sizes through the bottleneck instead
        image = torch.zeros(1, 2, rows, cols)
        for block in unet.encoder:
            image = block(image)
        assert image.shape[2:] == (rows // 2**levels, cols // 2**levels)
        return
    with torch.no_grad():
        beam = unet(torch.zeros(1, 2, rows, cols))
    assert beam.shape == (1, unet.out_channels, depth, rows, cols)


def test_bad_config_and_input(tiny):
    config, atlas = tiny
    with pytest.raises(InputError, match="local.decoder: expected one of dual, single"):
        variant(config, {"local": {"decoder": "triple"}})
    with pytest.raises(InputError, match="not divisible"):
        variant(config, {"geometry": {"image_shape": [50, 40]}})
    with pytest.raises(InputError, match="unknown field"):
        ExperimentConfig.from_dict({"local": {"skips": True}})
    with pytest.raises(InputError, match="training.epochs: expected a number"):
        ExperimentConfig.from_dict({"training": {"epochs": "many"}})
    network = AtlasRegistrationNet(config, atlas)
    with pytest.raises(ValueError, match="radiographs"):
        network(torch.zeros(1, 3, 56, 40), [views_of(config)])
    wrong_size = biplanar_pair(image_shape=(64, 40))
    with pytest.raises(ValueError, match="image_shape"):
        network(torch.zeros(1, 2, 64, 40), [(wrong_size["AP"], wrong_size["LAT"])])


def test_config_round_trip():
    for name in ("paper", "lite", "tiny"):
        config = load_config(name)
        assert ExperimentConfig.from_dict(config.to_dict()) == config
        assert dataclasses.replace(config, name="x").name == "x"


@pytest.mark.parametrize("depth", [1, 2, 3, 8])
@pytest.mark.parametrize("bias", [True, False])
def test_convolving_ray_copies_in_2d_is_the_3d_convolution(depth, bias):
    """The 2D route equals Conv3d on the copies (values and gradients, float64), every depth."""
    torch.manual_seed(depth)
    convolution = torch.nn.Conv3d(3, 4, 3, padding=1, bias=bias).double()
    image = torch.randn(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    expected = convolution(image.unsqueeze(2).expand(-1, -1, depth, -1, -1))
    output = convolve_ray_copies(convolution, image, depth)
    torch.testing.assert_close(output, expected)
    upstream = torch.randn(expected.shape, dtype=torch.float64)
    got = torch.autograd.grad(output, (image, convolution.weight), upstream)
    want = torch.autograd.grad(expected, (image, convolution.weight), upstream)
    for mine, theirs in zip(got, want, strict=True):
        torch.testing.assert_close(mine, theirs)


def test_a_block_on_ray_copies_matches_and_refuses_other_convolutions():
    torch.manual_seed(0)
    block = conv_block_3d(2, 3).double().train()  # convolution, batch norm (batch statistics), LeakyReLU
    image = torch.randn(1, 2, 7, 4, dtype=torch.float64)
    torch.testing.assert_close(on_ray_copies(block, image, 5), block(image.unsqueeze(2).expand(-1, -1, 5, -1, -1)))
    with pytest.raises(ValueError, match="3x3x3, stride 1"):
        convolve_ray_copies(torch.nn.Conv3d(2, 3, 3, padding=0), image, 5)
    with pytest.raises(TypeError, match="Sequential starting with a Conv3d"):
        on_ray_copies(torch.nn.Conv3d(2, 3, 3, padding=1), image, 5)


def test_a_view_from_the_other_side_is_shown_reversed_and_its_beams_reversed_back(tiny):
    """A LAT with the source on the patient's right (biplanar.geometry.facing) reaches the LAT U-net with
    its columns reversed; the U-net's beam-space output reaches inv-ProST reversed back (columns and
    depth). The AP, from the learnt side, passes unchanged."""
    config, atlas = tiny
    network = AtlasRegistrationNet(config, atlas).eval()
    pair = views_of(config, 0.0, -90.0)
    seen: dict[str, torch.Tensor] = {}
    for name, unet in zip(("AP", "LAT"), network.local.unets):
        unet.register_forward_hook(
            lambda _, inputs, output, name=name: seen.update({name: inputs[0], f"{name}_beam": output})
        )
    back_project = network.projectors.back_project
    network.projectors.back_project = lambda beams, views: seen.update(inverted=beams) or back_project(beams, views)
    with torch.no_grad():
        radiographs = network.projectors.project(network.atlas_femur_mu, [pair]) + torch.rand(
            1, 2, *config.geometry.image_shape
        )
        network(radiographs, [pair])
    shown = radiographs / radiographs.amax(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(seen["AP"][:, 0], shown[:, 0])
    torch.testing.assert_close(seen["LAT"][:, 0], shown[:, 1].flip(-1))
    torch.testing.assert_close(seen["inverted"][0], seen["AP_beam"])
    torch.testing.assert_close(seen["inverted"][1], seen["LAT_beam"].flip((-1, -3)))


def test_only_the_reversed_batch_elements_are_reversed():
    beams = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 1, 3, 4, 5)
    shown = as_learnt_side(beams, torch.tensor([False, True]), BEAM_COLUMNS_AND_DEPTH)
    torch.testing.assert_close(shown[0], beams[0])
    torch.testing.assert_close(shown[1], beams[1].flip((-1, -3)))
    torch.testing.assert_close(as_learnt_side(shown, torch.tensor([False, True]), BEAM_COLUMNS_AND_DEPTH), beams)
