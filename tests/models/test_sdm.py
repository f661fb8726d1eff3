"""SDM baseline: the PCA in closed form (component count, deviations, exact reconstruction in its span),
its file round trip, and the network's field, shapes and gradients."""

import numpy as np
import pytest
import torch

from biplanar.errors import InputError
from biplanar.geometry import biplanar_pair
from biplanar.geometry.volume_grid import pooled_grid
from biplanar.layers.resample import upsample_field
from biplanar.layers.similarity import soft_dice
from biplanar.models.sdm import DeformationPCA, SDMNet

FIELD_SHAPE = (3, 4, 2, 3)  # 72 values per field
NORMS = np.array([3.0, 2.0, 1.0])  # of the centred coefficient columns: eigenvalues NORMS^2 / (N - 1)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def orthonormal_directions(count: int, seed: int = 0) -> np.ndarray:
    """``(D, count)`` orthonormal columns in the space of flat fields."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(int(np.prod(FIELD_SHAPE)), count)))
    return q


def known_population():
    """4 fields ``mean + A Q^T`` whose centred coefficient columns are orthogonal with norms 3, 2, 1.

    The columns of A are Helmert contrasts (orthonormal, orthogonal to the ones vector) times NORMS,
    so the centred data matrix has singular values NORMS and right singular vectors Q's columns.
    """
    helmert = np.array([[1, -1, 0, 0], [1, 1, -2, 0], [1, 1, 1, -3]], dtype=float).T
    helmert /= np.linalg.norm(helmert, axis=0)
    directions = orthonormal_directions(4)
    mean = directions[:, 3] * 5.0
    fields = mean + (helmert * NORMS) @ directions[:, :3].T
    return fields.reshape(4, *FIELD_SHAPE), mean, directions


@pytest.mark.parametrize("variance, count", [(0.5, 1), (0.9, 2), (1.0, 3)])
def test_component_count_deviations_and_explained_variance_in_closed_form(variance, count):
    fields, mean, directions = known_population()
    pca = DeformationPCA.fit(fields, factor=2, variance=variance)  # explained: 9/14, 4/14, 1/14
    assert pca.num_components == count and pca.factor == 2
    np.testing.assert_allclose(pca.stddev, NORMS[:count] / np.sqrt(3), rtol=1e-5)
    np.testing.assert_allclose(pca.explained, NORMS[:count] ** 2 / 14, rtol=1e-5)
    np.testing.assert_allclose(pca.mean.reshape(-1), mean, atol=1e-6)
    overlaps = np.abs(pca.components.reshape(count, -1) @ directions[:, :count])
    np.testing.assert_allclose(overlaps, np.eye(count), atol=1e-5)


def test_reconstruction_is_exact_in_the_span_and_the_mean_outside_it():
    fields, mean, directions = known_population()
    pca = DeformationPCA.fit(fields, factor=1, variance=1.0)
    coefficients = np.random.default_rng(1).normal(size=(5, 3)) * 4.0
    in_span = (mean + coefficients @ directions[:, :3].T).reshape(5, *FIELD_SHAPE)
    np.testing.assert_allclose(pca.reconstruct(pca.weights(in_span)), in_span, atol=1e-5)
    orthogonal = (mean + 7.0 * _orthogonal_to(directions)).reshape(1, *FIELD_SHAPE)
    np.testing.assert_allclose(pca.weights(orthogonal), 0.0, atol=1e-5)
    np.testing.assert_allclose(pca.reconstruct(pca.weights(orthogonal))[0], pca.mean, atol=1e-5)
    weights = pca.weights(fields)  # standardised over the training fields
    np.testing.assert_allclose(weights.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(weights.var(axis=0, ddof=1), 1.0, rtol=1e-4)


def _orthogonal_to(directions: np.ndarray) -> np.ndarray:
    """A unit flat field orthogonal to the first 3 columns of ``directions``."""
    vector = np.random.default_rng(2).normal(size=directions.shape[0])
    vector -= directions[:, :3] @ (directions[:, :3].T @ vector)
    return vector / np.linalg.norm(vector)


def test_max_components_and_bad_input():
    fields, _, _ = known_population()
    assert DeformationPCA.fit(fields, 1, variance=1.0, max_components=2).num_components == 2
    with pytest.raises(ValueError, match="N >= 2"):
        DeformationPCA.fit(fields[:1], 1)
    with pytest.raises(ValueError, match="variance"):
        DeformationPCA.fit(fields, 1, variance=0.0)
    with pytest.raises(ValueError, match="all equal"):
        DeformationPCA.fit(np.repeat(fields[:1], 3, axis=0), 1)


def test_file_and_tensor_round_trips(tmp_path):
    pca = DeformationPCA.fit(known_population()[0], factor=2)
    path = pca.save(tmp_path / "sdm.npz", subject_ids=np.array(["a", "b", "c", "d"]))
    loaded = DeformationPCA.load(path)
    for restored in (loaded, DeformationPCA.from_tensors(pca.to_tensors())):
        for name in ("mean", "components", "stddev", "explained"):
            np.testing.assert_array_equal(getattr(restored, name), getattr(pca, name))
        assert restored.factor == 2
    with np.load(path) as archive:
        assert list(archive["subject_ids"]) == ["a", "b", "c", "d"]
    with pytest.raises(InputError, match="file not found"):
        DeformationPCA.load(tmp_path / "missing.npz")
    with pytest.raises(InputError, match="missing SDM array"):
        DeformationPCA.from_tensors({"mean": pca.mean})


# --- the network ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_sdm(tiny):
    """The tiny config and atlas, and a 3-component PCA of smooth random fields on the grid pooled by 2."""
    config, atlas = tiny
    shape = pooled_grid(atlas.grid, 2).shape
    coarse = torch.randn(5, 3, *(n // 4 for n in shape), generator=torch.Generator().manual_seed(0)) * 2.0
    fields = torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=False)
    return config, atlas, DeformationPCA.fit(fields.numpy(), factor=2, variance=1.0)


def views_of(config, ap_angle=0.0, lat_angle=90.0):
    geometry = config.geometry
    views = biplanar_pair(ap_angle, lat_angle, geometry.image_shape, (geometry.pixel_spacing_mm,) * 2)
    return views["AP"], views["LAT"]


def test_network_field_is_the_pca_reconstruction_upsampled(tiny_sdm):
    config, atlas, pca = tiny_sdm
    network = SDMNet(config, atlas, pca)
    weights = np.random.default_rng(3).normal(size=(2, pca.num_components)).astype(np.float32)
    expected = upsample_field(torch.from_numpy(pca.reconstruct(weights)), atlas.grid.shape)
    torch.testing.assert_close(network.field(torch.from_numpy(weights)), expected, atol=1e-5, rtol=1e-5)
    assert "mean_field" not in network.state_dict()  # the PCA travels once, beside the weights


def test_network_shapes_start_at_the_mean_and_gradients_reach_every_parameter(tiny_sdm):
    config, atlas, pca = tiny_sdm
    torch.manual_seed(0)
    network = SDMNet(config, atlas, pca)
    pairs = [views_of(config), views_of(config, 20.0, 75.0)]
    radiographs = network.projectors.project(network.atlas_femur_mu.expand(2, -1, -1, -1, -1), pairs)
    output = network(radiographs, pairs)
    assert output.weights.shape == (2, pca.num_components)
    assert output.displacement.shape == (2, 3, *atlas.grid.shape)
    assert output.warped_labels.shape == (2, 1, *atlas.grid.shape)
    mean = upsample_field(torch.from_numpy(pca.mean)[None], atlas.grid.shape)
    assert (output.displacement - mean).abs().max() < 1e-2  # mm: the dense layer starts near zero
    target = torch.ones_like(output.weights)
    loss = (output.weights - target).square().mean() + 1 - soft_dice(output.warped_labels, network.atlas_labels).mean()
    assert torch.isfinite(loss)
    loss.backward()
    missing = [name for name, p in network.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert torch.equal(network.predict_labels(radiographs, pairs), network(radiographs, pairs).warped_labels)


def test_network_refuses_fields_of_another_grid(tiny_sdm):
    config, atlas, pca = tiny_sdm
    other = DeformationPCA(pca.mean, pca.components, pca.stddev, pca.explained, factor=4)
    with pytest.raises(InputError, match="pooled by 4"):
        SDMNet(config, atlas, other)
