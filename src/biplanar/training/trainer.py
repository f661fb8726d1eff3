"""Training the atlas registration network: data, optimisation, validation, checkpoints and logs.

One call, :func:`train`, does a whole run (or continues one): single process, or one process per
device under ``torchrun --nproc_per_node=N`` (DistributedDataParallel, see
:mod:`biplanar.training.distributed`).

- Data: the ``train`` / ``val`` splits of a ``biplanar simulate`` folder, or ``on_the_fly``
  subjects simulated in memory (a train stream and a separate validation stream, both from
  ``training.seed``). Per sample the views come from its projection matrices, the fixed volume is
  ``hu_to_mu(ct)`` (1/mm) and the fixed labels are ``labels > 0``.
- Optimisation: Adam at ``training.learning_rate``, cosine-annealed per step to 0 at the end of the
  planned epochs (:func:`cosine_factor`); the loss is :class:`RegistrationLoss` (eq. 4), computed
  in float32 (with ``training.bf16`` only the network's forward runs under bfloat16 autocast).
  Under ``torchrun`` the gradients are averaged over the processes (an effective batch of
  ``world_size x training.batch_size``); the learning rate is not rescaled.
- Order: epoch ``e`` visits the training subjects in the permutation drawn from
  ``numpy.random.default_rng([training.seed, e])``; each process takes every ``world_size``-th
  one, so a resumed run skips exactly the samples already done.
- Validation after every epoch: mean Dice of ``warped_labels > 0.5`` vs the truth, the same for
  the affine stage alone, mean local NCC (and the loss); reduced over all processes.
- Outputs in ``out_dir`` (rank 0 only, each written atomically): ``config.yaml``, ``last.pt``
  (every ``training.checkpoint_minutes`` and after every epoch), ``best.pt`` (best validation
  Dice), ``metrics.csv`` (one row per epoch) and ``tensorboard/`` (scalars per step and epoch).
- Ctrl-C / SIGTERM: the step in progress finishes, ``last.pt`` is written and
  :class:`TrainingInterrupted` is raised.
"""

from __future__ import annotations

import abc
import contextlib
import csv
import dataclasses
import io
import math
import os
import random
import signal
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from biplanar.config import ExperimentConfig, load_config
from biplanar.data.atlas import load_atlas
from biplanar.data.datasets import CaseDataset, OnTheFlyDataset, SimulatedDatasets
from biplanar.data.simulate import PAPER_SPLIT, SimulationConfig
from biplanar.errors import InputError
from biplanar.geometry.projection import ProjectionView
from biplanar.io.atomic import atomic_write_text
from biplanar.layers.similarity import soft_dice
from biplanar.models.network import AtlasRegistrationNet, RegistrationOutput
from biplanar.models.projectors import ViewPair
from biplanar.physics.attenuation import hu_to_mu
from biplanar.progress import progress_bar
from biplanar.training.checkpoints import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from biplanar.training.distributed import (
    DistributedContext,
    all_reduce_sum,
    setup_distributed,
    teardown_distributed,
)
from biplanar.training.losses import RegistrationLoss

