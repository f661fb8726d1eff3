"""grid_sample_3d: F.grid_sample's values and gradients, split over the CPU threads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from biplanar.layers.sampling import cpu_batch_splits, grid_sample_3d


@pytest.fixture
def threads():
    """Set the torch thread count for one test, then restore it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _inputs(depth: int, batch: int = 1, dtype=torch.float64):
    generator = torch.Generator().manual_seed(depth + batch)
    volume = torch.randn(batch, 2, 5, 6, 7, generator=generator, dtype=dtype)
    grid = 1.2 * (2 * torch.rand(batch, depth, 4, 3, 3, generator=generator, dtype=dtype) - 1)
    return volume.requires_grad_(True), grid.requires_grad_(True)


@pytest.mark.parametrize("thread_count", [1, 2, 3])
@pytest.mark.parametrize("depth", [6, 7])
@pytest.mark.parametrize(("padding", "corners"), [("zeros", True), ("border", True), ("zeros", False)])
def test_values_and_gradients_equal_grid_sample(threads, thread_count, depth, padding, corners):
    threads(thread_count)
    volume, grid = _inputs(depth)
    ours = grid_sample_3d(volume, grid, "bilinear", padding, corners)
    reference = F.grid_sample(volume, grid, "bilinear", padding, corners)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)
    weights = torch.randn_like(reference)
    ours_grads = torch.autograd.grad((ours * weights).sum(), (volume, grid))
    reference_grads = torch.autograd.grad((reference * weights).sum(), (volume, grid))
    for our_grad, reference_grad in zip(ours_grads, reference_grads):
        torch.testing.assert_close(our_grad, reference_grad, rtol=0, atol=1e-12)


def test_splits_follow_threads_batch_and_divisibility(threads):
    threads(3)
    one = torch.zeros(1, 1, 2, 2, 2)
    assert cpu_batch_splits(one, 6) == 3 and cpu_batch_splits(one, 4) == 2 and cpu_batch_splits(one, 7) == 1
    assert cpu_batch_splits(torch.zeros(2, 1, 2, 2, 2), 6) == 1  # a batch is already parallel
    threads(1)
    assert cpu_batch_splits(one, 6) == 1


def test_a_batch_is_sampled_as_grid_sample_does(threads):
    threads(2)
    volume, grid = _inputs(6, batch=2)
    torch.testing.assert_close(grid_sample_3d(volume, grid), F.grid_sample(volume, grid, align_corners=True))


def test_gradcheck_with_two_threads(threads):
    threads(2)
    volume, grid = _inputs(4)
    assert torch.autograd.gradcheck(lambda v, g: grid_sample_3d(v, g, "bilinear", "border"), (volume, grid))
