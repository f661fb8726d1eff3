"""Fine-tune the registration network for as many whole epochs as fit a time budget (a lent GPU's
lease), then export the weights-only model.

Usage::

    python benchmarks/device/train_within.py --config configs/lite_gpu_finetune.yaml \\
        --data D1 [D2 ...] --init MODEL.pt --out RUN --budget-s 200 --export MODEL_OUT.pt

A probe run of ``--probe-steps`` optimizer steps (start-up included, so the estimate is on the
slow side) times a step; the run then gets ``epochs = floor(budget / (step time x steps per epoch
x (1 + validation share)))`` (at least 1), the cosine schedule spanning exactly those epochs.
The probe's weights are thrown away. Writes ``RUN/fit.json`` (the probe's timing and the epochs
chosen) beside the run's usual files.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

from biplanar.config import load_config
from biplanar.training.checkpoints import export_model
from biplanar.training.trainer import TrainingRun, open_datasets, train

VALIDATION_SHARE = 0.25  # a validation pass per epoch, relative to the epoch's training time


def steps_per_epoch(config_path: Path, data: list[Path]) -> tuple[int, int]:
    """Optimizer steps per epoch and the number of training subjects."""
    config = load_config(config_path)
    train_set, _ = open_datasets(config, data, None)
    return math.ceil(len(train_set) / config.training.batch_size), len(train_set)


def probe_step_seconds(args: argparse.Namespace) -> float:
    """Seconds per optimizer step of a short run (start-up included)."""
    probe = args.out.with_name(args.out.name + "_probe")
    shutil.rmtree(probe, ignore_errors=True)
    start = time.perf_counter()
    run = TrainingRun(probe, data_dir=args.data, progress=False, max_steps=args.probe_steps)
    train(args.config, run, init=args.init)
    seconds = (time.perf_counter() - start) / args.probe_steps
    shutil.rmtree(probe, ignore_errors=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="biplanar simulate folder(s)")
    parser.add_argument("--init", type=Path, required=True, help="the checkpoint to fine-tune")
    parser.add_argument("--out", type=Path, required=True, help="the run folder")
    parser.add_argument("--budget-s", type=float, required=True, help="seconds the training may take")
    parser.add_argument("--probe-steps", type=int, default=40)
    parser.add_argument("--export", type=Path, required=True, help="write best.pt's weights-only copy here")
    args = parser.parse_args()
    per_epoch, subjects = steps_per_epoch(args.config, args.data)
    step_s = probe_step_seconds(args)
    epochs = max(1, int(args.budget_s / (step_s * per_epoch * (1.0 + VALIDATION_SHARE))))
    fit = {"subjects": subjects, "steps_per_epoch": per_epoch, "probe_step_s": step_s, "epochs": epochs}
    print(json.dumps(fit), flush=True)
    start = time.perf_counter()
    run = TrainingRun(args.out, data_dir=args.data, epochs=epochs, progress=False)
    result = train(args.config, run, init=args.init)
    fit["train_s"] = time.perf_counter() - start
    fit["best_val_dice"] = result.best_val_dice
    (args.out / "fit.json").write_text(json.dumps(fit, indent=2))
    export_model(args.out / "best.pt", args.export)
    print(json.dumps(fit), flush=True)


if __name__ == "__main__":
    main()