LOSS_PARTS = ("total", "affine_ncc", "local_ncc", "smoothness", "label_dice")
VAL_METRICS = ("dice", "affine_dice", "local_ncc", "total")
DataDirs = str | Path | Sequence[str | Path]  # one dataset folder, or several trained together
CSV_FIELDS = (
    "epoch",
    "step",
    "lr",
    *(f"train_{name}" for name in LOSS_PARTS),
    *(f"val_{name}" for name in VAL_METRICS),
    "wall_s",
)
LABEL_THRESHOLD = 0.5  # a warped (soft) label voxel is femur above this
# Independent seed streams of training.seed for the on-the-fly train and validation subjects.
TRAIN_STREAM, VAL_STREAM = 1, 2
LAST, BEST = "last.pt", "best.pt"


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped training after a checkpoint was written.

    Attributes:
        checkpoint: the ``last.pt`` to resume from.
    """

    def __init__(self, checkpoint: Path) -> None:
        super().__init__(f"training interrupted; checkpoint written to {checkpoint}; continue with resume")
        self.checkpoint = checkpoint


@dataclass(frozen=True)
class TrainingRun:
    """Where a training run writes, what it trains on and how far it goes: the settings of a run that
    :func:`train` and :func:`~biplanar.training.baselines.train_baseline` share.

    Attributes:
        out_dir: the run folder (created): checkpoints, ``config.yaml``, ``metrics.csv``, TensorBoard logs.
        data_dir: a ``biplanar simulate`` dataset folder (``train`` and ``val`` splits), or several
            trained together...
        on_the_fly: ...or instead this many training subjects per epoch, simulated in memory.
        resume: continue the run in ``out_dir`` from its ``last.pt`` (same config, ``epochs`` aside).
        epochs: overrides the config's ``training.epochs`` (the total, counting epochs already done).
        progress: show progress bars on stderr (rank 0).
        max_steps: stop (with a checkpoint) once the run has done this many optimizer steps in total.
    """

    out_dir: Path
    data_dir: DataDirs | None = None
    on_the_fly: int | None = None
    resume: bool = False
    epochs: int | None = None
    progress: bool = True
    max_steps: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))  # a str given for the folder

    @property
    def step_limit(self) -> float:
        """:attr:`max_steps`, or infinity without one."""
        return math.inf if self.max_steps is None else self.max_steps


@dataclass
class RunCheckpoints:
    """A training run's folder and checkpoints (the base of the trainers' results).

    Attributes:
        out_dir: the run folder.
        last_checkpoint: ``out_dir/last.pt``.
        best_checkpoint: ``out_dir/best.pt``, ``None`` until a validation has run.
    """

    out_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None


@dataclass
class TrainResult(RunCheckpoints):
    """What :func:`train` did.

    Attributes:
        out_dir, last_checkpoint, best_checkpoint: the run's folder and checkpoints (:class:`RunCheckpoints`).
        epochs_completed: finished epochs (including those of earlier calls when resuming).
        global_step: optimizer steps done in the whole run.
        best_val_dice: best validation Dice (``nan`` without validation).
        history: per finished epoch, the row of ``metrics.csv`` (:data:`CSV_FIELDS`).
        step_losses: per step done by this call, ``{"step": global step, **loss parts}``.
    """

    epochs_completed: int
    global_step: int
    best_val_dice: float
    history: list[dict[str, float]] = field(default_factory=list)
    step_losses: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Batch:
    """A training batch on the device.

    Attributes:
        radiographs: ``(B, 2, rows, cols)`` masked line integrals, AP then LAT.
        views: ``B`` pairs ``(AP, LAT)``.
        fixed_mu: ``(B, 1, I, J, K)`` patient attenuation, 1/mm, atlas grid.
        fixed_labels: ``(B, 1, I, J, K)`` patient femur label, 0/1 float.
    """

    radiographs: Tensor
    views: list[ViewPair]
    fixed_mu: Tensor
    fixed_labels: Tensor


def make_batch(samples: list[dict[str, Any]], image_shape: tuple[int, int], device: torch.device) -> Batch:
    """Stack dataset samples (:mod:`biplanar.data.datasets`) into a :class:`Batch` on ``device``."""

    def view_pair(sample: dict[str, Any]) -> ViewPair:
        ap, lat = (
            ProjectionView(matrix.numpy(), image_shape, name)
            for matrix, name in zip(sample["projection_matrices"], ("AP", "LAT"))
        )
        return ap, lat

    views = [view_pair(sample) for sample in samples]

    def stack(key: str) -> Tensor:
        return torch.stack([sample[key] for sample in samples]).to(device)

    return Batch(stack("radiographs"), views, hu_to_mu(stack("ct")), (stack("labels") > 0).float())


def cosine_factor(step: int, total_steps: int) -> float:
    """Learning-rate factor at optimizer step ``step`` of ``total_steps``: ``(1 + cos(pi step / total)) / 2``."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def epoch_order(seed: int, epoch: int, n: int, context: DistributedContext) -> list[int]:
    """This process's sample indices for ``epoch``: every ``world_size``-th of the epoch's permutation.

    The permutation of ``range(n)`` is drawn from ``default_rng([seed, epoch])``; its tail beyond a
    multiple of ``world_size`` is dropped so that every process does the same number of steps.
    """
    order = np.random.default_rng([seed, epoch]).permutation(n)
    usable = n - n % context.world_size
    return [int(i) for i in order[:usable][context.rank :: context.world_size]]


def _stream_seed(seed: int, stream: int) -> int:
    return int(np.random.SeedSequence(seed, spawn_key=(stream,)).generate_state(1)[0])


