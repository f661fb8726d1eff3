"""Adam for the test-time optimisers, without PyTorch's compiler import.

Every ``torch.optim.Optimizer`` wraps ``add_param_group`` and ``step`` to keep ``torch.compile``
out, and that wrapper imports ``torch._dynamo`` on its first call: 1.2-1.9 s on this project's
2-core CPU, more than a whole ``register --refine`` network pass. :class:`Adam` keeps the
optimiser's state itself and updates through PyTorch's own functional form
(``torch.optim.adam.adam``, the single-tensor update that ``torch.optim.Adam`` runs on the CPU), so
its iterates are ``torch.optim.Adam``'s, bit for bit (``tests/optimisation/test_adam.py``), and the
import never happens. Training keeps ``torch.optim.Adam``: it runs for hours, not seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.optim.adam import adam


@dataclass
class _Moments:
    """One parameter's Adam state: its step count and first and second moments."""

    step: Tensor = field(default_factory=lambda: torch.tensor(0.0))
    exp_avg: Tensor | None = None
    exp_avg_sq: Tensor | None = None


class Adam:
    """``torch.optim.Adam(params, lr)`` with default betas and eps, one learning rate per parameter.

    Args:
        groups: ``(parameter, learning rate)`` pairs; each parameter a leaf tensor of any shape
            with ``requires_grad``, updated in place by :meth:`step`.
        betas: the decay rates of the first and second moments.
        eps: added to the second moment's root, as ``torch.optim.Adam``.

    A parameter whose ``grad`` is ``None`` at a step is skipped (its state does not advance), as
    ``torch.optim.Adam`` skips it.
    """

    def __init__(
        self, groups: Sequence[tuple[Tensor, float]], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        for parameter, _ in groups:
            if not parameter.is_leaf or not parameter.requires_grad:
                raise ValueError("Adam: every parameter must be a leaf tensor that requires grad")
        self.groups = list(groups)
        self.betas = betas
        self.eps = eps
        self.state = [_Moments() for _ in self.groups]

    def zero_grad(self) -> None:
        """Drop every parameter's gradient (``set_to_none``)."""
        for parameter, _ in self.groups:
            parameter.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of every parameter that has a gradient."""
        for (parameter, rate), moments in zip(self.groups, self.state, strict=True):
            if parameter.grad is None:
                continue
            if moments.exp_avg is None or moments.exp_avg_sq is None:
                moments.exp_avg = torch.zeros_like(parameter, memory_format=torch.preserve_format)
                moments.exp_avg_sq = torch.zeros_like(parameter, memory_format=torch.preserve_format)
            adam(
                [parameter],
                [parameter.grad],
                [moments.exp_avg],
                [moments.exp_avg_sq],
                [],
                [moments.step],
                foreach=False,
                amsgrad=False,
                beta1=self.betas[0],
                beta2=self.betas[1],
                lr=rate,
                weight_decay=0.0,
                eps=self.eps,
                maximize=False,
            )
