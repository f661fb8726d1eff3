"""ProST and the registration network's training step on a GPU: speed, peak memory, agreement.

Usage::

    python benchmarks/bench_gpu.py [--device cuda] [--sizes paper lite] [--repeats 20] [--warmup 3]
        [--train-repeats 5] [--train-warmup 2] [--train-batch-sizes 1 4] [--budget-s 150]
        [--compile-cap-s 60] [--ct CT.nii.gz] [--out FILE]

Prints a markdown section for ``docs/benchmarks.md``, "GPU (<device name>)", to stdout (and with
``--out`` also writes it there). Progress goes to stderr, one flushed line per case. Made for one
run on a lent GPU machine; ``--device cpu`` with small ``--sizes`` / repeats is its smoke test.

What is measured, each case (one cell) on its own, in one process:

- ProST (:mod:`bench_prost`'s geometry: the AP view of ``biplanar_pair``, its ``SIZES`` and its
  real-CT volume) for ``algorithm="rays"`` and ``"slices"``, float32 and bfloat16 input volumes,
  no pose (as the network's projectors call it): ``forward`` under ``torch.no_grad``;
  ``fwd+bwd``, ``image.sum()`` back-propagated to the volume; ``batch 8``, a forward of 8
  volumes at once, time per volume. Agreement (NCC, relative L1) of each forward image with
  :func:`bench_prost.exact_image`, ray sampling at 8 K samples per ray in float32 (on the CPU).
  What ``"auto"`` picks on the device is stated. ``torch.compile`` of the ``"rays"`` module's
  forward runs last, in a subprocess killed after ``--compile-cap-s`` (or the budget left).
- The registration network's training step as ``biplanar train`` makes it (bf16 autocast around
  the forward only, the eq. 4 loss in float32, backward, Adam step, under the trainer's
  ``deterministic_algorithms``) for the ``lite`` config (batch 1 and 4) and the ``paper`` config
  (batch 1), each with ``training.bf16`` and ``training.activation_checkpointing`` off and on.
  Inputs: the atlas's own DRRs along the config's AP / LAT views, the atlas as the fixed volume.

Times: on CUDA, ``torch.cuda.Event`` pairs around each run (on CPU wall time); medians of the
timed runs after untimed warm-up runs. Peak memory (CUDA only): ``torch.cuda.max_memory_allocated``
over the warm-up and timed runs of a case, reset after the case's set-up (so the inputs, the model
and its optimizer state count, earlier cases do not). A case that fails (out of memory, an
unsupported dtype) is reported in its cell and the rest still run; once ``--budget-s`` seconds
have passed since the start, the cases left are reported as "skipped (time budget)".
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_prost import REFERENCE_OVERSAMPLING, SIZES, BenchSize, agreement, attenuation_volume, cpu_name, exact_image
from harness import run_cli, spawn_job

from biplanar.config import ExperimentConfig, load_config
from biplanar.data.atlas import load_atlas
from biplanar.data.real_ct import REAL_CT
from biplanar.geometry import biplanar_pair
from biplanar.layers.prost import ProST
from biplanar.models.network import AtlasRegistrationNet, RegistrationOutput
from biplanar.training.losses import RegistrationLoss
from biplanar.training.trainer import deterministic_algorithms

PROST_ALGORITHMS = ("rays", "slices")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# forward only; forward + backward w.r.t. the volume; forward of BATCH volumes (time per volume).
PROST_MEASUREMENTS = ("forward", "volume", "batch")
BATCH = 8
TRAIN_CONFIGS = ("lite", "paper")  # in this order: the cheap one first, in case the budget runs out
TRAIN_BATCH_SIZES = {"lite": (1, 4), "paper": (1,)}
# (training.bf16, training.activation_checkpointing)
TRAIN_VARIANTS = ((False, False), (True, False), (False, True), (True, True))
MIN_COMPILE_S = 10.0  # torch.compile is not tried with less of the budget left

Result = dict[str, Any]  # a case's measurements, or {"failed": reason} / {"skipped": reason}


@dataclass
class Budget:
    """The run's time budget: ``seconds`` from ``start`` (``time.monotonic``)."""

    seconds: float
    start: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()