def open_datasets(
    config: ExperimentConfig, data_dir: DataDirs | None, on_the_fly: int | None
) -> tuple[CaseDataset, CaseDataset]:
    """The training and validation datasets, checked against the config.

    Args:
        config: the experiment config (its grid preset and image shape must match the data).
        data_dir: a ``biplanar simulate`` folder (its ``train`` and ``val`` splits), or several
            trained together (:class:`~biplanar.data.datasets.SimulatedDatasets`), or ``None``.
        on_the_fly: or the number of training subjects per epoch simulated in memory; the
            validation set then has ``max(1, round(n * 40 / 235))`` subjects (the paper's ratio).

    Raises:
        InputError: neither or both sources, a mismatching dataset, or no training subjects.
    """
    train_set: CaseDataset
    val_set: CaseDataset
    if data_dir is not None and on_the_fly is None:
        roots = [data_dir] if isinstance(data_dir, (str, Path)) else list(data_dir)
        train_set, val_set = SimulatedDatasets(roots, "train"), SimulatedDatasets(roots, "val")
        where = str(Path(roots[0]) / "dataset.json")
    elif data_dir is None and on_the_fly is not None:
        if on_the_fly < 1:
            raise InputError(f"on_the_fly: expected a number of subjects >= 1, got {on_the_fly}")
        simulation = SimulationConfig(preset=config.geometry.grid_preset)
        val_count = max(1, round(on_the_fly * PAPER_SPLIT["val"] / PAPER_SPLIT["train"]))
        seed = config.training.seed
        train_set = OnTheFlyDataset(_stream_seed(seed, TRAIN_STREAM), on_the_fly, simulation)
        val_set = OnTheFlyDataset(_stream_seed(seed, VAL_STREAM), val_count, simulation)
        where = "on-the-fly data"
    else:
        raise InputError("data: give exactly one of a dataset folder or a number of on-the-fly subjects")
    _check_dataset(train_set.config, config, where)
    if len(train_set) == 0:
        raise InputError(f"{where}: the train split is empty")
    return train_set, val_set


def _check_dataset(simulation: SimulationConfig, config: ExperimentConfig, where: str) -> None:
    geometry = config.geometry
    if simulation.preset != geometry.grid_preset:
        raise InputError(
            f"{where}: grid preset {simulation.preset!r} differs from the config's "
            f"geometry.grid_preset {geometry.grid_preset!r}"
        )
    if tuple(simulation.image_shape) != tuple(geometry.image_shape):
        raise InputError(
            f"{where}: image shape {list(simulation.image_shape)} differs from the config's "
            f"geometry.image_shape {list(geometry.image_shape)}"
        )


def _as_float(output: RegistrationOutput) -> RegistrationOutput:
    """The output with every tensor in float32 (the loss runs outside bf16 autocast)."""
    return RegistrationOutput(**{f.name: getattr(output, f.name).float() for f in dataclasses.fields(output)})


