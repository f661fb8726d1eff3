"""Torch datasets of simulated cases: shapes, dtypes and values of the samples read from disk, the
on-the-fly dataset's determinism, and errors on unknown splits and unfinished datasets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from biplanar.data.datasets import OnTheFlyDataset, SimulatedDataset, SimulatedDatasets
from biplanar.data.grid_presets import grid_preset
from biplanar.data.simulate import SimulationConfig, simulate_dataset
from biplanar.errors import InputError

TINY = SimulationConfig(preset="tiny")
N_SUBJECTS, SEED = 4, 21
VOLUME_SHAPE, IMAGE_SHAPE = (1, 48, 32, 48), (2, 56, 40)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("simulated")
    simulate_dataset(out, N_SUBJECTS, SEED, TINY, progress=False)
    return out


def check_sample(sample: dict) -> None:
    """Keys, shapes and dtypes of the module doc of ``biplanar.data.datasets``."""
    expected = {
        "ct": (VOLUME_SHAPE, torch.float32),
        "labels": (VOLUME_SHAPE, torch.uint8),
        "radiographs": (IMAGE_SHAPE, torch.float32),
        "masks": (IMAGE_SHAPE, torch.float32),
        "projection_matrices": ((2, 3, 4), torch.float64),
    }
    assert set(sample) == {*expected, "subject_id"}
    assert isinstance(sample["subject_id"], str) and sample["subject_id"].startswith("case_")
    for key, (shape, dtype) in expected.items():
        assert tuple(sample[key].shape) == shape and sample[key].dtype == dtype, key


def test_splits_have_the_documented_shapes_and_dtypes(dataset):
    lengths = {split: len(SimulatedDataset(dataset, split)) for split in ("train", "val", "test")}
    assert lengths == {"train": 2, "val": 1, "test": 1}
    assert SimulatedDataset(dataset, "all").subject_ids == [f"case_{i:05d}" for i in range(N_SUBJECTS)]
    data = SimulatedDataset(dataset, "train")
    ids = [data[i]["subject_id"] for i in range(len(data))]
    assert ids == data.subject_ids
    check_sample(data[0])
    assert data.grid.shape == VOLUME_SHAPE[1:]
    np.testing.assert_array_equal(data.grid.affine, grid_preset("tiny").affine)


def test_samples_hold_the_files_values(dataset):
    masked, full = SimulatedDataset(dataset, "val"), SimulatedDataset(dataset, "val", masked=False)
    sample, unmasked = masked[0], full[0]
    folder = dataset / "subjects" / sample["subject_id"]
    for channel, view in enumerate(("AP", "LAT")):
        image, mask = (np.load(folder / f"{view}{suffix}.npy") for suffix in ("", "_mask"))
        np.testing.assert_array_equal(unmasked["radiographs"][channel].numpy(), image)
        np.testing.assert_array_equal(sample["radiographs"][channel].numpy(), image * mask)
        np.testing.assert_array_equal(sample["masks"][channel].numpy(), mask)
    assert set(torch.unique(sample["labels"]).tolist()) == {0, 1}
    assert sample["ct"].min() > -200 and sample["ct"].max() > 1000  # soft tissue and cortex, HU


def test_projection_matrices_are_ap_then_lat(dataset):
    """Closed forms of the paper's set-up: the isocentre (world origin) projects to the detector
    centre, and the source (null space of P) is 925 mm anterior (AP) or left (LAT)."""
    matrices = SimulatedDataset(dataset, "test")[0]["projection_matrices"].numpy()
    uvw = matrices @ np.array([0.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(uvw[:, :2] / uvw[:, 2:], [[19.5, 27.5]] * 2, atol=1e-9)
    sources = [-np.linalg.solve(m[:, :3], m[:, 3]) for m in matrices]
    np.testing.assert_allclose(sources, [[0.0, 925.0, 0.0], [-925.0, 0.0, 0.0]], atol=1e-9)


def test_batches_collate(dataset):
    batch = next(iter(DataLoader(SimulatedDataset(dataset, "train"), batch_size=2)))
    assert tuple(batch["ct"].shape) == (2, *VOLUME_SHAPE)
    assert tuple(batch["projection_matrices"].shape) == (2, 2, 3, 4)
    assert len(batch["subject_id"]) == 2


def test_several_folders_read_as_one_in_order(dataset, tmp_path):
    other = tmp_path / "other"
    simulate_dataset(other, 3, SEED + 1, dataclasses.replace(TINY, geometry="generalized"), progress=False)
    first, second = SimulatedDataset(dataset, "all"), SimulatedDataset(other, "all")
    union = SimulatedDatasets([dataset, other], "all")
    assert len(union) == len(first) + len(second) == N_SUBJECTS + 3
    assert union.config == first.config
    check_sample(union[N_SUBJECTS])
    for index, expected in ((0, first[0]), (N_SUBJECTS + 2, second[2])):
        assert torch.equal(union[index]["radiographs"], expected["radiographs"])
        assert torch.equal(union[index]["projection_matrices"], expected["projection_matrices"])


def test_several_folders_must_share_grid_and_detector(dataset, tmp_path):
    other = tmp_path / "lite"
    document = (dataset / "dataset.json").read_text().replace('"preset": "tiny"', '"preset": "lite"')
    other.mkdir()
    (other / "dataset.json").write_text(document)
    (other / "split.json").write_text((dataset / "split.json").read_text())
    (other / "subjects").symlink_to(dataset / "subjects")
    with pytest.raises(InputError, match=r"lite/dataset.json: grid preset and image shape .* differ from"):
        SimulatedDatasets([dataset, other], "all")
    with pytest.raises(InputError, match="data: expected at least one dataset folder"):
        SimulatedDatasets([], "all")


def test_on_the_fly_is_deterministic_and_matches_the_written_subject(dataset):
    data = OnTheFlyDataset(SEED, 10, TINY)
    first, again, other = data[1], data[1], data[2]
    check_sample(first)
    for key in ("ct", "labels", "radiographs", "masks", "projection_matrices"):
        assert torch.equal(first[key], again[key]), key
    assert not torch.equal(first["radiographs"], other["radiographs"])
    splits = [SimulatedDataset(dataset, split) for split in ("train", "val", "test")]
    stored = next(part[i] for part in splits for i, name in enumerate(part.subject_ids) if name == "case_00001")
    for key in ("ct", "labels", "radiographs", "masks"):
        assert torch.equal(first[key], stored[key]), key
    torch.testing.assert_close(first["projection_matrices"], stored["projection_matrices"], rtol=1e-12, atol=1e-9)


def test_on_the_fly_options():
    generalized = OnTheFlyDataset(0, 3, dataclasses.replace(TINY, geometry="generalized"), masked=False)
    sample = generalized[0]
    check_sample(sample)
    assert (sample["radiographs"] * (1 - sample["masks"])).abs().max() > 1.0  # not masked
    with pytest.raises(IndexError, match="expected 0 <= index < 3, got 3"):
        generalized[3]


def test_bad_input_raises(dataset, tmp_path):
    with pytest.raises(InputError, match="split: expected one of train, val, test, all, got 'dev'"):
        SimulatedDataset(dataset, "dev")
    (tmp_path / "dataset.json").write_text((dataset / "dataset.json").read_text())
    with pytest.raises(InputError, match="split.json: file not found"):
        SimulatedDataset(tmp_path)
    with pytest.raises(InputError, match="base_seed >= 0 and length >= 1 expected"):
        OnTheFlyDataset(-1, 5)
