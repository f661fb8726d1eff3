"""biplanar's Adam: torch.optim.Adam's iterates, without importing PyTorch's compiler."""

import subprocess
import sys

import pytest
import torch

from biplanar.optimisation.adam import Adam


def _quadratic_grads(parameters: list[torch.Tensor], targets: list[torch.Tensor]) -> None:
    loss = sum(((p - t) ** 2 * torch.arange(1, p.numel() + 1).view_as(p)).sum() for p, t in zip(parameters, targets))
    loss.backward()


def test_iterates_equal_torch_adam_bit_for_bit_with_a_skipped_parameter():
    generator = torch.Generator().manual_seed(0)
    shapes, rates = [(1, 3), (1, 3, 2, 2, 2)], [0.05, 0.3]
    targets = [torch.randn(shape, generator=generator) for shape in shapes]
    ours = [torch.randn(shape, generator=generator).requires_grad_() for shape in shapes]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    optimiser = Adam(list(zip(ours, rates)))
    reference = torch.optim.Adam([{"params": [p], "lr": rate} for p, rate in zip(theirs, rates)])
    for step in range(12):
        for parameters, opt in ((ours, optimiser), (theirs, reference)):
            opt.zero_grad()
            _quadratic_grads(parameters, targets)
            if step < 4:
                parameters[1].grad = None  # skipped, as the refinement's affine phase skips the velocity
            opt.step()
        for mine, torchs in zip(ours, theirs):
            assert torch.equal(mine, torchs)
    assert float(optimiser.state[1].step) == 8.0


def test_rejects_a_parameter_that_is_not_an_optimisable_leaf():
    with pytest.raises(ValueError, match="leaf tensor that requires grad"):
        Adam([(torch.zeros(3), 0.1)])


def test_stepping_does_not_import_the_compiler():
    code = (
        "import sys, torch\n"
        "from biplanar.optimisation.adam import Adam\n"
        "x = torch.ones(4, requires_grad=True)\n"
        "opt = Adam([(x, 0.1)])\n"
        "(x ** 2).sum().backward(); opt.step()\n"
        "assert float(x[0]) < 1.0\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
