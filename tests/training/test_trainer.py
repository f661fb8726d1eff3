"""The trainer: overfitting two subjects, exact resume, interruption, data checks, sharding, torchrun (DDP)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import biplanar.data.datasets as datasets_module
import biplanar.training.trainer as trainer_module
from biplanar.config import load_config
from biplanar.data.datasets import SimulatedDataset
from biplanar.data.simulate import SimulationConfig, simulate_dataset
from biplanar.errors import InputError
from biplanar.layers.similarity import soft_dice
from biplanar.training.checkpoints import load_checkpoint, load_model
from biplanar.training.distributed import DistributedContext
from biplanar.training.trainer import (
    CSV_FIELDS,
    TrainingInterrupted,
    TrainingRun,
    cosine_factor,
    epoch_order,
    make_batch,
    train,
)

TINY = SimulationConfig(preset="tiny", shapes="phantom", scene="grid")  # the overfitting budget was set on these
OVERFIT_EPOCHS = 30  # x 2 subjects = 60 steps at the tiny config's learning rate 1e-3


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def two_subjects(tmp_path_factory) -> Path:
    """Tiny dataset: 2 train subjects, no validation ones."""
    out = tmp_path_factory.mktemp("two")
    simulate_dataset(out, 2, 5, TINY, progress=False)
    return out


def tiny_config(**training):
    config = load_config("tiny")
    return dataclasses.replace(config, training=dataclasses.replace(config.training, **training))


# --- overfitting ----------------------------------------------------------------------------
def mean_dice(checkpoint: Path, dataset: SimulatedDataset) -> float:
    """Mean over the subjects of the Dice of warped labels > 0.5 vs truth (network in eval mode)."""
    network, config = load_model(checkpoint)
    values = []
    with torch.no_grad():
        for index in range(len(dataset)):
            batch = make_batch([dataset[index]], config.geometry.image_shape, torch.device("cpu"))
            output = network(batch.radiographs, batch.views)
            values.append(soft_dice((output.warped_labels > 0.5).float(), batch.fixed_labels).item())
    return float(np.mean(values))


def test_overfitting_two_subjects_halves_the_loss_and_raises_dice(two_subjects, tmp_path):
    """60 steps (1-2 min on one core) on 2 subjects: the training loss (mean over the 2 subjects of an
    epoch, as optimised) is at least halved, and the Dice of the warped atlas labels (eval mode) rises by
    at least 0.1 over the untrained network's. (The loss of a perfect match is 0: see test_losses.py.)
    """
    config, train_set = tiny_config(epochs=OVERFIT_EPOCHS), SimulatedDataset(two_subjects, "train")
    untrained = train(config, TrainingRun(tmp_path, data_dir=two_subjects, progress=False, max_steps=0))
    dice_before = mean_dice(untrained.last_checkpoint, train_set)
    result = train(config, TrainingRun(tmp_path, data_dir=two_subjects, progress=False, resume=True))
    dice_after = mean_dice(result.last_checkpoint, train_set)
    assert result.global_step == 2 * OVERFIT_EPOCHS
    loss_before, loss_after = result.history[0]["train_total"], result.history[-1]["train_total"]
    assert loss_after <= 0.5 * loss_before, (loss_before, loss_after)
    assert dice_after >= dice_before + 0.1, (dice_before, dice_after)


# --- resume ---------------------------------------------------------------------------------
def test_resume_after_a_stop_continues_exactly(five_subjects, tmp_path):
    """Stop mid-epoch 1 (step 2 of 3), resume to step 5 (across epoch 1's end and validation): steps 3-5
    have the losses, and step 5 the weights, of an uninterrupted 5-step run."""
    config = tiny_config(epochs=2)
    whole = train(config, TrainingRun(tmp_path / "whole", data_dir=five_subjects, progress=False, max_steps=5))
    first = train(config, TrainingRun(tmp_path / "split", data_dir=five_subjects, progress=False, max_steps=2))
    assert [row["step"] for row in first.step_losses] == [1, 2]
    state = load_checkpoint(first.last_checkpoint)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (0, 2, 2)
    second = train(
        config, TrainingRun(tmp_path / "split", data_dir=five_subjects, progress=False, max_steps=5, resume=True)
    )
    assert [row["step"] for row in second.step_losses] == [3, 4, 5]
    for resumed, uninterrupted in zip(second.step_losses, whole.step_losses[2:]):
        for name in ("total", "affine_ncc", "local_ncc", "smoothness", "label_dice"):
            assert resumed[name] == pytest.approx(uninterrupted[name], abs=1e-6, rel=0)
    weights = [load_checkpoint(result.last_checkpoint)["model"] for result in (whole, second)]
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, rtol=0, atol=1e-6)
    for name in CSV_FIELDS[:-1]:  # epoch 1's row (wall time aside), its training means over both calls
        assert second.history[0][name] == pytest.approx(whole.history[0][name], abs=1e-6, rel=0)


def test_epoch_outputs_metrics_csv_and_best(five_subjects, tmp_path):
    result = train(tiny_config(epochs=1), TrainingRun(tmp_path, data_dir=five_subjects, progress=False))
    assert (result.epochs_completed, result.global_step) == (1, 3)
    assert result.best_checkpoint == tmp_path / "best.pt" and result.best_checkpoint.is_file()
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].split(",") == list(CSV_FIELDS) and len(lines) == 2
    row = result.history[0]
    assert 0.0 < row["val_dice"] <= 1.0 and 0.0 < row["val_affine_dice"] <= 1.0
    assert row["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine schedule ends at 0 after the planned epochs
    assert load_config(tmp_path / "config.yaml") == tiny_config(epochs=1)
    assert any((tmp_path / "tensorboard").iterdir())
    network, config = load_model(result.best_checkpoint)
    assert config == tiny_config(epochs=1) and not network.training


def test_resume_refuses_another_config_and_train_refuses_to_overwrite(five_subjects, tmp_path):
    train(tiny_config(epochs=1), TrainingRun(tmp_path, data_dir=five_subjects, progress=False, max_steps=1))
    with pytest.raises(InputError, match="holds a training run"):
        train(tiny_config(epochs=1), TrainingRun(tmp_path, data_dir=five_subjects, progress=False))
    with pytest.raises(InputError, match="training.learning_rate"):
        train(
            tiny_config(learning_rate=0.5), TrainingRun(tmp_path, data_dir=five_subjects, progress=False, resume=True)
        )
    with pytest.raises(InputError, match="no checkpoint"):
        train(tiny_config(), TrainingRun(tmp_path / "empty", data_dir=five_subjects, progress=False, resume=True))


def test_init_starts_from_a_checkpoint_s_weights_and_refuses_another_network(tiny_model, five_subjects, tmp_path):
    start = train(
        tiny_config(epochs=1),
        TrainingRun(tmp_path / "run", data_dir=five_subjects, progress=False, max_steps=0),
        init=tiny_model,
    )
    weights = load_checkpoint(start.last_checkpoint)["model"]
    for name, value in load_checkpoint(tiny_model)["model"].items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=0, msg=name)
    wider = load_config("tiny")
    wider = dataclasses.replace(wider, local=dataclasses.replace(wider.local, ray_copies=wider.local.ray_copies + 1))
    with pytest.raises(InputError, match="its local settings differ"):
        train(
            wider, TrainingRun(tmp_path / "other", data_dir=five_subjects, progress=False, max_steps=0), init=tiny_model
        )
    assert not (tmp_path / "other").exists()  # refused before the run folder is made


def test_sigint_writes_a_checkpoint_then_raises(five_subjects, tmp_path, monkeypatch):
    """A Ctrl-C during step 2's data loading: step 2 finishes, last.pt records 2 steps, resume continues."""

    class InterruptedDataset(SimulatedDataset):
        loads = 0

        def __getitem__(self, index):
            InterruptedDataset.loads += 1
            if InterruptedDataset.loads == 4:  # 1, 2: the checks of the first train and val cases; 3: step 1
                signal.raise_signal(signal.SIGINT)
            return super().__getitem__(index)

    monkeypatch.setattr(datasets_module, "SimulatedDataset", InterruptedDataset)  # what SimulatedDatasets opens
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as raised:
        train(tiny_config(epochs=1), TrainingRun(tmp_path, data_dir=five_subjects, progress=False))
    assert raised.value.checkpoint == tmp_path / "last.pt"
    assert load_checkpoint(tmp_path / "last.pt")["global_step"] == 2
    assert signal.getsignal(signal.SIGINT) is handler
    result = train(tiny_config(epochs=1), TrainingRun(tmp_path, data_dir=five_subjects, progress=False, resume=True))
    assert [row["step"] for row in result.step_losses] == [3]


def test_bf16_and_activation_checkpointing_train_close_to_float32(five_subjects, tmp_path):
    """The first step's loss (the untrained network's) under bfloat16 autocast and recomputation is the
    float32 one up to bfloat16 precision (8 bits of mantissa: ~0.4 % relative)."""
    steps = {}
    for name, options in {"float32": {}, "bf16": {"bf16": True, "activation_checkpointing": True}}.items():
        result = train(
            tiny_config(**options), TrainingRun(tmp_path / name, data_dir=five_subjects, progress=False, max_steps=1)
        )
        steps[name] = result.step_losses[0]
    assert math.isfinite(steps["bf16"]["total"])
    assert steps["bf16"]["total"] == pytest.approx(steps["float32"]["total"], rel=0.02)


# --- data and configuration checks --------------------------------------------------------
def test_dataset_of_another_preset_is_refused(five_subjects, tmp_path):
    with pytest.raises(InputError, match="geometry.grid_preset"):
        train(load_config("lite"), TrainingRun(tmp_path, data_dir=five_subjects, progress=False))
    config = load_config("tiny")
    other_shape = dataclasses.replace(config, geometry=dataclasses.replace(config.geometry, image_shape=(48, 40)))
    with pytest.raises(InputError, match="geometry.image_shape"):
        train(other_shape, TrainingRun(tmp_path, data_dir=five_subjects, progress=False))
    with pytest.raises(InputError, match="exactly one"):
        train(config, TrainingRun(tmp_path, progress=False))


def test_several_dataset_folders_train_together(two_subjects, five_subjects):
    one_train, one_val = trainer_module.open_datasets(load_config("tiny"), five_subjects, None)
    train_set, val_set = trainer_module.open_datasets(load_config("tiny"), [five_subjects, two_subjects], None)
    assert (len(train_set), len(val_set)) == (len(one_train) + 2, len(one_val))


def test_on_the_fly_data_uses_distinct_train_and_validation_subjects(tmp_path):
    train_set, val_set = trainer_module.open_datasets(load_config("tiny"), None, 10)
    assert (len(train_set), len(val_set)) == (10, 2)  # the paper's 235 : 40
    assert train_set.base_seed != val_set.base_seed
    assert not torch.equal(train_set[0]["ct"], val_set[0]["ct"])


def test_epoch_order_shards_a_seeded_permutation():
    n, world = 11, 3
    shards = [epoch_order(7, 2, n, DistributedContext(world_size=world, rank=rank)) for rank in range(world)]
    single = epoch_order(7, 2, n, DistributedContext())
    assert sorted(single) == list(range(n))
    assert [len(shard) for shard in shards] == [3, 3, 3]  # the 2 left over are dropped
    assert [i for triple in zip(*shards) for i in triple] == single[:9]
    assert single == [int(i) for i in np.random.default_rng([7, 2]).permutation(n)]
    assert single != epoch_order(7, 3, n, DistributedContext())


def test_cosine_factor_closed_forms():
    assert cosine_factor(0, 10) == 1.0
    assert cosine_factor(5, 10) == pytest.approx(0.5)
    assert cosine_factor(10, 10) == pytest.approx(0.0)
    assert cosine_factor(12, 10) == pytest.approx(0.0)
    assert cosine_factor(2, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi / 5)))


