"""Fixtures shared by several test modules (each one module-scoped, built once per module that asks).

- ``one_thread``: not autouse; a module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
- ``tiny``: the tiny experiment config and atlas.
- ``five_subjects``: a tiny simulated dataset (3 train, 1 val, 1 test subjects).
- ``tiny_model``: an untrained, seeded, weights-only tiny checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from biplanar.config import load_config
from biplanar.data.atlas import load_atlas
from biplanar.data.simulate import SimulationConfig, simulate_dataset
from biplanar.models.network import AtlasRegistrationNet
from biplanar.training.checkpoints import FORMAT, VERSION


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module: on a loaded 2-core machine two threads are several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    """``(ExperimentConfig, Atlas)`` of the ``tiny`` preset."""
    return load_config("tiny"), load_atlas("tiny")


@pytest.fixture(scope="module")
def five_subjects(tmp_path_factory) -> Path:
    """Tiny dataset: 3 train, 1 val, 1 test subjects."""
    out = tmp_path_factory.mktemp("five")
    simulate_dataset(out, 5, 3, SimulationConfig(preset="tiny"), progress=False)
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """An untrained weights-only tiny checkpoint (seeded)."""
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.manual_seed(0)
    config = load_config("tiny")
    network = AtlasRegistrationNet(config, load_atlas("tiny"))
    torch.save({"format": FORMAT, "version": VERSION, "config": config.to_dict(), "model": network.state_dict()}, path)
    return path
