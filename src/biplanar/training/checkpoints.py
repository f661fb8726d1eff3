"""Checkpoints: everything to continue a run exactly, and everything to rebuild its model.

A checkpoint is a ``torch.save`` dict (loadable with ``weights_only=True``)::

    format, version       "biplanar-checkpoint", 1
    config                ExperimentConfig.to_dict() (so a checkpoint alone rebuilds its model)
    model                 the network's state dict (weights and the atlas buffers)
    optimizer, scheduler  their state dicts
    rng                   torch, numpy and python random states
    epoch                 the epoch in progress (0-based)
    step_in_epoch         optimizer steps done in that epoch
    global_step           optimizer steps done in the run
    world_size            processes that shared each step
    best_metric           best validation Dice so far (-inf before the first validation)
    elapsed_s             training wall time so far, s
    epoch_sums            running sums of the epoch's training losses (and their count)
    history               one row per finished epoch (the rows of metrics.csv)

A *weights-only* checkpoint (what :func:`export_model` writes, and what is bundled with the package
under ``biplanar/resources/models/<name>/model.pt``) holds only ``format``, ``version``,
``config``, ``model`` and ``exported_from`` (the epoch, step and best metric of its source): it
rebuilds the model (:func:`load_model`) but cannot resume training.

Files are written atomically (a temporary name, then rename).
"""

from __future__ import annotations

import random
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from biplanar.config import ExperimentConfig
from biplanar.data.atlas import load_atlas
from biplanar.errors import InputError, one_line
from biplanar.io.atomic import atomic_path
from biplanar.models.network import AtlasRegistrationNet

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)

FORMAT, VERSION = "biplanar-checkpoint", 1
MODEL_KEYS = ("config", "model")  # what rebuilding a model needs (a weights-only checkpoint)
IDENTITY_KEYS = ("kind", "network")  # what kind of model a SOPI checkpoint holds (kept by export_model)
BUNDLED_MODEL_FILE = "model.pt"
REQUIRED_KEYS = (
    "config",
    "model",
    "optimizer",
    "scheduler",
    "rng",
    "epoch",
    "step_in_epoch",
    "global_step",
    "world_size",
    "best_metric",
    "elapsed_s",
    "epoch_sums",
    "history",
)


def capture_rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and python random states, as weights-only-loadable values."""
    numpy_state = np.random.get_state(legacy=True)
    if not isinstance(numpy_state, tuple):  # a dict only when the global generator is not MT19937
        raise TypeError("numpy's global random state: expected the legacy MT19937 tuple")
    kind, keys, position, has_gauss, cached_gauss = numpy_state
    version, python_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": position,
            "has_gauss": has_gauss,
            "cached_gauss": cached_gauss,
        },
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached_gauss"],
        )
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (the keys of :data:`REQUIRED_KEYS`) to ``path`` atomically."""
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise ValueError(f"checkpoint state: missing keys {missing}")
    path = Path(path)
    with atomic_path(path) as temporary:
        torch.save({"format": FORMAT, "version": VERSION, **state}, temporary)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        InputError: a missing or unreadable file, or not a biplanar checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises pickle, zip and runtime errors alike on a bad file
        raise InputError(
            f"{path}: not a readable checkpoint ({type(error).__name__}: {one_line(str(error))})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"{path}: not a biplanar checkpoint")
    if state.get("version") != VERSION:
        raise InputError(f"{path}: checkpoint version {state.get('version')}, expected {VERSION}")
    return state


def load_model(
    checkpoint_path: str | Path, device: str | torch.device = "cpu"
) -> tuple[AtlasRegistrationNet, ExperimentConfig]:
    """Rebuild a trained network from a checkpoint alone (its config, the shipped atlas, its weights).

    Args:
        checkpoint_path: a ``best.pt`` / ``last.pt`` written by :func:`biplanar.training.trainer.train`,
            or a weights-only checkpoint (:func:`export_model`, :func:`bundled_model_path`).
        device: where to put the network.

    Returns:
        ``(network, config)``: the :class:`~biplanar.models.network.AtlasRegistrationNet` in eval
        mode and its :class:`~biplanar.config.ExperimentConfig`.

    Raises:
        InputError: a bad checkpoint file, or weights that do not fit the config's network.
    """

    state = load_checkpoint(checkpoint_path)
    missing = [key for key in MODEL_KEYS if key not in state]
    if missing:
        raise InputError(f"{checkpoint_path}: checkpoint has no {', '.join(missing)}")
    config = ExperimentConfig.from_dict(state["config"], f"{checkpoint_path}: config")
    network = AtlasRegistrationNet(config, load_atlas(config.geometry.grid_preset))
    return load_weights(network, state, checkpoint_path, device), config


def load_weights(
    network: ModuleT, state: dict[str, Any], path: str | Path, device: str | torch.device, what: str = "network"
) -> ModuleT:
    """``network`` with a checkpoint's weights (``state["model"]``), in eval mode on ``device``.

    Args:
        network: the network the checkpoint's config builds.
        state: the checkpoint (:func:`load_checkpoint`).
        path: the checkpoint's file, for the message.
        device: where to put the network.
        what: the network's name in the message (``"<method> network"`` for a baseline).

    Raises:
        InputError: weights that do not fit the network.
    """
    try:
        network.load_state_dict(state["model"])
    except (RuntimeError, TypeError) as error:  # TypeError: stored weights that are not a state dict
        raise InputError(f"{path}: weights do not fit the config's {what} ({one_line(str(error))})") from None
    return network.to(device).eval()


def export_model(checkpoint: str | Path, out_path: str | Path) -> Path:
    """Write a weights-only copy of a checkpoint (config and weights, and a SOPI checkpoint's ``kind``
    and ``network``; no optimizer, scheduler or random states) to ``out_path``, atomically: a file to
    ship, loadable by :func:`load_model` (or :func:`biplanar.pose.sopi.load_sopi_network`).

    Args:
        checkpoint: a full (``best.pt``) or weights-only checkpoint.
        out_path: the file to write (its folder is created).

    Returns:
        ``out_path``.

    Raises:
        InputError: a bad ``checkpoint`` (nothing is written then).
    """
    state = load_checkpoint(checkpoint)
    missing = [key for key in MODEL_KEYS if key not in state]
    if missing:
        raise InputError(f"{checkpoint}: checkpoint has no {', '.join(missing)}")
    source = state.get("exported_from") or {
        key: state[key] for key in ("epoch", "global_step", "best_metric") if key in state
    }
    out_path = Path(out_path)
    with atomic_path(out_path) as temporary:
        identity = {key: state[key] for key in IDENTITY_KEYS if key in state}
        torch.save(
            {
                "format": FORMAT,
                "version": VERSION,
                "config": state["config"],
                "model": state["model"],
                **identity,
                "exported_from": source,
            },
            temporary,
        )
    return out_path


def bundled_models_dir() -> Path:
    """The folder of the models shipped with the package: ``biplanar/resources/models``."""
    return Path(str(resources.files("biplanar") / "resources" / "models"))


def bundled_model_path(name: str = "lite") -> Path:
    """The weights-only checkpoint of the bundled model ``name``.

    Raises:
        InputError: no such bundled model.
    """
    path = bundled_models_dir() / name / BUNDLED_MODEL_FILE
    if not path.is_file():
        raise InputError(
            f"no bundled model {name!r} (expected {path}); give a checkpoint from `biplanar train` (--model)"
        )
    return path