def progress(budget: Budget, message: str) -> None:
    """One progress line on stderr, flushed, with the seconds since the start."""
    print(f"[{budget.elapsed():7.1f} s] {message}", file=sys.stderr, flush=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """Start a case's peak-memory reading (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    """Peak allocated device memory since :func:`reset_peak`, MiB; ``None`` off CUDA."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def free_memory(device: torch.device) -> None:
    """Drop what a finished (or failed) case left: garbage, then the CUDA allocator's cache."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def one_run_ms(step: Callable[[], Any], device: torch.device) -> float:
    """One run of ``step()``, ms: between two CUDA events on CUDA, wall time elsewhere."""
    if device.type != "cuda":
        started = time.perf_counter()
        step()
        return 1e3 * (time.perf_counter() - started)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    step()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def median_ms(step: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> float:
    """Median of ``repeats`` timed runs of ``step()`` after ``warmup`` untimed ones, ms."""
    for _ in range(warmup):
        step()
    synchronize(device)
    return statistics.median(one_run_ms(step, device) for _ in range(max(repeats, 1)))


def one_line(error: BaseException) -> str:
    """``Type: first line of the message``, at most 160 characters."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:160]


def run_case(label: str, budget: Budget, device: torch.device, measure: Callable[[], Result]) -> Result:
    """``measure()``, or ``{"skipped": ...}`` past the budget, or ``{"failed": reason}`` if it raises;
    device memory is freed after it either way."""
    if budget.left() <= 0:
        progress(budget, f"{label}: skipped (time budget)")
        return {"skipped": "time budget"}
    progress(budget, f"{label} ...")
    started = time.monotonic()
    try:
        result = measure()
    except torch.cuda.OutOfMemoryError:
        result = {"failed": "out of memory"}
    except Exception as error:
        result = {"failed": one_line(error)}
    free_memory(device)
    values = ", ".join(f"{key} {value:.4g}" for key, value in result.items() if isinstance(value, float))
    outcome = result.get("failed") or values or "done"
    progress(budget, f"{label}: {outcome} ({time.monotonic() - started:.1f} s)")
    return result


# --- ProST ---------------------------------------------------------------------------------------


def prost_layer(size: BenchSize, algorithm: str, device: torch.device) -> ProST:
    """``ProST`` of ``size``'s AP view and grid (as in :mod:`bench_prost`) on ``device``."""
    view = biplanar_pair(image_shape=size.image_shape, pixel_spacing_mm=size.pixel_spacing_mm)["AP"]
    return ProST(view, size.grid(), num_samples=size.num_samples, algorithm=algorithm).to(device)


def prost_step(prost: ProST, measurement: str, volume: torch.Tensor) -> Callable[[], torch.Tensor]:
    """One run of a ProST case: ``step() -> (B, 1, rows, cols)`` line integrals, no graph.

    Args:
        prost: the layer, on the volume's device.
        measurement: one of :data:`PROST_MEASUREMENTS`.
        volume: ``(1, 1, I, J, K)`` attenuation (1/mm) on the layer's grid, in the case's dtype;
            ``batch`` repeats it to ``(BATCH, 1, I, J, K)``.
    """
    if measurement == "batch":
        volume = volume.repeat(BATCH, 1, 1, 1, 1)
    volume = volume.detach().clone().requires_grad_(measurement == "volume")

    def step() -> torch.Tensor:
        if measurement != "volume":
            with torch.no_grad():
                return prost(volume)
        image = prost(volume)
        image.sum().backward()
        volume.grad = None
        return image.detach()

    return step


def measure_prost(
    size: BenchSize,
    algorithm: str,
    dtype: torch.dtype,
    measurement: str,
    volume: torch.Tensor,
    args: argparse.Namespace,
) -> Result:
    """One ProST case: ``{"ms", "peak_mib"}`` (ms per volume for ``batch``), and for ``forward`` the
    ``(rows, cols)`` float64 ``image``.

    Args:
        volume: ``(1, 1, I, J, K)`` float32 attenuation on ``size.grid()``, on the CPU.
    """
    device = torch.device(args.device)
    prost = prost_layer(size, algorithm, device)
    step = prost_step(prost, measurement, volume.to(device, dtype))
    reset_peak(device)
    ms = median_ms(step, device, args.repeats, args.warmup)
    result: Result = {"ms": ms / (BATCH if measurement == "batch" else 1), "peak_mib": peak_mib(device)}
    if measurement == "forward":
        result["image"] = step()[0, 0].double().cpu().numpy()
    return result


@dataclass
class ProstResults:
    """One size's ProST cases.

    Attributes:
        reference: ``{"image": (rows, cols) float64}`` (:func:`bench_prost.exact_image`), or why not.
        cases: per ``(algorithm, dtype name, measurement)``, :func:`measure_prost`'s result.
    """

    reference: Result
    cases: dict[tuple[str, str, str], Result] = field(default_factory=dict)


def prost_cases(size: BenchSize, volume: torch.Tensor, args: argparse.Namespace, budget: Budget) -> ProstResults:
    """Every ProST case of one size, the reference first.

    Args:
        volume: ``(1, 1, I, J, K)`` float32 attenuation on ``size.grid()``, on the CPU.
    """
    device = torch.device(args.device)
    label = f"prost {size.name} reference ({REFERENCE_OVERSAMPLING} K ray samples, CPU)"
    results = ProstResults(run_case(label, budget, device, lambda: {"image": exact_image(size, volume)}))
    for algorithm in PROST_ALGORITHMS:
        for dtype_name, dtype in DTYPES.items():
            for measurement in PROST_MEASUREMENTS:
                measure = functools.partial(measure_prost, size, algorithm, dtype, measurement, volume, args)
                label = f"prost {size.name} {algorithm} {dtype_name} {measurement}"
                results.cases[algorithm, dtype_name, measurement] = run_case(label, budget, device, measure)
    return results


@dataclass(frozen=True)
class CompileJob:
    """``torch.compile`` of a ``"rays"`` ProST's forward, in a subprocess (:func:`harness.spawn_job`).

    Attributes:
        size: a :data:`bench_prost.SIZES` name.
        device: the torch device.
        volume_path: a ``torch.save`` d ``(1, 1, I, J, K)`` float32 attenuation volume.
        repeats, warmup: timed and untimed forwards after the first (compiling) call.
    """

    size: str
    device: str
    volume_path: str
    repeats: int
    warmup: int


def run_compile_job(job: CompileJob) -> Result:
    """Compile and time: ``{"compile_s": first call, "ms": median forward, "eager_ms", "max_rel_diff"}``
    (``max |compiled - eager| / max |eager|`` of the images), or ``{"failed": the error's first line}``
    (the last line of a failed compile's stderr rarely names the error)."""
    device = torch.device(job.device)
    volume = torch.load(job.volume_path, weights_only=True).to(device)  # (1, 1, I, J, K)
    prost = prost_layer(SIZES[job.size], "rays", device)
    compiled = torch.compile(prost)
    with torch.no_grad():
        started = time.perf_counter()
        try:
            image = compiled(volume)
        except Exception as error:
            return {"failed": one_line(error)}
        synchronize(device)
        compile_s = time.perf_counter() - started
        eager = prost(volume)
        return {
            "compile_s": compile_s,
            "ms": median_ms(lambda: compiled(volume), device, job.repeats, job.warmup),
            "eager_ms": median_ms(lambda: prost(volume), device, job.repeats, job.warmup),
            "max_rel_diff": float((image - eager).abs().max() / eager.abs().max()),
        }


def compile_case(size: BenchSize, volume_path: Path, args: argparse.Namespace, budget: Budget) -> Result:
    """:class:`CompileJob` in a fresh process, killed after ``--compile-cap-s`` or the budget left."""
    cap = min(args.compile_cap_s, budget.left())
    if cap < MIN_COMPILE_S:
        return {"skipped": "time budget" if args.compile_cap_s > 0 else "--compile-cap-s 0"}
    # One compile process, no worker pool: a killed run then leaves no process holding its pipes.
    os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    job = CompileJob(size.name, args.device, str(volume_path), args.repeats, args.warmup)
    return run_case(
        f"torch.compile prost {size.name} rays float32 forward (cap {cap:.0f} s)",
        budget,
        torch.device(args.device),
        lambda: spawn_job(__file__, job, cap),
    )


# --- the registration network's training step ----------------------------------------------------


def with_training(config: ExperimentConfig, batch_size: int, bf16: bool, checkpointing: bool) -> ExperimentConfig:
    """``config`` with these ``training`` fields replaced."""
    training = dataclasses.replace(
        config.training, batch_size=batch_size, bf16=bf16, activation_checkpointing=checkpointing
    )
    return dataclasses.replace(config, training=training)


def as_float32(output: RegistrationOutput) -> RegistrationOutput:
    """Every tensor of ``output`` in float32 (the trainer's loss runs outside bf16 autocast)."""
    return RegistrationOutput(**{f.name: getattr(output, f.name).float() for f in dataclasses.fields(output)})


def training_step(config: ExperimentConfig, device: torch.device) -> Callable[[], torch.Tensor]:
    """``step() -> ()`` loss: one optimizer step of the network of ``config`` on ``device``.

    The batch (``training.batch_size`` copies of one subject): radiographs ``(B, 2, rows, cols)``,
    the atlas femur's DRRs along the config's AP / LAT views; fixed attenuation and labels
    ``(B, 1, I, J, K)``, the atlas's own.
    """
    torch.manual_seed(config.training.seed)
    network = AtlasRegistrationNet(config, load_atlas(config.geometry.grid_preset)).to(device)
    batch_size, geometry = config.training.batch_size, config.geometry
    views = biplanar_pair(image_shape=geometry.image_shape, pixel_spacing_mm=(geometry.pixel_spacing_mm,) * 2)
    pairs = [(views["AP"], views["LAT"])] * batch_size
    with torch.no_grad():
        radiographs = network.projectors.project(network.atlas_femur_mu.repeat(batch_size, 1, 1, 1, 1), pairs)
    fixed_mu, fixed_labels = (
        volume.repeat(batch_size, 1, 1, 1, 1) for volume in (network.atlas_mu, network.atlas_labels)
    )
    loss = RegistrationLoss(config.loss).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.training.learning_rate)
    network.train()

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.training.bf16):
            output = network(radiographs, pairs)
        total = loss(as_float32(output), fixed_mu, fixed_labels)["total"]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return total.detach()

    return step


