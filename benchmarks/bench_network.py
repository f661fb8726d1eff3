"""The registration network: forward and training-step time, peak memory, FLOPs, training throughput.

Usage::

    python benchmarks/bench_network.py [--sizes tiny lite paper] [--repeats 5] [--threads 1]
        [--baseline SRC] [--out FILE]

Prints a markdown section (the one in ``docs/benchmarks.md``, "Registration network") to stdout,
or writes it to ``--out``. Every case runs in a fresh subprocess, so that its peak resident set
(``ru_maxrss``) is its own:

- ``forward``: the network in eval mode under ``torch.no_grad`` (inference, as ``register`` runs it);
- ``train``: one training step, train mode: forward, the eq. 4 loss, backward and an Adam step
  (``subjects/s`` = batch size 1 / its time);
- ``flops``: one forward under ``torch.utils.flop_counter.FlopCounterMode``, which counts
  convolutions and matrix products (2 FLOPs per multiply-add) but not ``grid_sample`` (ProST,
  inv-ProST, the warps and the scaling-and-squaring integration), nor element-wise operations;
- ``simulate``: one on-the-fly subject (:func:`biplanar.data.simulate.simulate_case`), the data cost
  of training without a dataset folder.

Inputs: the atlas's own DRRs along the paper's AP / LAT views at the config's detector; the fixed
volume is the atlas (the cost does not depend on the images' content).
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from harness import run_cli, spawn_job
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, register_flop_formula

from biplanar.config import load_config
from biplanar.data.atlas import load_atlas
from biplanar.data.simulate import SimulationConfig, simulate_case
from biplanar.geometry import biplanar_pair
from biplanar.models.network import AtlasRegistrationNet
from biplanar.training.losses import RegistrationLoss


@register_flop_formula(torch.ops.aten.mkldnn_convolution)
def _onednn_convolution_flops(x_shape, w_shape, bias, padding, stride, dilation, groups, *, out_shape=None, **kwargs):
    """FLOPs of the oneDNN convolution the network's layers call (``OneDnnConv3d``): those of
    ``aten.convolution``, which alone ``FlopCounterMode`` knows."""
    return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


SIZES = ("tiny", "lite", "paper")
PAPER_GFLOPS = 722.0  # Van Houtte et al. 2022, the network's cost per forward pass
# Per size, the cases run by default; the paper's training step (minutes and GB on a CPU) on request.
DEFAULT_CASES = {
    "tiny": ("forward", "train", "flops"),
    "lite": ("forward", "train", "flops", "simulate"),
    "paper": ("forward", "flops"),
}


@dataclass(frozen=True)
class Job:
    """One case in one subprocess.

    Attributes:
        kind: ``forward``, ``train``, ``flops`` or ``simulate`` (module doc).
        size: config preset (``tiny``, ``lite``, ``paper``).
        repeats: timed runs (median); ``flops`` and ``simulate`` run once after the warm-up.
        warmup: untimed runs first.
        threads: ``torch.set_num_threads``.
    """

    kind: str
    size: str
    repeats: int = 5
    warmup: int = 1
    threads: int = 1


def peak_rss_mib() -> float:
    """The process's peak resident set so far (Linux ``ru_maxrss`` is in KiB), MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build_case(size: str):
    """The network of preset ``size``, its inputs and a step function per measurement.

    Returns:
        ``(network, steps)``: ``steps[kind]()`` runs one ``forward`` or ``train`` step.
    """
    torch.manual_seed(0)
    config = load_config(size)
    network = AtlasRegistrationNet(config, load_atlas(config.geometry.grid_preset))
    geometry = config.geometry
    views = biplanar_pair(image_shape=geometry.image_shape, pixel_spacing_mm=(geometry.pixel_spacing_mm,) * 2)
    pair = [(views["AP"], views["LAT"])]
    with torch.no_grad():
        radiographs = network.projectors.project(network.atlas_femur_mu, pair)  # (1, 2, rows, cols)
    loss = RegistrationLoss(config.loss)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.training.learning_rate)

    def forward() -> None:
        network.eval()
        with torch.no_grad():
            network(radiographs, pair)

    def train() -> None:
        network.train()
        parts = loss(network(radiographs, pair), network.atlas_mu, network.atlas_labels)
        optimizer.zero_grad(set_to_none=True)
        parts["total"].backward()
        optimizer.step()

    return network, {"forward": forward, "train": train}


