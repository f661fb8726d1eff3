"""NCC, GC, NGI: closed forms, invariances, masks, bad input, gradcheck."""

import pytest
import torch

from biplanar.pose.similarity import (
    SIMILARITIES,
    get_similarity,
    gradient_correlation,
    ncc,
    normalised_gradient_information,
    sobel_gradients,
)


def random_images(batch: int = 3, size: int = 24, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """``(batch, 1, size, size)`` smooth random images (blurred noise)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(batch, 1, size + 4, size + 4, generator=gen, dtype=dtype)
    return torch.nn.functional.avg_pool2d(noise, 5, stride=1)


@pytest.mark.parametrize("name", sorted(SIMILARITIES))
def test_identical_images_score_one(name):
    images = random_images()
    torch.testing.assert_close(get_similarity(name)(images, images), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("name", sorted(SIMILARITIES))
def test_positive_affine_intensity_change_is_invisible(name):
    fixed, moving = random_images(seed=1), random_images(seed=2)
    similarity = get_similarity(name)
    torch.testing.assert_close(similarity(fixed, 3.5 * moving - 7.0), similarity(fixed, moving))
    torch.testing.assert_close(similarity(0.2 * fixed + 1.0, moving), similarity(fixed, moving))


@pytest.mark.parametrize("similarity", [ncc, gradient_correlation])
def test_negated_image_scores_minus_one(similarity):
    images = random_images()
    torch.testing.assert_close(similarity(images, -images), -torch.ones(3, dtype=torch.float64))


def test_ngi_ignores_the_gradient_sign():
    """w(alpha) = cos^2(alpha): a contrast inversion keeps every gradient's line, so NGI stays 1."""
    images = random_images()
    torch.testing.assert_close(normalised_gradient_information(images, -images), torch.ones(3, dtype=torch.float64))


def test_ncc_closed_form_of_two_ramps():
    """x and x^2 on 0..n-1: NCC = corr(x, x^2) computed by hand."""
    n = 8
    x = torch.arange(n, dtype=torch.float64)
    a, b = x - x.mean(), x * x - (x * x).mean()
    expected = (a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum())
    fixed = x.view(1, 1, 1, n).expand(1, 1, 3, n)
    moving = (x * x).view(1, 1, 1, n).expand(1, 1, 3, n)
    torch.testing.assert_close(ncc(fixed, moving)[0], expected)


def test_gc_of_perpendicular_ramps_is_zero_and_ngi_is_zero():
    """Gradients along u only vs along v only: each gradient NCC is 0/0 -> 0; the angle is 90 deg."""
    size = 12
    ramp = torch.arange(size, dtype=torch.float64)
    along_u = ramp.view(1, 1, 1, size).expand(1, 1, size, size) + 0.0
    along_v = ramp.view(1, 1, size, 1).expand(1, 1, size, size) + 0.0
    assert gradient_correlation(along_u, along_v).abs().item() < 1e-6
    assert normalised_gradient_information(along_u, along_v).abs().item() < 1e-6


def test_sobel_of_a_ramp_is_its_slope_per_pixel():
    size = 10
    image = (2.0 * torch.arange(size, dtype=torch.float64)).view(1, 1, 1, size).expand(1, 1, size, size)
    gradients = sobel_gradients(image + 0.0)
    assert gradients.shape == (1, 2, size - 2, size - 2)
    torch.testing.assert_close(gradients[:, 0], torch.full((1, size - 2, size - 2), 2.0, dtype=torch.float64))
    torch.testing.assert_close(gradients[:, 1], torch.zeros(1, size - 2, size - 2, dtype=torch.float64))


@pytest.mark.parametrize("name", sorted(SIMILARITIES))
def test_mask_ignores_pixels_outside_it(name):
    fixed, moving = random_images(seed=3), random_images(seed=4)
    mask = torch.zeros(1, 1, 24, 24, dtype=torch.float64)
    mask[..., 4:16, 6:20] = 1.0
    similarity = get_similarity(name)
    altered = moving.clone()
    altered[..., :, 21:] = 100.0  # outside the mask and its Sobel neighbourhood
    altered[..., :2, :] = -50.0
    torch.testing.assert_close(similarity(fixed, altered, mask), similarity(fixed, moving, mask))
    assert not torch.allclose(similarity(fixed, altered), similarity(fixed, moving))


@pytest.mark.parametrize("name", sorted(SIMILARITIES))
def test_similarity_decreases_with_a_shift(name):
    image = random_images(batch=1, size=40, seed=5)
    similarity = get_similarity(name)
    values = [float(similarity(image[..., 4:36, 4:36], image[..., 4 + s : 36 + s, 4:36])[0]) for s in (0, 1, 3)]
    assert values[0] > values[1] > values[2]


@pytest.mark.parametrize("name", sorted(SIMILARITIES))
@pytest.mark.parametrize("with_mask", [False, True])
def test_one_fixed_image_against_a_batch_equals_it_repeated(name, with_mask):
    images = random_images()
    mask = (torch.rand(1, 1, 24, 24, generator=torch.Generator().manual_seed(3)) > 0.3).double() if with_mask else None
    similarity = get_similarity(name)
    repeated = similarity(images[:1].expand_as(images), images, mask)
    torch.testing.assert_close(similarity(images[:1], images, mask), repeated)


def test_bad_input_raises_with_shapes():
    images = random_images()
    with pytest.raises(ValueError, match=r"fixed: expected shape \(2 or 1, 1, 24, 24\)"):
        ncc(images, images[:2])
    with pytest.raises(ValueError, match=r"moving: expected shape \(B, 1, H, W\)"):
        gradient_correlation(images[:, 0], images[:, 0])
    with pytest.raises(ValueError, match="mask"):
        normalised_gradient_information(images, images, torch.ones(2, 1, 24, 24, dtype=torch.float64))
    with pytest.raises(ValueError, match="similarity: expected one of"):
        get_similarity("mi")


@pytest.mark.parametrize("name", sorted(SIMILARITIES))
def test_gradcheck(name):
    fixed = random_images(batch=2, size=8, seed=6)
    moving = random_images(batch=2, size=8, seed=7).requires_grad_()
    mask = (torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(8), dtype=torch.float64) > 0.3).double()
    similarity = get_similarity(name)
    assert torch.autograd.gradcheck(lambda m: similarity(fixed, m, mask), (moving,))
