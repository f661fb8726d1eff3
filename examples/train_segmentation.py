"""Train the 2D femur segmentation U-Net (issue 15) and, optionally, export it for bundling.

Trains :func:`biplanar.training.segmentation_trainer.train_segmentation` on a ``biplanar simulate``
folder (its ``train`` and ``val`` splits); the run folder gets ``config.yaml``, ``last.pt``,
``best.pt``, ``metrics.csv`` and ``tensorboard/``. With ``--export`` the best checkpoint's weights
are written to that file (weights only: the file that is bundled)::

    OMP_NUM_THREADS=1 python examples/train_segmentation.py --data data/seg_train --out runs/seg_lite \\
        --steps 7000 --seed 0 --threads 1 \\
        --export src/biplanar/resources/models/segmentation_lite/model.pt

Continue a stopped run with ``--resume`` (the same arguments); fine-tune a trained network with
``--init CHECKPOINT`` (e.g. the bundled ``model.pt``). The held-out score:
``python examples/evaluate_segmentation.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from biplanar.training.segmentation_model import SegmentationTrainingConfig, export_segmentation_model
from biplanar.training.segmentation_trainer import train_segmentation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="biplanar simulate folder(s)")
    parser.add_argument("--out", type=Path, required=True, help="the run folder")
    parser.add_argument("--steps", type=int, default=SegmentationTrainingConfig.steps)
    parser.add_argument("--seed", type=int, default=SegmentationTrainingConfig.seed)
    parser.add_argument("--batch-size", type=int, default=SegmentationTrainingConfig.batch_size)
    parser.add_argument("--learning-rate", type=float, default=SegmentationTrainingConfig.learning_rate)
    parser.add_argument("--validate-every", type=int, default=SegmentationTrainingConfig.validate_every)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--export", type=Path, help="write best.pt's weights-only copy here at the end")
    parser.add_argument("--init", type=Path, help="start from this segmentation checkpoint's weights (fine-tuning)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    config = dataclasses.replace(
        SegmentationTrainingConfig(),
        steps=args.steps,
        seed=args.seed,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        validate_every=args.validate_every,
    )
    result = train_segmentation(
        args.data, args.out, config, resume=args.resume, progress=not args.no_progress, init=args.init
    )
    for row in result.history:
        print(
            f"step {row['step']:>6.0f}  train loss {row['train_loss']:.4f}  val Dice mean "
            f"{row['val_dice_mean']:.4f} min {row['val_dice_min']:.4f}  {row['wall_s']:.0f} s",
            flush=True,
        )
    print(f"best mean validation Dice {result.best_val_dice:.4f} ({result.best_checkpoint})", flush=True)
    if args.export is not None and result.best_checkpoint is not None:
        export_segmentation_model(result.best_checkpoint, args.export)
        print(f"exported {args.export} ({args.export.stat().st_size / 1e6:.2f} MB)", flush=True)


if __name__ == "__main__":
    main()
