"""The network's convolutions on oneDNN against PyTorch's own CPU choice of kernel.

Usage::

    python benchmarks/bench_conv.py [--size lite] [--repeats 7] [--threads 2] [--out FILE]

Records every convolution of one forward pass of the registration network (``--size`` preset; the
inputs are the atlas's own DRRs, as in ``bench_network.py``) with its input's shape, then times
each, round-robin in one process, two ways with the layer's own weights:

- ``torch``: :func:`torch.nn.functional.conv3d` / ``conv2d``, which for a batch of one sends a
  convolution with ``N * C * H <= 20480`` to PyTorch's reference kernel (vol2col / im2col + GEMM);
- ``oneDNN``: the layer itself (:class:`biplanar.models.blocks.OneDnnConv3d` / ``OneDnnConv2d``),
  oneDNN at every size.

Each way is timed forward alone and forward plus backward (the input's and the weights' gradients,
as in a training step); medians after a warm-up. Prints the markdown section of
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_network import build_case
from harness import publish, round_robin_medians
from torch import Tensor, nn

FUNCTIONAL = {nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}


def recorded_convolutions(size: str) -> list[tuple[nn.Module, torch.Size]]:
    """``(layer, input shape)`` of every convolution, in the order one forward pass runs them."""
    network, steps = build_case(size)
    calls: list[tuple[nn.Module, torch.Size]] = []
    layers = [module for module in network.modules() if isinstance(module, (nn.Conv2d, nn.Conv3d))]
    hooks = [
        layer.register_forward_pre_hook(lambda layer, inputs: calls.append((layer, inputs[0].shape)))
        for layer in layers
    ]
    steps["forward"]()
    for hook in hooks:
        hook.remove()
    return calls


def torch_choice(layer: nn.Module) -> Callable[[Tensor], Tensor]:
    """The layer as PyTorch's functional convolution would run it (PyTorch's choice of kernel)."""
    functional = next(function for kind, function in FUNCTIONAL.items() if isinstance(layer, kind))
    return lambda images: functional(images, layer.weight, layer.bias, layer.stride, layer.padding)


def step(convolution: Callable[[Tensor], Tensor], images: Tensor, backward: bool) -> Callable[[], None]:
    """One forward (and backward: the input's and the weights' gradients) of ``convolution``."""

    def run() -> None:
        output = convolution(images)
        if backward:
            output.backward(torch.ones_like(output))

    return run


def measure(size: str, repeats: int) -> list[dict]:
    """Per recorded convolution: its shapes and the four medians (ms)."""
    rows = []
    for layer, shape in recorded_convolutions(size):
        images = torch.randn(shape, requires_grad=True)
        ways = {"torch": torch_choice(layer), "oneDNN": layer}
        steps = {
            f"{way} {part}": step(convolution, images, part == "fwd+bwd")
            for way, convolution in ways.items()
            for part in ("fwd", "fwd+bwd")
        }
        medians = round_robin_medians(steps, repeats)
        rows.append(
            {"shape": tuple(shape), "weight": tuple(layer.weight.shape), **{k: v * 1e3 for k, v in medians.items()}}
        )
    return rows


def report(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = measure(args.size, args.repeats)
    load_after = os.getloadavg()
    lines = [
        f"Command: `python benchmarks/bench_conv.py --size {args.size} --repeats {args.repeats} --threads "
        f"{args.threads}`, {datetime.date.today()}; torch {torch.__version__}, {args.threads} torch thread(s), "
        f"{os.cpu_count()} logical CPUs. Load average (1, 5, 15 min) "
        f"{', '.join(f'{x:.1f}' for x in load_before)} before and {', '.join(f'{x:.1f}' for x in load_after)} after.",
        "",
        "| input | weight | torch fwd ms | oneDNN fwd ms | torch fwd+bwd ms | oneDNN fwd+bwd ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    keys = ("torch fwd", "oneDNN fwd", "torch fwd+bwd", "oneDNN fwd+bwd")
    for row in rows:
        shapes = f"{'x'.join(map(str, row['shape']))} | {'x'.join(map(str, row['weight']))}"
        lines.append(f"| {shapes} | " + " | ".join(f"{row[key]:.1f}" for key in keys) + " |")
    totals = {key: sum(row[key] for row in rows) for key in keys}
    lines.append("| **all of one forward** | | " + " | ".join(f"**{totals[key]:.0f}**" for key in keys) + " |")
    lines += [
        "",
        f"Sum over the {len(rows)} convolutions: forward {totals['torch fwd'] / totals['oneDNN fwd']:.2f}x, "
        f"forward + backward {totals['torch fwd+bwd'] / totals['oneDNN fwd+bwd']:.2f}x faster on oneDNN.",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="lite", help="config preset of the network (tiny, lite, paper)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per way (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown here (default: print)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    publish(report(arguments), arguments.out)