def measure_training(config: ExperimentConfig, args: argparse.Namespace) -> Result:
    """``{"ms": median step, "peak_mib", "loss": the first step's}`` (at least one warm-up step)."""
    device = torch.device(args.device)
    step = training_step(config, device)
    reset_peak(device)
    with deterministic_algorithms():
        losses = [float(step()) for _ in range(max(args.train_warmup, 1))]
        ms = median_ms(step, device, args.train_repeats, 0)
    return {"ms": ms, "peak_mib": peak_mib(device), "loss": losses[0]}


def training_cases(name: str, args: argparse.Namespace, budget: Budget) -> list[tuple[ExperimentConfig, Result]]:
    """Every training-step case of config preset ``name``, with its config."""
    batch_sizes = args.train_batch_sizes or TRAIN_BATCH_SIZES[name]
    cases = []
    for batch_size in batch_sizes:
        for bf16, checkpointing in TRAIN_VARIANTS:
            config = with_training(load_config(name), batch_size, bf16, checkpointing)
            label = f"train {name} batch {batch_size} bf16 {bf16} checkpointing {checkpointing}"
            measure = functools.partial(measure_training, config, args)
            cases.append((config, run_case(label, budget, torch.device(args.device), measure)))
    return cases


# --- the report ----------------------------------------------------------------------------------