def yaml_ready(value: Any) -> Any:
    """A config document with every tuple made a list, recursively, so that ``yaml.safe_dump`` writes
    plain YAML lists.

    Args:
        value: e.g. ``config.to_dict()``: nested dicts, lists, tuples and scalars.
    """
    if isinstance(value, dict):
        return {key: yaml_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [yaml_ready(item) for item in value]
    return value


def with_epochs(config: ExperimentConfig, epochs: int | None) -> ExperimentConfig:
    """``config`` with ``training.epochs`` set to ``epochs`` (``config`` itself when ``epochs`` is ``None``).

    Raises:
        InputError: ``epochs < 1``.
    """
    if epochs is None:
        return config
    if epochs < 1:
        raise InputError(f"epochs: expected >= 1, got {epochs}")
    return dataclasses.replace(config, training=dataclasses.replace(config.training, epochs=epochs))


@dataclass(frozen=True)
class OpenedRun:
    """A run's config and data, as :func:`open_run` opens them (what every epoch-based run starts from).

    Attributes:
        config: the run's config (``TrainingRun.epochs`` applied).
        train_set: the training set.
        val_set: the validation set.
    """

    config: ExperimentConfig
    train_set: CaseDataset
    val_set: CaseDataset


def open_run(config: ExperimentConfig | str | Path, run: TrainingRun) -> OpenedRun:
    """A run's config (a YAML file or preset name loaded; ``run.epochs`` overrides ``training.epochs``,
    :func:`with_epochs`) and its training and validation sets (:func:`open_datasets` of ``run.data_dir``
    or ``run.on_the_fly``)."""
    config = with_epochs(config if isinstance(config, ExperimentConfig) else load_config(config), run.epochs)
    train_set, val_set = open_datasets(config, run.data_dir, run.on_the_fly)
    check_first_samples(train_set, val_set)
    return OpenedRun(config, train_set, val_set)


def check_first_samples(*datasets: CaseDataset) -> None:
    """Read the first case of each non-empty dataset folder: a broken dataset is refused before a run
    folder is made (the other cases are read, and checked, as training reaches them).

    Raises:
        InputError: a missing or unreadable file of that case, or NaN / infinite values (named).
    """
    for dataset in datasets:
        if len(dataset) > 0 and not isinstance(dataset, OnTheFlyDataset):
            dataset[0]  # reads, and so checks, the case's files


def _flatten(document: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"training": {"epochs": 5}}`` -> ``{"training.epochs": 5}``."""
    flat: dict[str, Any] = {}
    for key, value in document.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_resumable(config: ExperimentConfig, state: dict[str, Any], path: Path) -> None:
    """Check that a run may continue from a checkpoint: the same config, ``training.epochs`` aside.

    Args:
        config: the config of the run to continue.
        state: the checkpoint (:func:`~biplanar.training.checkpoints.load_checkpoint`), with its ``config``.
        path: the checkpoint file (for the message).

    Raises:
        InputError: naming the fields where the two configs differ.
    """
    ours = _flatten(config.to_dict())
    theirs = _flatten(ExperimentConfig.from_dict(state["config"], f"{path}: config").to_dict())
    differing = [name for name in ours if name != "training.epochs" and ours[name] != theirs[name]]
    if differing:
        raise InputError(f"{path}: the config differs from the checkpoint's in {', '.join(differing)}")


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy's global generator and Python's ``random`` with ``seed``."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@contextlib.contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """Deterministic kernels (warning where there is none) for the duration of the block."""
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


class StopSignals:
    """A context manager: while active, SIGINT / SIGTERM only set :attr:`requested` (a second one acts
    as usual). Outside the main thread it installs nothing (Python allows handlers only there).

    Attributes:
        requested: a stop signal arrived.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signum, self._previous[signum])

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
            # None: a handler not installed from Python; the default is the closest we can restore.
            self._previous = {
                signum: signal.SIG_DFL if handler is None else handler for signum, handler in previous.items()
            }
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class TrainingLogs:
    """A context manager: the progress bar (rich, on stderr; showing the latest loss) and the
    TensorBoard scalars of a training run.

    Args:
        out_dir: the run folder (scalars go to ``out_dir/tensorboard``).
        enabled: rank 0; elsewhere nothing is shown or written.
        progress: show the bar.
        total_steps, done_steps: the run's planned and completed optimizer steps.
        purge_step: drop TensorBoard events from this step on (those after the checkpoint resumed from).
    """

    def __init__(
        self, out_dir: Path, enabled: bool, progress: bool, total_steps: int, done_steps: int, purge_step: int | None
    ) -> None:
        self.bar = progress_bar(enabled and progress, elapsed=True, fields=["loss {task.fields[loss]}"])
        self.task = self.bar.add_task("training", total=total_steps, completed=done_steps, loss="-")
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter  # lazy: TensorBoard only when training

            self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=purge_step)

    def __enter__(self) -> TrainingLogs:
        self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.stop()
        if self.writer is not None:
            self.writer.close()

    def step(self, step: int, parts: dict[str, float], lr: float, description: str) -> None:
        """Advance the bar by one step; log the loss ``parts`` (``total`` among them) and ``lr`` as ``train/*``."""
        self.bar.update(self.task, advance=1, loss=f"{parts['total']:.4f}", description=description)
        if self.writer is not None:
            for name, value in parts.items():
                self.writer.add_scalar(f"train/{name}", value, step)
            self.writer.add_scalar("train/lr", lr, step)

    def epoch(self, row: dict[str, float]) -> None:
        """Log a ``metrics.csv`` row (its ``step`` the x axis) as ``epoch/*``."""
        if self.writer is not None:
            for name, value in row.items():
                if name not in ("epoch", "step"):
                    self.writer.add_scalar(f"epoch/{name}", value, row["step"])


