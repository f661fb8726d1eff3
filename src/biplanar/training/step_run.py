"""The bookkeeping and checkpoints of a step-based training run (SOPI's networks, the 2D segmentation
network): where the run stands, its running loss sums and history, and the checkpoint that lets
``--resume`` continue it exactly (:mod:`biplanar.training.checkpoints`)."""

from __future__ import annotations

import abc
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from biplanar.errors import InputError
from biplanar.training.checkpoints import load_checkpoint, save_checkpoint
from biplanar.training.trainer import (
    BEST,
    LAST,
    StopSignals,
    TrainingInterrupted,
    TrainingLogs,
    optimisation_state,
    restore_optimisation,
    write_metrics_csv,
)


def resume_state(out_dir: Path, device: torch.device | str) -> tuple[dict[str, Any], Path]:
    """The ``last.pt`` of a run folder, to continue it, and its path.

    Raises:
        InputError: there is none.
    """
    path = out_dir / LAST
    if not path.is_file():
        raise InputError(f"{path}: no checkpoint to resume from")
    return load_checkpoint(path, device), path


class StepRun(abc.ABC):
    """A training run counted in optimizer steps.

    A subclass sets ``kind`` and ``network_name`` (what the checkpoint holds), ``config`` (with
    ``to_dict``), ``network``, ``optimizer``, ``scheduler`` and ``out_dir``, calls
    ``StepRun.__init__``, and gives :meth:`step_parts` and :meth:`end_period`.

    Args:
        parts: the names of the loss parts summed over a logging period.
        initial_best: the best validation metric before the first validation (``inf`` for a loss,
            ``-inf`` for a score).

    Attributes:
        global_step: optimizer steps done in the run.
        best_metric: the best validation metric so far.
        elapsed_s: wall time of earlier calls of a resumed run, s.
        sums: per loss part, its sum over the current period's steps, and ``count``.
        history: the finished periods' ``metrics.csv`` rows.
    """

    kind: str
    network_name: str
    config: Any
    network: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    out_dir: Path

    def __init__(self, parts: tuple[str, ...], initial_best: float) -> None:
        self.global_step, self.best_metric, self.elapsed_s = 0, initial_best, 0.0
        self.sums = dict.fromkeys((*parts, "count"), 0.0)
        self.history: list[dict[str, float]] = []
        self.started = self.last_save = time.monotonic()

    def reset_sums(self) -> None:
        """Start a new logging period."""
        self.sums = dict.fromkeys(self.sums, 0.0)

    def state(self) -> dict[str, Any]:
        """The checkpoint: kind, network, config, optimisation state and the bookkeeping."""
        return {
            "kind": self.kind,
            "network": self.network_name,
            "config": self.config.to_dict(),
            **optimisation_state(self.network, self.optimizer, self.scheduler),
            "epoch": 0,
            "step_in_epoch": self.global_step,
            "global_step": self.global_step,
            "world_size": 1,
            "best_metric": self.best_metric,
            "elapsed_s": self.wall_s(),
            "epoch_sums": dict(self.sums),
            "history": list(self.history),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint written by :meth:`state`."""
        restore_optimisation(state, self.network, self.optimizer, self.scheduler)
        self.global_step, self.best_metric = state["global_step"], state["best_metric"]
        self.elapsed_s, self.sums = state["elapsed_s"], dict(state["epoch_sums"])
        self.history = list(state["history"])

    def wall_s(self) -> float:
        """Wall time of the whole run so far (earlier calls included), s."""
        return self.elapsed_s + time.monotonic() - self.started

    def save(self, name: str = LAST) -> Path:
        """Write the checkpoint ``out_dir / name`` atomically; returns its path."""
        path = save_checkpoint(self.out_dir / name, self.state())
        self.last_save = time.monotonic()
        return path

    def close_period(
        self, row: dict[str, float], metric: float, improved: bool, fields: tuple[str, ...], logs: TrainingLogs
    ) -> None:
        """Keep a finished period's ``metrics.csv`` row, start the next period, write ``best.pt`` (when
        the validation ``metric`` ``improved`` on the best so far) and ``last.pt``, log the row and
        write ``metrics.csv`` (columns ``fields``)."""
        self.history.append(row)
        self.reset_sums()
        if improved:
            self.best_metric = metric
            self.save(BEST)
        self.save(LAST)
        logs.epoch(row)
        write_metrics_csv(self.out_dir / "metrics.csv", fields, self.history)

    def checkpoints(self) -> tuple[Path, Path | None]:
        """``(last.pt, best.pt or None before the first validation)``."""
        best = self.out_dir / BEST
        return self.out_dir / LAST, best if best.is_file() else None

    @abc.abstractmethod
    def step_parts(self) -> dict[str, float]:
        """One optimizer step; returns the loss parts (``total`` among them)."""

    @abc.abstractmethod
    def end_period(self, logs: TrainingLogs) -> None:
        """Validate, log a ``metrics.csv`` row, keep ``best.pt``, write ``last.pt``."""

    def train_steps(
        self,
        total_steps: int,
        validate_every: int,
        description: str,
        progress: bool,
        max_steps: float,
        resume: bool,
        checkpoint_minutes: float | None = None,
    ) -> None:
        """Train until ``total_steps`` (or stop at ``max_steps``), validating every ``validate_every``
        steps and at the end, ``last.pt`` written at the end, on a stop and every
        ``checkpoint_minutes``.

        Raises:
            TrainingInterrupted: SIGINT / SIGTERM arrived (after ``last.pt`` is written).
        """
        logs = TrainingLogs(
            self.out_dir, True, progress, total_steps, self.global_step, self.global_step if resume else None
        )
        with StopSignals() as signals, logs:
            while self.global_step < min(total_steps, max_steps):
                parts = self.step_parts()
                logs.step(self.global_step, parts, self.optimizer.param_groups[0]["lr"], description)
                if self.global_step % validate_every == 0 or self.global_step == total_steps:
                    self.end_period(logs)
                if signals.requested:
                    raise TrainingInterrupted(self.save())
                if checkpoint_minutes is not None and time.monotonic() - self.last_save >= 60.0 * checkpoint_minutes:
                    self.save()
            self.save()
