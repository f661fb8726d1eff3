"""SOPI's fine-network training step: the DRR-Jacobian chain rule against autograd's double backward.

Usage::

    python benchmarks/bench_sopi_fine.py [--configs sopi_lite sopi_lumbar] [--repeats 5] [--threads 1] [--out FILE]

The training loss needs ``g = dL_N/dtheta`` with its graph to the encoders' weights, then the
gradient of a loss on ``g`` (a double backward). Two ways to get it, same batch, same network:

- ``autograd``: ``torch.autograd.grad(L_N, theta, create_graph=True)`` through ProST, so the second
  backward differentiates ``grid_sample``'s backward (``GridSampler3DBackwardBackward``); this is
  what the public SOPI code does with its own ProST.
- ``jacobian`` (biplanar's trainer): ``g = J^T dL_N/dI`` with ``J = dI/dtheta`` from
  :meth:`biplanar.layers.prost.ProST.project_with_pose_jacobian` (one sampling backward, no
  graph), so the second backward runs through the encoders only.

Per config, one worker process times the two round-robin (forward and both backwards, up to the
weight gradients; medians after a warm-up) and compares their weight gradients; a fresh worker
per variant reads its peak RSS. Prints the markdown section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import statistics
import time
from dataclasses import dataclass

import torch
from harness import run_cli, spawn_job

from biplanar.geometry.se3 import geodesic_direction
from biplanar.models.sopi import build_network, load_sopi_config
from biplanar.training.pose_data import TRAIN_STREAM, PosePairSimulator, project_mask
from biplanar.training.pose_losses import gradient_alignment_loss, masked_feature_distance
from biplanar.training.pose_trainer import fine_forward

VARIANTS = ("autograd", "jacobian")


@dataclass(frozen=True)
class Job:
    """One worker: ``variant`` ``"both"`` times both round-robin; a single variant reads its peak RSS."""

    config: str
    variant: str
    repeats: int
    threads: int


def autograd_loss(network, simulator: PosePairSimulator, batch) -> torch.Tensor:
    """The reference: ``dL_N/dtheta`` by autograd through ProST with ``create_graph``."""
    params = batch.start_params.clone().requires_grad_(True)
    pose = simulator.pose_matrix(params)
    mask = project_mask(simulator.prost, batch.mask_volume, pose.detach(), simulator.config.data.mask_min_path_mm)
    moving, fixed = network(simulator.prost(batch.volume_mu, pose), batch.radiograph)
    (gradient,) = torch.autograd.grad(masked_feature_distance(moving, fixed, mask).sum(), params, create_graph=True)
    return gradient_alignment_loss(
        gradient, geodesic_direction(params.detach(), batch.target_params, simulator.centre)
    )["total"]


def weight_gradients(variant: str, network, simulator: PosePairSimulator, batch) -> list[torch.Tensor]:
    """The encoders' weight gradients of the alignment loss by ``variant``."""
    network.zero_grad(set_to_none=True)
    if variant == "autograd":
        loss = autograd_loss(network, simulator, batch)
    else:
        loss = fine_forward(network, simulator, batch)["total"]
    loss.backward()
    return [parameter.grad.detach().clone() for parameter in network.parameters() if parameter.grad is not None]


def run_job(job: Job) -> dict:
    torch.set_num_threads(job.threads)
    torch.manual_seed(0)
    config = load_sopi_config(job.config)
    simulator = PosePairSimulator(config)
    network = build_network(config, "fine").train()
    batch = simulator.sample(TRAIN_STREAM, 0, config.training.batch_size)
    if job.variant != "both":
        weight_gradients(job.variant, network, simulator, batch)
        return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    gradients = {variant: weight_gradients(variant, network, simulator, batch) for variant in VARIANTS}  # warm-up
    jacobian, reference = (torch.cat([g.flatten() for g in gradients[variant]]) for variant in ("jacobian", "autograd"))
    difference = float((jacobian - reference).norm() / reference.norm())
    times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for _ in range(job.repeats):
        for variant in VARIANTS:
            started = time.perf_counter()
            weight_gradients(variant, network, simulator, batch)
            times[variant].append(time.perf_counter() - started)
    return {
        **{f"{variant}_s": statistics.median(values) for variant, values in times.items()},
        "relative_difference": difference,
        "batch": config.training.batch_size,
        "image": "x".join(map(str, config.geometry.image_shape)),
        "samples": config.geometry.num_samples,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["sopi_lite", "sopi_lumbar"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def report(args: argparse.Namespace) -> str:
    load_before = os.getloadavg()
    rows = []
    for name in args.configs:
        timing = spawn_job(__file__, Job(name, "both", args.repeats, args.threads))
        memory = {variant: spawn_job(__file__, Job(name, variant, 1, args.threads)) for variant in VARIANTS}
        if "failed" in timing:
            rows.append(f"| {name} | failed: {timing['failed']} | | | | | | |")
            continue
        rss = [f"{memory[variant].get('peak_rss_mib', float('nan')):.0f}" for variant in VARIANTS]
        rows.append(
            f"| {name} | {timing['image']}, {timing['samples']} samples, batch {timing['batch']} | "
            f"{timing['autograd_s']:.2f} | {timing['jacobian_s']:.2f} | "
            f"{timing['autograd_s'] / timing['jacobian_s']:.1f}x | {rss[0]} | {rss[1]} | "
            f"{timing['relative_difference']:.1e} |"
        )
    load_after = os.getloadavg()
    command = "python benchmarks/bench_sopi_fine.py " + " ".join(
        ["--configs", *args.configs, "--repeats", str(args.repeats), "--threads", str(args.threads)]
    )
    return "\n".join(
        [
            "## SOPI fine-network training step",
            "",
            f"Command: `{command}`, {datetime.date.today().isoformat()}; torch {torch.__version__}, "
            f"{args.threads} torch thread(s), {os.cpu_count()} logical CPUs, {platform.machine()}. Load average "
            f"(1, 5, 15 min) {', '.join(f'{x:.1f}' for x in load_before)} before and "
            f"{', '.join(f'{x:.1f}' for x in load_after)} after.",
            "",
            f"One step's weight gradients (forward, `dL_N/dtheta`, the alignment loss's backward), medians of "
            f"{args.repeats} round-robin runs after a warm-up; peak RSS of a fresh process doing one step. "
            "Gradient difference: `|g_J - g_A| / |g_A|` over all the encoders' weight gradients (float32).",
            "",
            "| config | inputs | autograd double backward s | DRR-Jacobian chain rule s | speed-up | "
            "peak RSS autograd MiB | peak RSS Jacobian MiB | gradient difference |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
            *rows,
        ]
    )


if __name__ == "__main__":
    run_cli(parse_args, Job, run_job, report)