def optimisation_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler
) -> dict[str, Any]:
    """The checkpoint entries of an optimisation: ``model``, ``optimizer`` and ``scheduler`` state
    dicts and ``rng`` (every random generator's state, :func:`~biplanar.training.checkpoints.capture_rng_state`)."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": capture_rng_state(),
    }


def restore_optimisation(
    state: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> None:
    """Load the entries of :func:`optimisation_state` from a checkpoint ``state`` into the objects
    and the random generators."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rng_state(state["rng"])


def write_metrics_csv(path: Path, fields: tuple[str, ...], rows: list[dict[str, float]]) -> None:
    """Write ``rows`` (each with exactly ``fields``) as a CSV table with a header, atomically."""
    text = io.StringIO()
    table = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
    table.writeheader()
    table.writerows(rows)
    atomic_write_text(path, text.getvalue())


def check_run_dir(out_dir: Path, resume: bool) -> None:
    """Refuse to overwrite a run in ``out_dir`` (it holds ``last.pt``), or to resume none.

    Raises:
        InputError: ``resume`` without ``last.pt``, ``last.pt`` without ``resume``, or ``out_dir`` a file.
    """
    last = out_dir / LAST
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder")
    if resume and not last.is_file():
        raise InputError(f"{last}: no checkpoint to resume from")
    if not resume and last.is_file():
        raise InputError(f"{out_dir}: holds a training run already; continue it with --resume or choose another folder")


def prepare_run_dir(config: Any, out_dir: Path, resume: bool, is_main: bool = True) -> None:
    """Refuse to overwrite a run (or to resume none); create ``out_dir`` and write ``config.yaml``.

    Args:
        config: the run's config (a dataclass with ``to_dict()``).
        out_dir: the run folder; a run lives there when it holds ``last.pt``.
        resume: the run continues the one in ``out_dir``.
        is_main: create and write (rank 0 only); other processes only check.

    Raises:
        InputError: ``resume`` without ``last.pt``, or ``last.pt`` without ``resume``.
    """
    check_run_dir(out_dir, resume)
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(yaml_ready(config.to_dict()), sort_keys=False))


