"""The registration loss (eq. 4) and Dice: closed forms, masking, gradients."""

import numpy as np
import pytest
import torch

from biplanar.config import LossConfig
from biplanar.layers.similarity import global_ncc, soft_dice
from biplanar.models.network import RegistrationOutput
from biplanar.training.losses import RegistrationLoss

SHAPE = (10, 9, 8)


def random_volume(seed: int, shape=SHAPE, dtype=torch.float32) -> torch.Tensor:
    """``(1, 1, *shape)`` values in [0.5, 1.5): texture in every window (no flat region)."""
    return 0.5 + torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def output_of(
    image: torch.Tensor,
    labels: torch.Tensor,
    displacement: torch.Tensor | None = None,
    affine_image: torch.Tensor | None = None,
) -> RegistrationOutput:
    """A network output whose warped (and affine) image is ``image``, labels ``labels``."""
    batch, shape = image.shape[0], image.shape[2:]
    displacement = torch.zeros(batch, 3, *shape, dtype=image.dtype) if displacement is None else displacement
    return RegistrationOutput(
        params=torch.zeros(batch, 7),
        affine_matrix=torch.eye(4).expand(batch, 4, 4),
        velocity=displacement,
        local_displacement=displacement,
        total_displacement=displacement,
        affine_image=image if affine_image is None else affine_image,
        warped_image=image,
        affine_labels=labels,
        warped_labels=labels,
    )


def test_global_ncc_closed_forms():
    a = random_volume(0)
    assert global_ncc(a, 3 * a - 1).item() == pytest.approx(1.0, abs=1e-6)
    assert global_ncc(a, -a).item() == pytest.approx(-1.0, abs=1e-6)


def test_global_ncc_matches_numpy_corrcoef():
    a, b = random_volume(1, dtype=torch.float64), random_volume(2, dtype=torch.float64)
    expected = np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1]
    assert global_ncc(a, b).item() == pytest.approx(expected, abs=1e-9)


def test_local_ncc_is_the_squared_windowed_ncc():
    """Convention pin: ``ncc="local"`` is MONAI's squared windowed NCC, so an inverted image also scores 1.

    (Scaling only: MONAI pads the windows with zeros, so ``3 a - 1`` is not an affine image of ``a`` at the
    border.)
    """
    loss = RegistrationLoss(LossConfig(ncc="local", ncc_window=3))
    a = random_volume(3)
    assert loss.ncc(a, 3 * a).item() == pytest.approx(1.0, abs=1e-4)
    assert loss.ncc(a, -a).item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("ncc", ["local", "global"])
def test_total_is_zero_for_an_identical_textured_pair(ncc):
    """Unmasked, both stages equal to the fixed volume, no local displacement: 0 + 0 + delta * 0."""
    fixed = random_volume(4)
    loss = RegistrationLoss(LossConfig(ncc=ncc, ncc_window=3, masked=False))
    parts = loss(output_of(fixed, torch.ones_like(fixed)), fixed, torch.ones_like(fixed))
    assert parts["total"].item() == pytest.approx(0.0, abs=1e-4)
    assert parts["smoothness"].item() == 0.0


def test_masked_global_total_is_zero_for_an_identical_femur():
    fixed_labels = box_labels(SHAPE, (2, 2, 2), (7, 6, 6))
    fixed = random_volume(5)
    loss = RegistrationLoss(LossConfig(ncc="global", masked=True))
    assert loss(output_of(fixed, fixed_labels), fixed, fixed_labels)["total"].item() == pytest.approx(0.0, abs=1e-5)


def test_masked_local_total_is_zero_for_an_identical_femur():
    fixed_labels = box_labels((16, 16, 16), (5, 5, 5), (11, 11, 11))
    fixed = random_volume(6, (16, 16, 16))
    loss = RegistrationLoss(LossConfig(ncc="local", ncc_window=5, masked=True))
    assert loss(output_of(fixed, fixed_labels), fixed, fixed_labels)["total"].item() == pytest.approx(0.0, abs=0.05)


def box_labels(shape, low, high) -> torch.Tensor:
    """``(1, 1, *shape)`` 1.0 inside the box ``low <= index < high``, else 0."""
    labels = torch.zeros(1, 1, *shape)
    labels[0, 0, low[0] : high[0], low[1] : high[1], low[2] : high[2]] = 1.0
    return labels


@pytest.mark.parametrize("ncc", ["local", "global"])
def test_masked_mode_ignores_voxels_outside_the_labels(ncc):
    labels = box_labels(SHAPE, (2, 2, 2), (8, 7, 6))
    fixed, moving = random_volume(7), random_volume(8)
    garbage = 100.0 * random_volume(9) * (1 - labels)
    garbage_outside, fixed_garbage_outside = moving * labels + garbage, fixed * labels + garbage.flip(2)
    loss = RegistrationLoss(LossConfig(ncc=ncc, ncc_window=3, masked=True))
    clean = loss(output_of(moving, labels), fixed, labels)
    dirty = loss(output_of(garbage_outside, labels), fixed_garbage_outside, labels)
    for name in ("affine_ncc", "local_ncc", "total"):
        assert dirty[name].item() == pytest.approx(clean[name].item(), abs=1e-6)
    unmasked = RegistrationLoss(LossConfig(ncc=ncc, ncc_window=3, masked=False))
    assert unmasked(output_of(garbage_outside, labels), fixed, labels)["total"].item() != pytest.approx(
        unmasked(output_of(moving, labels), fixed, labels)["total"].item(), abs=1e-3
    )


