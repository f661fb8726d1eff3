"""diffusion_energy: MONAI's DiffusionLoss value and gradient, a closed form, gradcheck, bad shapes."""

from __future__ import annotations

import warnings

import pytest
import torch

from biplanar.layers.smoothness import diffusion_energy


def _monai_diffusion_loss(field: torch.Tensor) -> torch.Tensor:
    from monai.losses import DiffusionLoss

    with warnings.catch_warnings():  # MONAI 1.x indexes with a list (a torch deprecation warning)
        warnings.simplefilter("ignore")
        return DiffusionLoss()(field)


@pytest.mark.parametrize("shape", [(1, 3, 5, 6, 7), (2, 3, 3, 4, 9)])
def test_value_and_gradient_equal_monai(shape):
    generator = torch.Generator().manual_seed(sum(shape))
    field = torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=True)
    ours = diffusion_energy(field)
    reference = _monai_diffusion_loss(field)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=0)
    (our_grad,) = torch.autograd.grad(ours * 3.0, field)
    (reference_grad,) = torch.autograd.grad(reference * 3.0, field)
    torch.testing.assert_close(our_grad, reference_grad, rtol=0, atol=1e-14)


def test_linear_field_closed_form():
    # u_x = a * i (voxel index along the first axis): g = a along that axis only, E = a^2 / 3 (three channels).
    slope = 0.7
    index = torch.arange(6, dtype=torch.float64)
    field = torch.zeros(1, 3, 6, 5, 4, dtype=torch.float64)
    field[:, 0] = slope * index[:, None, None]
    assert float(diffusion_energy(field)) == pytest.approx(slope**2 / 3, rel=1e-12)
    assert float(diffusion_energy(field + 4.2)) == pytest.approx(slope**2 / 3, rel=1e-12)  # translation-invariant


def test_gradcheck():
    field = torch.randn(1, 3, 4, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(diffusion_energy, (field,))


@pytest.mark.parametrize("shape", [(1, 2, 5, 5, 5), (1, 3, 2, 5, 5), (3, 5, 5, 5)])
def test_bad_shapes_raise(shape):
    with pytest.raises(ValueError, match=r"displacement: expected shape \(B, 3, I, J, K\)"):
        diffusion_energy(torch.zeros(shape))
