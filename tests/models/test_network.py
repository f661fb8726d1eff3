"""The registration network: shapes for every config and ablation, identity at initialisation, gradients."""

import dataclasses

import pytest
import torch

from biplanar.config import ExperimentConfig, load_config
from biplanar.data.atlas import load_atlas
from biplanar.errors import InputError
from biplanar.geometry import biplanar_pair
from biplanar.models.local import BeamUNet
from biplanar.models.network import AtlasRegistrationNet

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