def test_smoothness_of_a_linear_displacement():
    """MONAI's diffusion loss: ``u_x = a i`` (mm, i the voxel index) has gradient ``a`` per voxel in one of
    3 components, so the mean over components and voxels of the squared gradient is ``a^2 / 3``."""
    slope = 0.7
    displacement = torch.zeros(1, 3, *SHAPE)
    displacement[0, 0] = slope * torch.arange(SHAPE[0], dtype=torch.float32)[:, None, None]
    fixed = random_volume(10)
    config = LossConfig(ncc="global", masked=False, smoothness_weight=0.5)
    parts = RegistrationLoss(config)(
        output_of(fixed, torch.ones_like(fixed), displacement), fixed, torch.ones_like(fixed)
    )
    assert parts["smoothness"].item() == pytest.approx(slope**2 / 3, rel=1e-6)
    assert parts["total"].item() == pytest.approx(config.smoothness_weight * slope**2 / 3, abs=1e-5)


@pytest.mark.parametrize("ncc", ["local", "global"])
def test_gradients_are_non_zero_and_match_finite_differences(ncc):
    shape = (6, 5, 5)
    labels = box_labels(shape, (1, 1, 1), (5, 4, 4)).double()
    fixed = random_volume(11, shape, torch.float64)
    loss = RegistrationLoss(LossConfig(ncc=ncc, ncc_window=3, masked=True))

    def total(warped, affine, displacement):
        return loss(output_of(warped, labels, displacement, affine), fixed, labels)["total"]

    inputs = (
        random_volume(12, shape, torch.float64).requires_grad_(),
        random_volume(13, shape, torch.float64).requires_grad_(),
        (0.1 * random_volume(14, (3, *shape), torch.float64)[0]).requires_grad_(),
    )
    total(*inputs).backward()
    for tensor in inputs:
        assert tensor.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(total, inputs, eps=1e-6, atol=1e-6, fast_mode=True)


def test_soft_dice_of_two_offset_boxes():
    """Two 4^3 boxes offset by one voxel overlap in 3 x 4 x 4: Dice = 2 * 48 / (64 + 64) = 0.75."""
    a = box_labels((8, 8, 8), (1, 1, 1), (5, 5, 5))
    b = box_labels((8, 8, 8), (2, 1, 1), (6, 5, 5))
    assert soft_dice(a, b).item() == pytest.approx(0.75, abs=1e-6)
    assert soft_dice(a, a).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("weight", [0.0, 0.5, 2.0])
def test_the_label_term_adds_its_weight_times_one_minus_dice(weight):
    """Identical images, labels two boxes offset by one voxel (Dice 0.75): the total is the
    unweighted total plus ``weight * 0.25``; ``label_dice`` is reported at every weight."""
    image = random_volume(19, (8, 8, 8))
    moving = box_labels((8, 8, 8), (1, 1, 1), (5, 5, 5))
    fixed = box_labels((8, 8, 8), (2, 1, 1), (6, 5, 5))
    unweighted = RegistrationLoss(LossConfig(masked=False))(output_of(image, moving), image, fixed)
    parts = RegistrationLoss(LossConfig(masked=False, label_dice_weight=weight))(output_of(image, moving), image, fixed)
    assert parts["label_dice"].item() == pytest.approx(0.75, abs=1e-5)
    assert parts["total"].item() == pytest.approx(unweighted["total"].item() + weight * 0.25, abs=1e-5)


def test_the_label_term_pulls_the_warped_label_towards_the_patients():
    """The gradient of the label term raises the warped label inside the patient's femur and
    lowers it outside (a descent step grows the overlap)."""
    image = random_volume(20, (8, 8, 8))
    fixed = box_labels((8, 8, 8), (2, 2, 2), (6, 6, 6))
    moving = (0.5 * torch.ones(1, 1, 8, 8, 8)).requires_grad_()
    loss = RegistrationLoss(LossConfig(masked=False, smoothness_weight=0.0, label_dice_weight=1.0))
    loss(output_of(image, moving), image, fixed)["total"].backward()
    inside = fixed.bool()
    assert (moving.grad[inside] < 0).all() and (moving.grad[~inside] > 0).all()


def test_batch_elements_are_independent():
    """Per-batch NCC values average: the loss of a batch of two is the mean of the two losses."""
    loss = RegistrationLoss(LossConfig(ncc="global", masked=False))
    fixed = torch.cat([random_volume(15), random_volume(16)])
    moving = torch.cat([random_volume(17), random_volume(18)])
    ones = torch.ones_like(fixed)
    both = loss(output_of(moving, ones), fixed, ones)["total"].item()
    single = [
        loss(output_of(moving[i : i + 1], ones[i : i + 1]), fixed[i : i + 1], ones[i : i + 1])["total"].item()
        for i in range(2)
    ]
    assert both == pytest.approx(sum(single) / 2, abs=1e-6)


@pytest.mark.parametrize("window", [3, 5, 9])
def test_the_label_region_is_the_union_dilated_by_the_ncc_window(window):
    """Three 1-D pools give the cube-window dilation (one 3-D max pool) of the labels' union."""
    generator = torch.Generator().manual_seed(window)
    first, second = ((torch.rand(2, 1, 24, 20, 22, generator=generator) > 0.998).float() for _ in range(2))
    region = RegistrationLoss(LossConfig(ncc_window=window)).label_region(first, 0.7 * second)
    union = torch.maximum(first, second)
    expected = torch.nn.functional.max_pool3d(union, window, stride=1, padding=window // 2)
    assert torch.equal(region, expected) and 0 < float(region.mean()) < 1