def cell(result: Result, key: str, form: str) -> str:
    """A table cell: ``result[key]`` formatted, or why there is none."""
    if "skipped" in result:
        return f"skipped ({result['skipped']})"
    if "failed" in result:
        return f"failed ({result['failed']})"
    value = result.get(key)
    return "-" if value is None else format(value, form)


def agreement_cells(forward: Result, reference: Result) -> list[str]:
    """NCC and relative L1 of a forward case's image against the reference image."""
    for result in (forward, reference):
        if "image" not in result:
            reason = cell(result, "image", "")
            return [reason, reason]
    bad = int((~np.isfinite(forward["image"])).sum())
    if bad:
        return [f"{bad} non-finite pixels", "-"]
    ncc, rel_l1 = agreement(forward["image"], reference["image"])
    return [f"{ncc:.6f}", f"{100 * rel_l1:.4f} %"]


def prost_lines(size: BenchSize, results: ProstResults, auto: str, description: str) -> list[str]:
    """Markdown: one size's ProST table and its caption."""
    lines = [
        f"**{size.name}**: {'x'.join(map(str, size.volume_shape))} voxels of "
        f"{'x'.join(map(str, size.spacing_mm))} mm; {size.image_shape[0]}x{size.image_shape[1]} detector "
        f"pixels of {size.pixel_spacing_mm[0]} mm; K = {size.num_samples}; {description}. "
        f'`algorithm="auto"` runs `"{auto}"` here.',
        "",
        f"| algorithm | input dtype | forward ms | fwd+bwd (volume) ms | batch {BATCH} forward ms / volume "
        f"| peak MiB fwd / fwd+bwd / batch {BATCH} | NCC vs reference | rel. L1 vs reference |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for algorithm in PROST_ALGORITHMS:
        for dtype_name in DTYPES:
            cases = [results.cases[algorithm, dtype_name, measurement] for measurement in PROST_MEASUREMENTS]
            cells = [algorithm, dtype_name, *(cell(case, "ms", ".2f") for case in cases)]
            peaks = [cell(case, "peak_mib", ".0f") for case in cases]
            cells.append(peaks[0] if len(set(peaks)) == 1 else " / ".join(peaks))
            cells += agreement_cells(cases[0], results.reference)
            lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def compile_line(size: BenchSize, result: Result) -> str:
    """Markdown: the ``torch.compile`` outcome."""
    what = f'- `torch.compile` of `ProST(..., algorithm="rays")`, {size.name}, float32 forward'
    if "skipped" in result or "failed" in result:
        status = "skipped" if "skipped" in result else "failed"
        return f"{what}: {status} ({result.get('skipped') or result.get('failed')})."
    return (
        f"{what}: first call (compiling) {result['compile_s']:.1f} s; then {result['ms']:.2f} ms per forward "
        f"against {result['eager_ms']:.2f} ms eager (same process); max |compiled - eager| / max |eager| = "
        f"{result['max_rel_diff']:.1e}."
    )


def training_lines(cases: list[tuple[ExperimentConfig, Result]]) -> list[str]:
    """Markdown: the training-step table (peak MiB: model, optimizer state and batch included)."""
    lines = [
        "| config | batch | bf16 | activation checkpointing | step ms | ms / subject | peak MiB | first-step loss |",
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for config, result in cases:
        training = config.training
        per_subject = dict(result, ms=result["ms"] / training.batch_size) if "ms" in result else result
        cells = [
            config.name,
            str(training.batch_size),
            "on" if training.bf16 else "off",
            "on" if training.activation_checkpointing else "off",
            cell(result, "ms", ".1f"),
            cell(per_subject, "ms", ".1f"),
            cell(result, "peak_mib", ".0f"),
            cell(result, "loss", ".4g"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def device_title(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU ({torch.cuda.get_device_name(device)})"
    return f"GPU benchmark run on {device.type} ({cpu_name()}; smoke test)"


def machine_line(device: torch.device, args: argparse.Namespace) -> str:
    """Markdown: the command, date and software."""
    command = " ".join(["python benchmarks/bench_gpu.py", *sys.argv[1:]])
    line = f"Command: `{command}`, {datetime.date.today().isoformat()}; torch {torch.__version__}"
    if device.type == "cuda":
        line += (
            f", CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
            f"{torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB; TF32 in convolutions "
            f"{'on' if torch.backends.cudnn.allow_tf32 else 'off'}, float32 matmul precision "
            f"{torch.get_float32_matmul_precision()}, cuDNN benchmark "
            f"{'on' if torch.backends.cudnn.benchmark else 'off'}"
        )
    else:
        line += f", {torch.get_num_threads()} threads, {os.cpu_count()} logical CPUs"
    return line + f"; time budget {args.budget_s:.0f} s."


def prost_section(args: argparse.Namespace, budget: Budget) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Markdown: the ProST tables of every size asked for; and each size's ``(1, 1, I, J, K)`` volume."""
    device = torch.device(args.device)
    lines = [
        "### ProST",
        "",
        f"Times: medians of {args.repeats} runs after {args.warmup} warm-up runs. Reference: ray sampling "
        f"at {REFERENCE_OVERSAMPLING} K samples per ray, float32, on the CPU. Peak MiB: "
        "`torch.cuda.max_memory_allocated` over a case's runs, its input volume(s) included. No pose "
        "(`prost(volume)`, as the network's projectors call it).",
        "",
    ]
    volumes = {}
    for name in [size for size in SIZES if size in args.sizes]:  # paper first
        size = SIZES[name]
        volumes[name], description = attenuation_volume(size, args.ct)
        auto = prost_layer(size, "auto", device).algorithm_for(volumes[name].to(device))
        lines += prost_lines(size, prost_cases(size, volumes[name], args, budget), auto, description)
    return lines, volumes


def report(args: argparse.Namespace) -> str:
    """Run every case (ProST, the training steps, then ``torch.compile``) and return the markdown."""
    budget = Budget(args.budget_s)
    device = torch.device(args.device)
    # As the trainer's deterministic mode asks, before cuBLAS starts.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    header = [f"## {device_title(device)}", "", machine_line(device, args), ""]
    prost, volumes = prost_section(args, budget)
    training = [case for name in TRAIN_CONFIGS if name in args.sizes for case in training_cases(name, args, budget)]
    if volumes:
        name, volume = next(iter(volumes.items()))
        with tempfile.TemporaryDirectory() as workdir:
            volume_path = Path(workdir) / "volume.pt"
            torch.save(volume, volume_path)
            prost += [compile_line(SIZES[name], compile_case(SIZES[name], volume_path, args, budget)), ""]
    training_section = [
        "### Registration network training step",
        "",
        f"Times: medians of {args.train_repeats} steps after {max(args.train_warmup, 1)} warm-up step(s) "
        "(the first one's loss is shown: same weights and inputs in every case of a config). A step: "
        "forward (under bf16 autocast when on), eq. 4 loss in float32, backward, Adam step, under the "
        "trainer's deterministic algorithms. Inputs: the atlas's DRRs along the config's views; fixed "
        "volume: the atlas.",
        "",
        *training_lines(training),
    ]
    progress(budget, "done")
    return "\n".join(header + prost + training_section).rstrip()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="torch device (cuda, cuda:1, cpu)")
    parser.add_argument(
        "--sizes",
        nargs="+",
        choices=sorted(SIZES),
        default=["paper", "lite"],
        help="ProST sizes (bench_prost.SIZES) and network configs to run",
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per ProST case (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs before timing a ProST case")
    parser.add_argument("--train-repeats", type=int, default=5, help="timed training steps per case (median)")
    parser.add_argument("--train-warmup", type=int, default=2, help="untimed training steps first (at least 1)")
    parser.add_argument(
        "--train-batch-sizes",
        type=int,
        nargs="+",
        help="batch sizes of every training config (default: 1 and 4 for lite, 1 for paper)",
    )
    parser.add_argument("--budget-s", type=float, default=150.0, help="skip the cases left after this many seconds")
    parser.add_argument(
        "--compile-cap-s", type=float, default=60.0, help="seconds allowed for the torch.compile case (0: skip it)"
    )
    parser.add_argument(
        "--ct", type=Path, default=REAL_CT, help="CT volume in HU (default: the real CT shipped with the package)"
    )
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: the torch.compile case, as JSON
    return parser.parse_args(argv)


def report_and_print(args: argparse.Namespace) -> str:
    """:func:`report`, also printed when it goes to ``--out`` (``run_cli`` then writes the file)."""
    markdown = report(args)
    if args.out is not None:
        print(markdown, flush=True)
    return markdown


def main(argv: list[str] | None = None) -> None:
    run_cli(parse_args, CompileJob, run_compile_job, report_and_print, argv)


if __name__ == "__main__":
    main()
