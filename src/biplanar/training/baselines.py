"""Training the learned baselines of Table 1: Kasten et al. 2020 and the statistical deformation model.

:func:`train_baseline` runs (or continues) a training of :class:`~biplanar.models.kasten.KastenNet`
or :class:`~biplanar.models.sdm.SDMNet` on the data of :mod:`biplanar.training.trainer`: the same
datasets and checks (:func:`~biplanar.training.trainer.open_datasets`), batches
(:func:`~biplanar.training.trainer.make_batch`), epoch order, cosine schedule, Adam at
``training.learning_rate``, checkpoints (plus ``method`` and, for the SDM, its PCA arrays ``sdm``),
stop signals and logs. Single process (CUDA when available).

- ``kasten``: loss MONAI ``DiceCELoss`` (softmax, one-hot target) of the logits and ``labels > 0``.
- ``sdm``: first, once per run folder (resumable), the deformation model: every training subject's
  CT registered to the atlas (:func:`~biplanar.optimisation.volume_registration.register_volumes`;
  ``sdm_fields/<id>.npz``: the coarse displacement, time and Dice), then the PCA
  (``sdm_model.npz``: :class:`~biplanar.models.sdm.DeformationPCA` plus the training subjects'
  ids and standardised weights; ``sdm_registration.csv``: time and Dice per subject). Loss:
  ``mean squared error of the weights + dice_weight * (1 - soft Dice)`` of the warped atlas
  labels and the subject's. An interrupted SDM stage (before ``last.pt`` exists) continues when the
  same command is run again: the subjects already registered are kept.
- Validation after every epoch: mean Dice of ``predict_labels(...) > 0.5`` and the truth
  (``best.pt`` keeps the best).

Outputs in ``out_dir`` (each written atomically): ``config.yaml``, ``last.pt``, ``best.pt``,
``metrics.csv`` (:func:`csv_fields`), ``tensorboard/``, and the SDM files above.

:func:`load_baseline` rebuilds a trained baseline from its checkpoint alone; :func:`predict_labels`
gives the femur probability on the atlas grid for a baseline or the registration network alike.
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from biplanar.config import ExperimentConfig
from biplanar.data.atlas import Atlas, load_atlas
from biplanar.data.datasets import CaseDataset
from biplanar.errors import InputError
from biplanar.io.atomic import atomic_path, atomic_write_text
from biplanar.layers.similarity import soft_dice
from biplanar.models.kasten import KastenNet
from biplanar.models.network import AtlasRegistrationNet
from biplanar.models.projectors import ViewPair
from biplanar.models.sdm import DeformationPCA, SDMNet
from biplanar.optimisation.volume_registration import VolumeRegistrationSettings, register_volumes
from biplanar.physics.attenuation import hu_to_mu
from biplanar.progress import progress_bar, ticker
from biplanar.training.checkpoints import load_checkpoint, load_weights, save_checkpoint
from biplanar.training.distributed import DistributedContext
from biplanar.training.trainer import (
    LABEL_THRESHOLD,
    LAST,
    Batch,
    EpochRun,
    OpenedRun,
    TrainingLogs,
    TrainingRun,
    TrainResult,
    check_resumable,
    check_run_dir,
    deterministic_algorithms,
    make_batch,
    open_run,
    optimisation_state,
    prepare_run_dir,
    restore_optimisation,
    seed_everything,
)

METHODS = ("kasten", "sdm")
SDM_FIELDS, SDM_MODEL, SDM_REGISTRATION_CSV = "sdm_fields", "sdm_model.npz", "sdm_registration.csv"
SDM_MIN_SUBJECTS = 2  # a PCA of the fields needs two of them


@dataclass(frozen=True)
class SdmSettings:
    """The ``sdm`` baseline's own settings (``kasten`` has none).

    Attributes:
        registration: the 3D/3D registration of each training CT to the atlas (pyramid, weights).
        variance: fraction of the fields' variance the PCA keeps.
        dice_weight: weight of ``1 - soft Dice`` in the loss.
    """

    registration: VolumeRegistrationSettings = field(default_factory=VolumeRegistrationSettings)
    variance: float = 0.95
    dice_weight: float = 1.0


SDM_SETTINGS = SdmSettings()


# --- models -------------------------------------------------------------------------------------
def build_baseline(method: str, config: ExperimentConfig, atlas: Atlas, pca: DeformationPCA | None = None) -> nn.Module:
    """A new (untrained) baseline network.

    Args:
        method: ``kasten`` or ``sdm``.
        config: the experiment config (sizes; the data's grid preset and image shape).
        atlas: the atlas (its grid is the output grid).
        pca: the deformation model (``sdm`` only).
    """
    _check_method(method)
    if method == "kasten":
        return KastenNet(config, atlas.grid)
    if pca is None:
        raise ValueError("pca: the sdm method needs a DeformationPCA")
    return SDMNet(config, atlas, pca)


def predict_labels(model: nn.Module, radiographs: Tensor, views: list[ViewPair]) -> Tensor:
    """Femur probability on the atlas grid, for the registration network or a baseline.

    Args:
        model: an :class:`AtlasRegistrationNet`, :class:`KastenNet` or :class:`SDMNet`.
        radiographs: ``(B, 2, rows, cols)`` masked line integrals, channel 0 AP, 1 LAT.
        views: ``B`` pairs ``(AP, LAT)``.

    Returns:
        ``(B, 1, I, J, K)`` in ``[0, 1]`` (the warped soft atlas label, or Kasten's softmax).
    """
    if isinstance(model, AtlasRegistrationNet):
        return model(radiographs, views).warped_labels
    if isinstance(model, (KastenNet, SDMNet)):
        return model.predict_labels(radiographs, views)
    raise TypeError(f"model: expected an AtlasRegistrationNet, KastenNet or SDMNet, got {type(model).__name__}")


def load_baseline(
    checkpoint_path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ExperimentConfig]:
    """Rebuild a trained baseline from its checkpoint alone (config, method, SDM arrays, weights).

    Returns:
        ``(model, config)``, the model in eval mode on ``device``.

    Raises:
        InputError: a bad checkpoint, one of the registration network, or weights that do not fit.
    """
    state = load_checkpoint(checkpoint_path)
    method = state.get("method")
    if method not in METHODS:
        raise InputError(f"{checkpoint_path}: not a baseline checkpoint (no method {' or '.join(METHODS)})")
    config = ExperimentConfig.from_dict(state["config"], f"{checkpoint_path}: config")
    pca = DeformationPCA.from_tensors(state["sdm"], f"{checkpoint_path}: sdm") if method == "sdm" else None
    model = build_baseline(method, config, load_atlas(config.geometry.grid_preset), pca)
    return load_weights(model, state, checkpoint_path, device, f"{method} network"), config


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise InputError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")


# --- the statistical deformation model ----------------------------------------------------------
def _fixed_volumes(sample: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """``(1, 1, I, J, K)`` attenuation (1/mm) and 0/1 femur label of a dataset sample."""
    return hu_to_mu(sample["ct"][None].float()), (sample["labels"][None] > 0).float()


def _register_subject(sample: dict[str, Any], atlas: Atlas, settings: VolumeRegistrationSettings, path: Path) -> None:
    """Register the atlas to one subject; write its coarse field, time and Dice to ``path`` (.npz)."""
    atlas_mu = hu_to_mu(torch.from_numpy(atlas.ct_hu).float())[None, None]
    atlas_labels = torch.from_numpy(atlas.labels > 0).float()[None, None]
    fixed_mu, fixed_labels = _fixed_volumes(sample)
    result = register_volumes(atlas_mu, fixed_mu, atlas.grid, atlas_labels, fixed_labels, settings)
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.savez(
            handle,
            displacement=result.coarse_displacement[0].numpy(),
            factor=result.field_factor,
            time_s=result.time_s,
            # floats here (both label maps are given); savez stores each as a 0-d array
            dice_before=np.asarray(result.dice_before),
            dice_after=np.asarray(result.dice_after),
        )


def build_sdm(
    train_set: CaseDataset,
    atlas: Atlas,
    out_dir: str | Path,
    settings: SdmSettings = SDM_SETTINGS,
    progress: bool = True,
) -> tuple[DeformationPCA, dict[str, Tensor]]:
    """The SDM of the training subjects (module doc), reusing what ``out_dir`` already holds.

    Args:
        train_set: samples of :mod:`biplanar.data.datasets` on the atlas grid.
        atlas: the atlas registered to each subject.
        out_dir: the run folder (``sdm_fields/``, ``sdm_model.npz``, ``sdm_registration.csv``).
        settings: the 3D/3D registration and the variance the PCA keeps.
        progress: show a progress bar over the subjects (stderr).

    Returns:
        the PCA and, per training subject id, its ``(K,)`` standardised weights.
    """
    out_dir = Path(out_dir)
    model_path = out_dir / SDM_MODEL
    registration = settings.registration
    if not model_path.is_file():
        ids = _register_all(train_set, atlas, out_dir / SDM_FIELDS, registration, progress)
        records = [_read_field(out_dir / SDM_FIELDS / f"{name}.npz") for name in ids]
        other = [name for name, record in zip(ids, records) if int(record["factor"]) != registration.field_factor]
        if other:
            raise InputError(
                f"{out_dir / SDM_FIELDS}: field(s) {other[:5]} were registered on another grid "
                f"factor than {registration.field_factor}; delete them to redo them"
            )
        fields = np.stack([record.pop("displacement") for record in records])
        pca = DeformationPCA.fit(fields, registration.field_factor, settings.variance)
        pca.save(model_path, subject_ids=np.array(ids), weights=pca.weights(fields))
        _write_registration_csv(out_dir / SDM_REGISTRATION_CSV, ids, records)
    pca = DeformationPCA.load(model_path)
    with np.load(model_path) as archive:
        targets = {
            str(name): torch.from_numpy(weights) for name, weights in zip(archive["subject_ids"], archive["weights"])
        }
    return pca, targets


def _register_all(
    train_set: CaseDataset, atlas: Atlas, fields_dir: Path, settings: VolumeRegistrationSettings, progress: bool
) -> list[str]:
    """Register the atlas to every training subject not yet done; their ids in dataset order."""
    ids = []
    with progress_bar(progress) as bar:
        tick = ticker(bar, "3D/3D registration", len(train_set))
        for index in range(len(train_set)):
            sample = train_set[index]
            path = fields_dir / f"{sample['subject_id']}.npz"
            if not path.is_file():
                _register_subject(sample, atlas, settings, path)
            ids.append(sample["subject_id"])
            tick()
    return ids


def _read_field(path: Path) -> dict[str, Any]:
    """The arrays of one ``sdm_fields/<id>.npz`` (``InputError`` if unreadable)."""
    try:
        with np.load(path) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: not a readable registration field ({error}); delete it to redo it") from None


def _write_registration_csv(path: Path, ids: list[str], records: list[dict[str, Any]]) -> None:
    text = io.StringIO()
    table = csv.writer(text, lineterminator="\n")
    table.writerow(["subject_id", "time_s", "dice_before", "dice_after"])
    table.writerows(
        [name, *(f"{float(record[key]):.6g}" for key in ("time_s", "dice_before", "dice_after"))]
        for name, record in zip(ids, records)
    )
    atomic_write_text(path, text.getvalue())


# --- per-method losses --------------------------------------------------------------------------
class _KastenTask:
    """Kasten et al.: Dice + cross-entropy of the label logits."""

    parts = ("total", "dice_ce")

    def __init__(self, model: KastenNet) -> None:
        from monai.losses import DiceCELoss  # lazy: monai costs seconds of start-up

        self.model, self.criterion = model, DiceCELoss(to_onehot_y=True, softmax=True)

    def losses(self, batch: Batch, subject_ids: list[str]) -> dict[str, Tensor]:
        value = self.criterion(self.model(batch.radiographs, batch.views), batch.fixed_labels.long())
        return {"total": value, "dice_ce": value}

    def checkpoint_extras(self) -> dict[str, Any]:
        return {"method": "kasten"}


class _SDMTask:
    """SDM: squared error of the standardised weights plus ``dice_weight`` (1 - Dice) of the warped labels."""

    parts = ("total", "weights_mse", "dice")

    def __init__(self, model: SDMNet, targets: dict[str, Tensor], dice_weight: float) -> None:
        self.model, self.targets, self.dice_weight = model, targets, dice_weight

    def losses(self, batch: Batch, subject_ids: list[str]) -> dict[str, Tensor]:
        missing = [name for name in subject_ids if name not in self.targets]
        if missing:
            raise InputError(
                f"{SDM_MODEL}: no SDM weights for training subject(s) {missing}; "
                "start a new run folder for another dataset"
            )
        output = self.model(batch.radiographs, batch.views)
        target = torch.stack([self.targets[name] for name in subject_ids]).to(output.weights)
        mse = (output.weights - target).square().mean()
        dice = soft_dice(output.warped_labels, batch.fixed_labels).mean()
        return {"total": mse + self.dice_weight * (1.0 - dice), "weights_mse": mse, "dice": dice}

    def checkpoint_extras(self) -> dict[str, Any]:
        return {"method": "sdm", "sdm": self.model.pca.to_tensors(), "sdm_dice_weight": self.dice_weight}


def csv_fields(method: str) -> tuple[str, ...]:
    """Columns of ``metrics.csv`` for ``method``."""
    parts = _KastenTask.parts if method == "kasten" else _SDMTask.parts
    return ("epoch", "step", "lr", *(f"train_{name}" for name in parts), "val_dice", "wall_s")


# --- the run ------------------------------------------------------------------------------------
class _BaselineRun(EpochRun):
    """One baseline training run: steps, validation, checkpoints, logs (see the module doc)."""

    def __init__(
        self, task: _KastenTask | _SDMTask, method: str, opened: OpenedRun, out_dir: Path, context: DistributedContext
    ) -> None:
        self.task, self.method, self.config, self.out_dir, self.context = task, method, opened.config, out_dir, context
        self.train_set, self.val_set = opened.train_set, opened.val_set
        self.csv_fields = csv_fields(method)
        self.model = task.model.to(context.device)
        super().__init__(task.parts, self.model.parameters(), len(self.train_set))

    def state(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            **optimisation_state(self.model, self.optimizer, self.scheduler),
            **self.progress_state(),
            "world_size": 1,
            **self.task.checkpoint_extras(),
        }

    def restore(self, state: dict[str, Any], path: Path) -> None:
        for key, value in self.task.checkpoint_extras().items():
            if key not in ("method", "sdm") and state.get(key) != value:
                raise InputError(f"{path}: {key} {state.get(key)} differs from this run's {value}")
        restore_optimisation(state, self.model, self.optimizer, self.scheduler)
        self.restore_progress(state)

    def save(self, name: str = LAST) -> Path:
        self.last_save = time.monotonic()
        return save_checkpoint(self.out_dir / name, self.state())

    def batch(self, samples: list[dict[str, Any]]) -> Batch:
        return make_batch(samples, self.config.geometry.image_shape, self.context.device)

    def description(self) -> str:
        return f"{self.method} {super().description()}"

    def step(self, samples: list[dict[str, Any]]) -> dict[str, float]:
        """One optimizer step on ``samples``; returns the loss parts."""
        self.model.train()
        parts = self.task.losses(self.batch(samples), [sample["subject_id"] for sample in samples])
        self.optimizer.zero_grad(set_to_none=True)
        parts["total"].backward()
        self.optimizer.step()
        self.scheduler.step()
        return {name: float(value.detach()) for name, value in parts.items()}

    @torch.no_grad()
    def validate(self) -> float:
        """Mean Dice of the predicted labels (> 0.5) over the validation set (``nan`` when empty)."""
        self.model.eval()
        values = []
        for index in range(len(self.val_set)):
            batch = self.batch([self.val_set[index]])
            labels = predict_labels(self.model, batch.radiographs, batch.views)
            values.append(float(soft_dice((labels > LABEL_THRESHOLD).float(), batch.fixed_labels).mean()))
        return float(np.mean(values)) if values else math.nan

    def end_epoch(self, logs: TrainingLogs) -> None:
        """Validate, log, keep ``best.pt``, write ``last.pt`` at the start of the next epoch."""
        dice = self.validate()
        count = max(self.epoch_sums["count"], 1.0)
        row = {
            "epoch": self.epoch + 1,
            "step": self.global_step,
            "lr": self.optimizer.param_groups[0]["lr"],
            **{f"train_{name}": self.epoch_sums[name] / count for name in self.task.parts},
            "val_dice": dice,
            "wall_s": self.wall_s(),
        }
        self.close_epoch(row, dice, logs)


def train_baseline(
    method: str,
    config: ExperimentConfig | str | Path,
    run: TrainingRun,
    sdm: SdmSettings = SDM_SETTINGS,
) -> TrainResult:
    """Train (or continue training) a baseline; see the module doc for what is written.

    Args:
        method: ``kasten`` or ``sdm``.
        config: an :class:`ExperimentConfig`, a YAML file or a preset name (``paper``, ``lite``, ``tiny``).
        run: the run's folder, data, resumption and length (resuming needs the same method and config,
            epochs aside).
        sdm: the ``sdm`` baseline's settings (unused by ``kasten``).

    Returns:
        the epochs and steps done, the best validation Dice (NaN without validation), the
        checkpoints and the metrics history.

    Raises:
        InputError: bad method, data or config; a mismatching dataset or checkpoint; ``run.out_dir``
            holding a run without ``run.resume`` (or none with it).
        TrainingInterrupted: on Ctrl-C / SIGTERM, after writing ``last.pt``.
    """
    _check_method(method)
    out_dir, resume, progress = run.out_dir, run.resume, run.progress
    check_run_dir(out_dir, resume)  # the cheap refusals first
    opened = open_run(config, run)
    config, train_set = opened.config, opened.train_set
    if method == "sdm" and len(train_set) < SDM_MIN_SUBJECTS:
        raise InputError(
            f"data: the sdm baseline needs at least {SDM_MIN_SUBJECTS} training subjects (a deformation "
            f"model of their variation), got {len(train_set)}"
        )
    context = DistributedContext(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    prepare_run_dir(config, out_dir, resume)
    state = None
    if resume:
        state = load_checkpoint(out_dir / LAST, context.device)
        if state.get("method") != method:
            raise InputError(f"{out_dir / LAST}: a {state.get('method', 'registration network')} run, not {method}")
        check_resumable(config, state, out_dir / LAST)
    with deterministic_algorithms():
        seed_everything(config.training.seed)
        atlas = load_atlas(config.geometry.grid_preset)
        task: _KastenTask | _SDMTask
        if method == "kasten":
            task = _KastenTask(KastenNet(config, atlas.grid))
        else:
            pca, targets = build_sdm(train_set, atlas, out_dir, sdm, progress)
            task = _SDMTask(SDMNet(config, atlas, pca), targets, sdm.dice_weight)
        baseline_run = _BaselineRun(task, method, opened, out_dir, context)
        if state is not None:
            baseline_run.restore(state, out_dir / LAST)
        return baseline_run.run_epochs(progress, resume, run.step_limit)
