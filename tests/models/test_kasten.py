"""Kasten et al. baseline: ray copies (closed form, agreement with inv-ProST), shapes, gradients, bad input."""

import pytest
import torch
from monai.losses import DiceCELoss

from biplanar.geometry import biplanar_pair
from biplanar.geometry.volume_grid import VolumeGrid, pooled_grid
from biplanar.layers.inv_prost import InverseProST
from biplanar.models.kasten import KastenNet, RayCopy
from biplanar.models.projectors import ProjectorCache

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def views_of(config, ap_angle=0.0, lat_angle=90.0):
    geometry = config.geometry
    views = biplanar_pair(ap_angle, lat_angle, geometry.image_shape, (geometry.pixel_spacing_mm,) * 2)
    return views["AP"], views["LAT"]


def detector_ramps(image_shape, cell):
    """``(1, 2, rows / cell, cols / cell)``: each cell's centre ``(u, v)`` in detector pixels."""
    rows, cols = image_shape[0] // cell, image_shape[1] // cell
    v, u = torch.meshgrid(
        torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64), indexing="ij"
    )
    # Cell c covers pixels c * cell .. c * cell + cell - 1: its centre is c * cell + (cell - 1) / 2.
    return torch.stack([u, v])[None] * cell + (cell - 1) / 2


@pytest.mark.parametrize("cell", [1, 4])
@pytest.mark.parametrize("angles", [(0.0, 90.0), (20.0, 75.0)])
def test_ray_copy_puts_each_voxel_at_its_detector_position(tiny, cell, angles):
    """Closed form: bilinear sampling of a linear ramp is exact, so a map holding each cell's centre
    (u, v) copies to every voxel the (u, v) its centre projects to (where all four taps are inside)."""
    config, atlas = tiny
    grid = pooled_grid(atlas.grid, 2)
    for view in views_of(config, *angles):
        copied = RayCopy(view, grid).double()(detector_ramps(view.image_shape, cell))[0]  # (2, I, J, K)
        uv_px, _ = view.project(grid.voxel_centres_world(torch.float64))  # (I, J, K, 2)
        expected = uv_px.movedim(-1, 0)
        low, high = (cell - 1) / 2, torch.tensor(view.image_shape[::-1], dtype=torch.float64) - 1 - (cell - 1) / 2
        inside = ((expected >= low) & (expected <= high[:, None, None, None])).all(dim=0)
        assert inside.float().mean() > 0.5
        # The layer keeps its sampling grid in float32: ~1e-7 of the half-width, in pixels.
        torch.testing.assert_close(copied[:, inside], expected[:, inside], atol=1e-5, rtol=0)


def test_ray_copy_is_inv_prost_of_a_beam_constant_along_its_rays(tiny):
    """Equal wherever inv-ProST's zero padding does not fade the beam (the inner cells of its depth range)."""
    config, atlas = tiny
    view, depth_cells = views_of(config, 20.0, 75.0)[1], 8
    features = torch.rand(1, 3, *(n // 4 for n in view.image_shape), generator=torch.Generator().manual_seed(0))
    beam = features.unsqueeze(2).expand(-1, -1, depth_cells, -1, -1)  # copied along the depth axis
    inverse = InverseProST(view, atlas.grid)
    depth = inverse.beam_grid[0, ..., 2]  # (I, J, K) normalised depth in [-1, 1]
    unfaded = depth.abs() <= 1 - 1 / depth_cells
    assert unfaded.float().mean() > 0.7
    copied, projected = RayCopy(view, atlas.grid)(features)[0], inverse(beam)[0]
    torch.testing.assert_close(copied[:, unfaded], projected[:, unfaded], atol=1e-5, rtol=0)


def test_shapes_probabilities_and_gradients_reach_every_parameter(tiny):
    config, atlas = tiny
    torch.manual_seed(0)
    network = KastenNet(config, atlas.grid)
    pairs = [views_of(config), views_of(config, 20.0, 75.0)]  # an orthogonal and a generalized pair
    projectors = ProjectorCache(atlas.grid, config.geometry.image_shape, config.geometry.num_samples)
    femur = torch.from_numpy(atlas.labels > 0).float()[None, None]
    radiographs = projectors.project(femur.expand(2, -1, -1, -1, -1), pairs)
    logits = network(radiographs, pairs)
    assert logits.shape == (2, 2, *atlas.grid.shape)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)(logits, femur.expand(2, -1, -1, -1, -1).long())
    assert torch.isfinite(loss)
    loss.backward()
    missing = [name for name, p in network.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    network.eval()
    with torch.no_grad():
        probabilities = network.predict_labels(radiographs, pairs)
    assert probabilities.shape == (2, 1, *atlas.grid.shape)
    assert probabilities.min() >= 0 and probabilities.max() <= 1


def test_bad_inputs_raise(tiny):
    config, atlas = tiny
    network = KastenNet(config, atlas.grid)
    pair = views_of(config)
    with pytest.raises(ValueError, match="radiographs"):
        network(torch.zeros(1, 1, *config.geometry.image_shape), [pair])
    with pytest.raises(ValueError, match="radiographs"):
        network(torch.zeros(2, 2, *config.geometry.image_shape), [pair])
    odd_grid = VolumeGrid.from_spacing((46, 32, 48), (2.656, 2.656, 4.0))
    with pytest.raises(ValueError, match="divisor"):  # three levels: the grid is pooled by 4 at the coarsest
        KastenNet(config, odd_grid)
    with pytest.raises(ValueError, match="image"):
        RayCopy(pair[0], atlas.grid)(torch.zeros(1, 2, 3, 4, 5))