class EpochRun(abc.ABC):
    """The bookkeeping and epoch loop of an epoch-based training run (:func:`train`,
    :func:`~biplanar.training.baselines.train_baseline`), checkpointed with it.

    A subclass sets ``config`` (:class:`ExperimentConfig`), ``out_dir``, ``context``, ``train_set``
    and ``csv_fields``, calls ``EpochRun.__init__`` last in its own (it makes the optimizer and its
    schedule), and gives :meth:`step`, :meth:`save` and :meth:`end_epoch`; :meth:`run_epochs` then
    trains.

    Attributes:
        epoch, step_in_epoch, global_step: where the run stands (epochs done, steps into the current
            epoch, steps in the whole run).
        best_metric: the best validation Dice so far (``-inf`` before the first).
        elapsed_s: wall time of earlier calls of a resumed run, s.
        epoch_sums: per loss part, its sum over the current epoch's steps, and ``count``.
        history: the finished epochs' ``metrics.csv`` rows.
        step_losses: per step done by this call, ``{"step": global step, **loss parts}``.
    """

    # Set by the subclass (see above).
    config: ExperimentConfig
    out_dir: Path
    context: DistributedContext
    train_set: CaseDataset
    csv_fields: tuple[str, ...]

    def __init__(self, parts: tuple[str, ...], parameters: Iterable[torch.nn.Parameter], subjects: int) -> None:
        """Adam on ``parameters`` at ``training.learning_rate``, cosine-annealed per step over the
        planned epochs of ``subjects`` training subjects each (this process's share), and the
        bookkeeping of a new run whose loss has ``parts``."""
        training = self.config.training
        self.optimizer = torch.optim.Adam(parameters, lr=training.learning_rate)
        self.steps_per_epoch = math.ceil(subjects / training.batch_size)
        total = self.steps_per_epoch * training.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: cosine_factor(step, total))
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.best_metric, self.elapsed_s = -math.inf, 0.0
        self.epoch_sums = dict.fromkeys((*parts, "count"), 0.0)
        self.history: list[dict[str, float]] = []
        self.step_losses: list[dict[str, float]] = []
        self.started = self.last_save = time.monotonic()

    @abc.abstractmethod
    def step(self, samples: list[dict[str, Any]]) -> dict[str, float]:
        """One optimizer step on dataset samples; returns the loss parts (``total`` among them)."""

    @abc.abstractmethod
    def save(self, name: str = LAST) -> Path:
        """Write the checkpoint ``out_dir / name``; returns its path."""

    @abc.abstractmethod
    def end_epoch(self, logs: TrainingLogs) -> None:
        """Validate the finished epoch and close it (:meth:`close_epoch`)."""

    def run_epochs(self, progress: bool, resume: bool, max_steps: float) -> TrainResult:
        """Train the remaining epochs, or up to ``max_steps`` steps in total (checkpoint written),
        with the logs of ``out_dir`` (a progress bar when ``progress``; a ``resume`` continues the
        logs at :attr:`global_step`).

        Raises:
            TrainingInterrupted: a stop signal arrived (after ``last.pt`` is written).
        """
        logs = TrainingLogs(
            self.out_dir,
            self.context.is_main,
            progress,
            self.steps_per_epoch * self.config.training.epochs,
            self.global_step,
            self.global_step if resume else None,
        )
        with StopSignals() as signals, logs:
            while self.epoch < self.config.training.epochs:
                if not self.train_epoch(signals, max_steps, logs):
                    break
                self.end_epoch(logs)
        return self.result()

    def progress_state(self) -> dict[str, Any]:
        """The checkpoint entries of the bookkeeping (the attributes above but ``step_losses``)."""
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "best_metric": self.best_metric,
            "elapsed_s": self.wall_s(),
            "epoch_sums": dict(self.epoch_sums),
            "history": list(self.history),
        }

    def restore_progress(self, state: dict[str, Any]) -> None:
        """Continue from the entries of :meth:`progress_state` in a checkpoint ``state``."""
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step, self.best_metric = state["global_step"], state["best_metric"]
        self.elapsed_s, self.epoch_sums = state["elapsed_s"], dict(state["epoch_sums"])
        self.history = list(state["history"])

    def wall_s(self) -> float:
        """Wall time of the whole run so far (earlier calls included), s."""
        return self.elapsed_s + time.monotonic() - self.started

    def description(self) -> str:
        """The progress bar's label."""
        return f"epoch {self.epoch + 1}/{self.config.training.epochs}"

    def loader(self, indices: list[int], batch_size: int) -> DataLoader:
        """Batches (lists of samples) of ``train_set[indices]`` in that order."""
        workers = self.config.training.num_workers
        return DataLoader(
            Subset(self.train_set, indices),
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=list,
            multiprocessing_context="forkserver" if workers else None,
        )

    def stop_requested(self, signals: StopSignals) -> bool:
        """Whether any process got a stop signal (all processes agree, so they stop at the same step)."""
        flag = torch.tensor([float(signals.requested)], device=self.context.device)
        return bool(all_reduce_sum(flag, self.context).item() > 0)

    def train_epoch(self, signals: StopSignals, max_steps: float, logs: TrainingLogs) -> bool:
        """Train the rest of :attr:`epoch`; ``False`` if stopped early by ``max_steps`` (checkpoint written).

        Raises:
            TrainingInterrupted: a stop signal arrived (after ``last.pt`` is written).
        """
        batch_size = self.config.training.batch_size
        order = epoch_order(self.config.training.seed, self.epoch, len(self.train_set), self.context)
        batches = iter(self.loader(order[self.step_in_epoch * batch_size :], batch_size))
        while self.step_in_epoch < self.steps_per_epoch:
            if self.global_step >= max_steps:
                self.save()
                return False
            parts = self.step(next(batches))
            self.record_step(parts)
            logs.step(self.global_step, parts, self.optimizer.param_groups[0]["lr"], self.description())
            if self.stop_requested(signals):
                raise TrainingInterrupted(self.save())
            if time.monotonic() - self.last_save >= 60.0 * self.config.training.checkpoint_minutes:
                self.save()
        return True

    def record_step(self, parts: dict[str, float]) -> None:
        """Count a finished step and add its loss ``parts`` to the epoch's sums."""
        self.step_in_epoch += 1
        self.global_step += 1
        for name, value in parts.items():
            self.epoch_sums[name] += value
        self.epoch_sums["count"] += 1
        self.step_losses.append({"step": self.global_step, **parts})

    def close_epoch(self, row: dict[str, float], dice: float, logs: TrainingLogs) -> None:
        """Keep the finished epoch's ``metrics.csv`` ``row``, move to the next epoch, write ``best.pt``
        (when ``dice`` is the best validation Dice so far) and ``last.pt``, log the row and write
        ``metrics.csv`` (rank 0)."""
        self.history.append(row)
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.epoch_sums = dict.fromkeys(self.epoch_sums, 0.0)
        if dice > self.best_metric:
            self.best_metric = dice
            self.save(BEST)
        self.save(LAST)
        logs.epoch(row)
        if self.context.is_main:
            write_metrics_csv(self.out_dir / "metrics.csv", self.csv_fields, self.history)

    def result(self) -> TrainResult:
        """What the run did (:class:`TrainResult`)."""
        best = self.out_dir / BEST
        return TrainResult(
            self.out_dir,
            self.out_dir / LAST,
            best if best.is_file() else None,
            self.epoch,
            self.global_step,
            self.best_metric if math.isfinite(self.best_metric) else math.nan,
            list(self.history),
            list(self.step_losses),
        )