def test_load_model_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(InputError, match="not a biplanar checkpoint"):
        load_model(path)
    with pytest.raises(InputError, match="file not found"):
        load_model(tmp_path / "missing.pt")


# --- distributed ----------------------------------------------------------------------------
def test_torchrun_two_processes_on_cpu(five_subjects, tmp_path):
    """2 gloo processes, 1 step each on 3 train subjects (one dropped), validation reduced over both."""
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(f"""
        import json, sys
        from biplanar.training.trainer import TrainingRun, train
        result = train("tiny", TrainingRun({str(tmp_path / "run")!r}, data_dir={str(five_subjects)!r}, epochs=1,
                                           progress=False))
        report = {{"steps": result.global_step, "dice": result.history[0]["val_dice"],
                  "train_total": result.history[0]["train_total"]}}
        # one write() of the line with its newline: the two ranks share the pipe, and a write of
        # under PIPE_BUF bytes is not interleaved with the other's (print may write twice)
        sys.stdout.write(json.dumps(report) + "\\n")
        sys.stdout.flush()
    """)
    )
    torchrun = Path(sys.executable).parent / "torchrun"
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        env=environment,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (state["epoch"], state["global_step"], state["world_size"]) == (1, 1, 2)
    assert (tmp_path / "run" / "best.pt").is_file()
    reports = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == 2 and reports[0] == reports[1]  # both ranks agree (reduced metrics)