def timed(step, repeats: int, warmup: int) -> float:
    """Median wall time of ``step()`` over ``repeats`` runs after ``warmup`` runs, s."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_job(job: Job) -> dict:
    """Run ``job`` in this process; returns its measurements (see :func:`report` for the keys)."""
    torch.set_num_threads(job.threads)
    if job.kind == "simulate":
        config = SimulationConfig(preset=job.size)
        return {"seconds": timed(lambda: simulate_case(0, config), 1, job.warmup)}
    network, steps = build_case(job.size)
    result = {"parameters": sum(p.numel() for p in network.parameters())}
    if job.kind == "flops":
        counter = FlopCounterMode(display=False)
        with counter:
            steps["forward"]()
        return {**result, "gflops": counter.get_total_flops() / 1e9}
    baseline = peak_rss_mib()
    seconds = timed(steps[job.kind], job.repeats, job.warmup)
    peak = peak_rss_mib()
    return {**result, "seconds": seconds, "peak_mib": peak, "extra_mib": peak - baseline}


def cell(result: dict | None, key: str, form: str) -> str:
    if result is None:
        return "-"
    if "failed" in result:
        return f"failed ({result['failed']})"
    return format(result[key], form)


def size_row(size: str, results: dict[str, dict], label: str = "") -> str:
    config = load_config(size)
    grid = load_atlas(config.geometry.grid_preset).grid.shape
    forward, train, flops = results.get("forward"), results.get("train"), results.get("flops")
    parameters = next((r["parameters"] for r in results.values() if "parameters" in r), None)
    throughput = "-" if train is None or "failed" in train else f"{1.0 / train['seconds']:.2f}"
    return (
        "| "
        + " | ".join(
            [
                f"{size}{label}",
                "x".join(map(str, grid)),
                "x".join(map(str, config.geometry.image_shape)),
                f"{parameters:,}" if parameters is not None else "-",
                cell(forward, "seconds", ".2f"),
                cell(forward, "peak_mib", ".0f"),
                cell(forward, "extra_mib", ".0f"),
                cell(train, "seconds", ".2f"),
                cell(train, "peak_mib", ".0f"),
                cell(train, "extra_mib", ".0f"),
                throughput,
                cell(flops, "gflops", ".1f"),
            ]
        )
        + " |"
    )


def report(args: argparse.Namespace) -> str:
    """Run every case and return the markdown section."""
    load_before = os.getloadavg()
    # Rows: (size, label) -> kind -> result; with --baseline, each case of the two sources in turn.
    sources = {"": None} if args.baseline is None else {" (this checkout)": None, " (baseline)": args.baseline}
    results: dict[tuple[str, str], dict[str, dict]] = {(size, label): {} for size in args.sizes for label in sources}
    for size in args.sizes:
        for kind in DEFAULT_CASES[size]:
            for label, source in sources.items():
                job = Job(kind, size, args.repeats, 1, args.threads)
                results[size, label][kind] = spawn_job(__file__, job, args.timeout, source)
        if size == "paper" and args.paper_train:
            for label, source in sources.items():
                job = Job("train", "paper", 1, 0, args.threads)
                results[size, label]["train"] = spawn_job(__file__, job, args.timeout, source)
    load_after = os.getloadavg()
    command = " ".join(["python benchmarks/bench_network.py", *sys.argv[1:]])
    lines = [
        f"Command: `{command}`, {datetime.date.today().isoformat()}; torch {torch.__version__}, "
        f"{args.threads} torch thread(s), {os.cpu_count()} logical CPUs, CPU only. Load average (1, 5, 15 min) "
        f"{', '.join(f'{x:.1f}' for x in load_before)} before and "
        f"{', '.join(f'{x:.1f}' for x in load_after)} after (the benchmark's own process accounts for about "
        "1; more means other jobs shared the cores and the times are pessimistic).",
        "",
        f"Times: medians of {args.repeats} runs after 1 warm-up, batch 1. Peak RSS: the process's `ru_maxrss` "
        "(torch and the atlas included); extra: its rise during the timed runs over the set-up's peak.",
        "",
        "| config | atlas grid | images | parameters | forward s | peak RSS MiB | extra MiB | train step s "
        "| peak RSS MiB | extra MiB | train subjects/s | GFLOPs / forward |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(size_row(size, results[size, label], label) for size, label in results),
        "",
        "- train step: forward + eq. 4 loss + backward + Adam step; subjects/s = 1 / its time (the lite "
        "row is the training throughput).",
        "- GFLOPs: `torch.utils.flop_counter.FlopCounterMode` over one forward, 2 FLOPs per multiply-add of "
        "convolutions and matrix products; it does not count `grid_sample` (ProST, inv-ProST, warps, "
        f"scaling and squaring) nor element-wise work. The paper reports {PAPER_GFLOPS:.0f} GFLOPs per "
        "forward at its size (it does not say whether it counts multiply-adds once or twice).",
    ]
    if "paper" in args.sizes:
        lines.append(
            "- paper train step: one run without warm-up (`--paper-train`)."
            if args.paper_train
            else "- paper train step: not run (pass `--paper-train`; minutes and GB on a CPU)."
        )
    if args.baseline is not None:
        lines.append(f"- baseline: the package in `{args.baseline}`, each case run alternately with this checkout's.")
    simulate = results.get(("lite", next(iter(sources))), {}).get("simulate")
    if simulate is not None and "failed" not in simulate:
        lines.append(
            f"- On-the-fly data (`train --on-the-fly`): simulating one lite subject takes "
            f"{simulate['seconds']:.2f} s, on top of the train step, unless `training.num_workers` "
            "processes simulate ahead."
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES))
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in each case")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per case")
    parser.add_argument("--paper-train", action="store_true", help="also time a training step at the paper size")
    parser.add_argument("--baseline", type=Path, help="a src folder of another checkout, measured side by side")
    parser.add_argument("--out", type=Path, help="write the markdown here instead of stdout")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one case, as JSON
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    run_cli(parse_args, Job, run_job, report, argv)


if __name__ == "__main__":
    main()