class _Run(EpochRun):
    """The state of one training run of the registration network and its steps (see the module doc)."""

    csv_fields = CSV_FIELDS

    def __init__(self, opened: OpenedRun, out_dir: Path, context: DistributedContext) -> None:
        config, train_set = opened.config, opened.train_set
        self.config, self.out_dir, self.context = config, out_dir, context
        self.train_set, self.val_set = train_set, opened.val_set
        seed_everything(config.training.seed)
        self.network = AtlasRegistrationNet(config, load_atlas(config.geometry.grid_preset)).to(context.device)
        self.model: torch.nn.Module = self.network
        if context.distributed:
            device_ids = [context.device.index] if context.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.network, device_ids=device_ids)
        self.loss = RegistrationLoss(config.loss).to(context.device)
        per_process = len(train_set) // context.world_size
        if per_process == 0:
            raise InputError(f"data: {len(train_set)} training subject(s) for {context.world_size} processes")
        super().__init__(LOSS_PARTS, self.network.parameters(), per_process)

    # --- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            **optimisation_state(self.network, self.optimizer, self.scheduler),
            **self.progress_state(),
            "world_size": self.context.world_size,
        }

    def restore(self, state: dict[str, Any], path: Path) -> None:
        if state["step_in_epoch"] and state["world_size"] != self.context.world_size:
            raise InputError(
                f"{path}: stopped mid-epoch with {state['world_size']} process(es); resume "
                f"with the same number, not {self.context.world_size}"
            )
        restore_optimisation(state, self.network, self.optimizer, self.scheduler)
        self.restore_progress(state)

    def save(self, name: str = LAST) -> Path:
        path = self.out_dir / name
        if self.context.is_main:
            save_checkpoint(path, self.state())
        self.last_save = time.monotonic()
        return path

    # --- training ------------------------------------------------------------------------------
    def autocast(self):
        return torch.autocast(self.context.device.type, dtype=torch.bfloat16, enabled=self.config.training.bf16)

    def batch(self, samples: list[dict[str, Any]]) -> Batch:
        return make_batch(samples, self.config.geometry.image_shape, self.context.device)

    def step(self, samples: list[dict[str, Any]]) -> dict[str, float]:
        """One optimizer step; returns the loss parts (this process's batch)."""
        batch = self.batch(samples)
        self.network.train()
        with self.autocast():
            output = self.model(batch.radiographs, batch.views)
        parts = self.loss(_as_float(output), batch.fixed_mu, batch.fixed_labels)
        self.optimizer.zero_grad(set_to_none=True)
        parts["total"].backward()
        self.optimizer.step()
        self.scheduler.step()
        return {name: float(parts[name].detach()) for name in LOSS_PARTS}

    # --- validation and the end of an epoch ----------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean :data:`VAL_METRICS` over the validation set (``nan`` when it is empty)."""
        self.network.eval()
        sums = torch.zeros(len(VAL_METRICS) + 1, dtype=torch.float64, device=self.context.device)
        for index in range(self.context.rank, len(self.val_set), self.context.world_size):
            batch = self.batch([self.val_set[index]])
            with self.autocast():
                output = self.network(batch.radiographs, batch.views)
            output = _as_float(output)
            parts = self.loss(output, batch.fixed_mu, batch.fixed_labels)
            dice = soft_dice((output.warped_labels > LABEL_THRESHOLD).float(), batch.fixed_labels)
            affine_dice = soft_dice((output.affine_labels > LABEL_THRESHOLD).float(), batch.fixed_labels)
            sums += torch.stack(
                [
                    dice.mean(),
                    affine_dice.mean(),
                    parts["local_ncc"],
                    parts["total"],
                    torch.ones((), device=sums.device),
                ]
            ).double()
        sums = all_reduce_sum(sums, self.context)
        count = sums[-1].item()
        return {name: (sums[i].item() / count if count else math.nan) for i, name in enumerate(VAL_METRICS)}

    def end_epoch(self, logs: TrainingLogs) -> None:
        """Validate, log, keep ``best.pt``, write ``last.pt`` at the start of the next epoch."""
        metrics = self.validate()
        sums = all_reduce_sum(
            torch.tensor(
                [self.epoch_sums[name] for name in (*LOSS_PARTS, "count")],
                dtype=torch.float64,
                device=self.context.device,
            ),
            self.context,
        )
        train_means = {name: (sums[i] / sums[-1]).item() for i, name in enumerate(LOSS_PARTS)}
        row = {
            "epoch": self.epoch + 1,
            "step": self.global_step,
            "lr": self.optimizer.param_groups[0]["lr"],
            **{f"train_{name}": value for name, value in train_means.items()},
            **{f"val_{name}": value for name, value in metrics.items()},
            "wall_s": self.wall_s(),
        }
        self.close_epoch(row, metrics["dice"], logs)


