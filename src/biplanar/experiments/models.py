"""The models of the experiments: the full network, its ablations, the learned baselines, and the
network trained on generalized geometries; training one under a budget, or reusing a checkpoint.

Each model's config is the budget's preset with the model's switches changed
(:func:`model_config`); each is trained on the ``train`` / ``val`` splits of its dataset
(orthogonal, or generalized for the Fig. 4 model) for the budget's epochs and step cap, so within
a budget every model gets the same number of optimizer steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biplanar.config import ExperimentConfig, load_config
from biplanar.errors import InputError
from biplanar.experiments.budgets import Budget
from biplanar.training.baselines import SdmSettings, train_baseline
from biplanar.training.checkpoints import load_checkpoint, load_model
from biplanar.training.trainer import BEST, LAST, TrainingRun, train

NETWORK, KASTEN, SDM = "network", "kasten", "sdm"
ORTHOGONAL, GENERALIZED = "orthogonal", "generalized"


@dataclass(frozen=True)
class ModelSpec:
    """One model of the experiments.

    Attributes:
        name: short name (stage folders ``train_<name>``, ``eval_<name>``).
        label: its row in the tables.
        method: ``network`` (:class:`~biplanar.models.network.AtlasRegistrationNet`), ``kasten`` or ``sdm``.
        geometry: its training dataset, ``orthogonal`` or ``generalized``.
        switches: ``(section, field, value)`` changes to the budget's config (the ablation).
    """

    name: str
    label: str
    method: str
    geometry: str = ORTHOGONAL
    switches: tuple[tuple[str, str, Any], ...] = ()


FULL = ModelSpec("full", "Ours (affine + local)", NETWORK)
ABLATIONS = (
    ModelSpec(
        "separate_encoders",
        "Separate AP / LAT affine encoders",
        NETWORK,
        switches=(("affine", "encoders", "separate"),),
    ),
    ModelSpec("no_skip", "No skip connections (local)", NETWORK, switches=(("local", "skip", False),)),
    ModelSpec("single_decoder", "Single encoder-decoder (local)", NETWORK, switches=(("local", "decoder", "single"),)),
    ModelSpec("no_inv_prost", "No inv-ProST (local)", NETWORK, switches=(("local", "inv_prost", False),)),
)
BASELINES = (
    ModelSpec("kasten", "Kasten et al. 2020 (label regression)", KASTEN),
    ModelSpec("sdm", "Statistical deformation model", SDM),
)
GENERALIZED_MODEL = ModelSpec("generalized", "Ours, trained on generalized geometries", NETWORK, GENERALIZED)
MODELS = (FULL, *ABLATIONS, *BASELINES, GENERALIZED_MODEL)


def model_config(spec: ModelSpec, base: ExperimentConfig) -> ExperimentConfig:
    """``base`` with the model's switches applied (validated like any config)."""
    config = base
    for section, name, value in spec.switches:
        config = dataclasses.replace(
            config, **{section: dataclasses.replace(getattr(config, section), **{name: value})}
        )
    return config


@dataclass(frozen=True)
class TrainedModel:
    """A checkpoint the experiments score, and how it was trained.

    Attributes:
        checkpoint: the file scored (``best.pt`` when a validation ran, else ``last.pt``; or the
            reused checkpoint).
        steps: optimizer steps of its training run (``None`` if the checkpoint does not say).
        wall_s: training wall time, s (``None`` if unknown).
        reused: given by the user instead of trained here.
    """

    checkpoint: Path
    steps: int | None
    wall_s: float | None
    reused: bool

    def to_dict(self) -> dict[str, Any]:
        return {"checkpoint": str(self.checkpoint), "steps": self.steps, "wall_s": self.wall_s, "reused": self.reused}

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> TrainedModel:
        return cls(Path(document["checkpoint"]), document["steps"], document["wall_s"], document["reused"])


def train_model(spec: ModelSpec, budget: Budget, data_dir: Path, run_dir: Path, progress: bool) -> TrainedModel:
    """Train (or continue training, when ``run_dir`` holds a ``last.pt``) one model under ``budget``.

    Args:
        spec: the model.
        budget: its config preset, epochs, step cap (and the SDM's registration settings).
        data_dir: a ``biplanar simulate`` dataset folder of the budget's preset.
        run_dir: the training run folder.
        progress: show the trainer's progress bars.
    """

    config = model_config(spec, load_config(budget.config))
    run = TrainingRun(
        run_dir,
        data_dir=data_dir,
        resume=(run_dir / LAST).is_file(),
        epochs=budget.epochs,
        progress=progress,
        max_steps=budget.max_steps,
    )
    if spec.method == NETWORK:
        train(config, run)
    else:
        train_baseline(spec.method, config, run, SdmSettings(registration=budget.sdm_registration))
    checkpoint = run_dir / BEST if (run_dir / BEST).is_file() else run_dir / LAST
    state = load_checkpoint(run_dir / LAST)
    return TrainedModel(checkpoint, int(state["global_step"]), float(state["elapsed_s"]), reused=False)


def reused_model(checkpoint: Path, budget: Budget, option: str) -> TrainedModel:
    """A user's network checkpoint, checked to fit the budget's preset.

    Raises:
        InputError: not a readable network checkpoint, or one of another grid preset or detector.
    """

    _, config = load_model(checkpoint)
    expected = load_config(budget.config).geometry
    if (config.geometry.grid_preset, tuple(config.geometry.image_shape)) != (
        expected.grid_preset,
        tuple(expected.image_shape),
    ):
        raise InputError(
            f"{option} {checkpoint}: a model of grid preset {config.geometry.grid_preset!r} and "
            f"detector {list(config.geometry.image_shape)}; budget {budget.name!r} needs "
            f"{expected.grid_preset!r} and {list(expected.image_shape)}"
        )
    state = load_checkpoint(checkpoint)
    source = state.get("exported_from") or state
    steps, wall = source.get("global_step"), state.get("elapsed_s")
    return TrainedModel(
        Path(checkpoint).resolve(),
        None if steps is None else int(steps),
        None if wall is None else float(wall),
        reused=True,
    )