def train(config: ExperimentConfig | str | Path, run: TrainingRun, init: str | Path | None = None) -> TrainResult:
    """Train (or continue training) the registration network; see the module doc for what is written.

    Args:
        config: an :class:`ExperimentConfig`, a YAML file or a preset name (``paper``, ``lite``, ``tiny``).
        run: the run's folder, data, resumption and length.
        init: start a new run from this checkpoint's weights (a run's ``best.pt`` / ``last.pt`` or an
            exported model, e.g. the bundled one) instead of a random initialisation: fine-tuning.
            Its network must be the config's; the optimizer and schedule start afresh. Ignored
            with ``run.resume`` (the run's own weights are restored).

    Returns:
        the epochs and steps done, the best validation Dice (NaN without validation), the
        checkpoints and the metrics history.

    Raises:
        InputError: bad data or config, a mismatching dataset or checkpoint, ``run.out_dir`` holding a
            run without ``run.resume`` (or none with it).
        TrainingInterrupted: on Ctrl-C / SIGTERM, after writing ``last.pt``.
    """
    check_run_dir(run.out_dir, run.resume)  # the cheap refusals first
    opened = open_run(config, run)
    context = setup_distributed()
    finished = False
    try:
        with deterministic_algorithms():
            result = _run(opened, run, context, None if init is None else Path(init))
        finished = True
        return result
    finally:
        teardown_distributed(context, wait_for_peers=finished)


def _initial_weights(path: Path, config: ExperimentConfig, device: torch.device) -> dict[str, Tensor]:
    """The network weights of checkpoint ``path`` for fine-tuning; ``InputError`` when its network
    is not ``config``'s (the architecture sections must be equal)."""
    state = load_checkpoint(path, device)
    theirs = ExperimentConfig.from_dict(state["config"], f"{path}: config")
    for section in ("geometry", "affine", "local"):
        if getattr(theirs, section) != getattr(config, section):
            raise InputError(
                f"init: {path}: its {section} settings differ from the config's; fine-tuning needs the same network"
            )
    return state["model"]


def _run(opened: OpenedRun, settings: TrainingRun, context: DistributedContext, init: Path | None) -> TrainResult:
    config, out_dir, resume = opened.config, settings.out_dir, settings.resume
    if init is not None and not resume:
        weights = _initial_weights(init, config, context.device)
    prepare_run_dir(config, out_dir, resume, context.is_main)
    run = _Run(opened, out_dir, context)
    if init is not None and not resume:
        run.network.load_state_dict(weights)
    if resume:
        state = load_checkpoint(out_dir / LAST, context.device)
        check_resumable(config, state, out_dir / LAST)
        run.restore(state, out_dir / LAST)
    return run.run_epochs(settings.progress, resume, settings.step_limit)
