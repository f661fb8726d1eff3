"""Files from someone else (issue 18): a checkpoint, config, dataset or geometry file must not make
biplanar read arbitrary files, escape a dataset folder, allocate tens of GB or loop for ever. Each is
refused with a one-line :class:`~biplanar.errors.InputError` naming the file and field, before
anything is allocated (and by the CLI with exit code 2, no traceback)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import biplanar.training.checkpoints as checkpoints
from biplanar.cli import app
from biplanar.config import MAX_MEMORY_ENV, ExperimentConfig, load_config
from biplanar.data.atlas import load_atlas, shipped_atlas_dir
from biplanar.data.datasets import SimulatedDataset, read_split
from biplanar.data.simulate import SimulationConfig
from biplanar.errors import InputError
from biplanar.io.geometry_file import read_geometry
from biplanar.io.images import read_image
from biplanar.io.volumes import read_volume
from biplanar.models.segmentation import SegmentationConfig
from biplanar.models.sopi.config import SopiConfig, load_sopi_config
from biplanar.training.checkpoints import bundled_model_path, load_model
from biplanar.training.segmentation_trainer import load_radiographs

# (section, field, hostile value, what the message names): the stored config of a checkpoint.
HOSTILE_FIELDS = [
    ("geometry", "grid_preset", "../../etc", "geometry.grid_preset: expected one of paper, lite, tiny"),
    ("geometry", "grid_preset", "/etc", "geometry.grid_preset: expected one of paper, lite, tiny"),
    ("geometry", "prost_samples", 10**9, "geometry.num_samples: expected an integer in 1..4096"),
    ("geometry", "image_shape", [100000, 100000], "geometry.image_shape: expected integers in 8..4096"),
    ("geometry", "image_shape", [112, 80, 3], "geometry.image_shape: expected 2 values"),
    ("geometry", "image_shape", ["a", "b"], "geometry.image_shape[0]: expected a number"),
    ("local", "integration_steps", 10**6, "local.integration_steps: expected an integer in 0..20"),
    ("local", "ray_copies", 10**6, "local.ray_copies: expected an integer in 1..64"),
    ("local", "encoder_features", [8] * 10**4, "local.encoder_features: expected 1 to 12 values"),
    ("affine", "levels", 10**9, "affine.levels: expected an integer in 1..12"),
    ("affine", "base_features", 10**400, "affine.base_features: expected an integer in 1..1024"),
    ("training", "batch_size", 0, "training.batch_size: expected an integer in 1..1024"),
    ("training", "learning_rate", float("nan"), "training.learning_rate: expected a finite number"),
    ("local", "ray_copies", 4.5, "local.ray_copies: expected an integer"),
]
# The same for a SOPI config (pose search iterations included).
HOSTILE_SOPI_FIELDS = [
    ("geometry", "grid_preset", "../../etc", "geometry.grid_preset: expected one of paper, lite, tiny"),
    ("geometry", "num_samples", 10**9, "geometry.num_samples: expected an integer in 1..4096"),
    ("geometry", "image_shape", [100000, 100000], "geometry.image_shape: expected integers in 8..4096"),
    ("search", "max_iterations", 10**9, "search.max_iterations: expected an integer in 1..10000"),
    ("search", "rotation_iterations", -1, "search.rotation_iterations: expected an integer in 0..10000"),
    ("rtpi", "volume_shape", [4096, 4096, 4096], "rtpi.volume_shape: expected integers in 2..512"),
    ("data", "subjects", 10**7, "data.subjects: expected an integer in 1..1024"),
]


def field_ids(table: list[tuple[str, str, Any, str]]) -> list[str]:
    """Test ids ``section.name`` of a table of hostile fields."""
    return [f"{section}.{name}" for section, name, *_ in table]


@pytest.fixture(scope="module")
def bundled_state() -> dict[str, Any]:
    """The bundled lite model's checkpoint dict, loaded as a user's file would be."""
    return torch.load(bundled_model_path("lite"), map_location="cpu", weights_only=True)


@pytest.fixture
def nothing_is_built(monkeypatch):
    """Fail the test if a checkpoint's network or atlas is built (the refusal must come first)."""

    def refuse(*args, **kwargs):
        raise AssertionError("allocated before the config was checked")

    monkeypatch.setattr(checkpoints, "AtlasRegistrationNet", refuse)
    monkeypatch.setattr(checkpoints, "load_atlas", refuse)


def hostile_checkpoint(state: dict[str, Any], out: Path, section: str, name: str, value: Any) -> Path:
    """A copy of ``state`` with its stored ``config[section][name] = value``, saved to ``out``
    (``prost_samples``: the old name of ``num_samples``, which then goes)."""
    hostile = copy.deepcopy(state)
    if name == "prost_samples":
        hostile["config"][section].pop("num_samples", None)
    hostile["config"][section][name] = value
    torch.save(hostile, out)
    return out


def one_line_error(message: str) -> bool:
    """True for a one-line message (what the CLI prints)."""
    return "\n" not in message and len(message) < 400


# --- checkpoints and configs ------------------------------------------------------------------
@pytest.mark.parametrize("section, name, value, expected", HOSTILE_FIELDS, ids=field_ids(HOSTILE_FIELDS))
def test_a_hostile_checkpoint_is_refused_before_anything_is_built(
    bundled_state, nothing_is_built, tmp_path, section, name, value, expected
):
    path = hostile_checkpoint(bundled_state, tmp_path / "hostile.pt", section, name, value)
    with pytest.raises(InputError, match=r"hostile\.pt: config") as refused:
        load_model(path)
    assert expected in str(refused.value) and one_line_error(str(refused.value))


@pytest.mark.parametrize("section, name, value, expected", HOSTILE_FIELDS, ids=field_ids(HOSTILE_FIELDS))
def test_a_hostile_config_yaml_is_refused(tmp_path, section, name, value, expected):
    path = tmp_path / "hostile.yaml"
    path.write_text(yaml.safe_dump({section: {name: value}}))
    with pytest.raises(InputError, match=r"hostile\.yaml") as refused:
        load_config(path)
    assert expected in str(refused.value) and one_line_error(str(refused.value))


@pytest.mark.parametrize("section, name, value, expected", HOSTILE_SOPI_FIELDS, ids=field_ids(HOSTILE_SOPI_FIELDS))
def test_a_hostile_sopi_config_is_refused(tmp_path, section, name, value, expected):
    document = load_sopi_config("sopi_tiny").to_dict()
    document[section][name] = value
    with pytest.raises(InputError, match=r"rtpi\.pt: config: ") as refused:
        SopiConfig.from_dict(document, "rtpi.pt: config")
    assert expected in str(refused.value) and one_line_error(str(refused.value))


def test_an_integer_too_large_to_print_is_refused_in_one_line(bundled_state, nothing_is_built, tmp_path):
    document = load_config("tiny").to_dict()
    document["local"]["ray_copies"] = 10**5000
    with pytest.raises(
        InputError, match=r"local\.ray_copies: expected an integer in 1\.\.64, got an integer too large"
    ):
        ExperimentConfig.from_dict(document)
    # torch's weights-only unpickler refuses such an integer itself (a many-line message, cut to one line).
    path = hostile_checkpoint(bundled_state, tmp_path / "hostile.pt", "local", "ray_copies", 10**5000)
    with pytest.raises(InputError, match=r"hostile\.pt: not a readable checkpoint \(UnpicklingError: ") as refused:
        load_model(path)
    assert one_line_error(str(refused.value))


@pytest.mark.parametrize(
    "values",
    [{"channels": [10**6, 32], "strides": [2]}, {"channels": ["a", 4], "strides": [2]}, {"num_res_units": 10**9}],
)
def test_a_hostile_segmentation_config_is_refused(values):
    with pytest.raises(InputError, match="segmentation config: ") as refused:
        SegmentationConfig.from_dict(values)
    assert one_line_error(str(refused.value))


def test_sizes_in_range_that_need_too_much_memory_are_refused_with_the_figure():
    document = load_config("lite").to_dict()
    document["geometry"] |= {"image_shape": [4096, 4096], "num_samples": 4096}
    with pytest.raises(InputError, match=r"x\.yaml: the network needs about \d+\.\d GiB, above the 16 GiB limit"):
        ExperimentConfig.from_dict(document, "x.yaml")
    sopi = load_sopi_config("sopi_tiny").to_dict()
    sopi["geometry"] |= {"image_shape": [4096, 4096], "num_samples": 4096}
    with pytest.raises(InputError, match=r"the SOPI networks need"):
        SopiConfig.from_dict(sopi)


def test_the_memory_limit_follows_the_environment(bundled_state, monkeypatch, tmp_path):
    monkeypatch.setenv(MAX_MEMORY_ENV, "0.01")
    limit = rf"above the 0\.01 GiB limit \(raise it with biplanar --max-memory GiB or {MAX_MEMORY_ENV}\)"
    with pytest.raises(InputError, match=rf"needs about 0\.\d GiB, {limit}"):
        load_config("lite")
    with pytest.raises(InputError, match=r"model\.pt: config: the network needs about"):
        load_model(bundled_model_path("lite"))
    monkeypatch.setenv(MAX_MEMORY_ENV, "lots")
    with pytest.raises(InputError, match=rf"{MAX_MEMORY_ENV}: expected a positive number of GiB, got 'lots'"):
        load_config("tiny")
    monkeypatch.setenv(MAX_MEMORY_ENV, "64")
    assert load_config("paper").geometry.num_samples == 256


@pytest.mark.parametrize("preset", ["../../etc", "/etc", "lite/../..", ""])
def test_the_shipped_atlas_takes_only_preset_names(preset):
    with pytest.raises(InputError, match="preset: expected one of paper, lite, tiny"):
        shipped_atlas_dir(preset)
    with pytest.raises(InputError, match="preset: expected one of paper, lite, tiny"):
        load_atlas(preset)


# --- dataset split files ------------------------------------------------------------------------
HOSTILE_IDS = ["../x", "..", "../../etc/passwd", "/etc/passwd", "a/b", "a\\b", ".hidden", "", "x" * 200, "a..b", 7]


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A dataset folder with its ``dataset.json`` (no subjects: refusals come first)."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps({"config": SimulationConfig(preset="tiny").to_dict()}))
    return root


@pytest.mark.parametrize("subject", HOSTILE_IDS)
def test_a_split_file_with_a_path_for_an_id_is_refused(dataset, subject):
    (dataset / "split.json").write_text(json.dumps({"train": ["case_00000", subject], "val": [], "test": []}))
    readers = (lambda: read_split(dataset), lambda: SimulatedDataset(dataset), lambda: load_radiographs(dataset, "all"))
    for read in readers:
        with pytest.raises(InputError, match=r"train: subject id .* is not a plain name") as refused:
            read()
        assert str(refused.value).startswith(f"{dataset / 'split.json'}: ") and one_line_error(str(refused.value))


@pytest.mark.parametrize("document", [[], {"train": "case_00000"}, {"train": [["a"]]}, "x"])
def test_a_split_file_of_the_wrong_shape_is_refused(dataset, document):
    (dataset / "split.json").write_text(json.dumps(document))
    with pytest.raises(InputError, match=r"split\.json: "):
        SimulatedDataset(dataset)


def test_plain_ids_are_read(dataset):
    (dataset / "split.json").write_text(json.dumps({"train": ["case_00001", "b.2"], "val": ["A-3"], "test": []}))
    assert read_split(dataset) == {"train": ["case_00001", "b.2"], "val": ["A-3"], "test": []}


# --- the command line ----------------------------------------------------------------------------
def assert_one_line_exit_2(result) -> str:
    """The CLI refused with exit code 2 and one error line, no traceback; returns that line."""
    errors = [line for line in result.output.splitlines() if line.startswith("biplanar: error:")]
    assert result.exit_code == 2, result.output
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


@pytest.mark.parametrize("section, name, value, expected", HOSTILE_FIELDS[:4], ids=field_ids(HOSTILE_FIELDS[:4]))
def test_register_with_a_hostile_model_exits_2(
    bundled_state, nothing_is_built, tmp_path, section, name, value, expected
):
    model = hostile_checkpoint(bundled_state, tmp_path / "hostile.pt", section, name, value)
    arguments = ["register", "--model", str(model), "--ap", "a.npy", "--lat", "b.npy", "--out", str(tmp_path / "out")]
    line = assert_one_line_exit_2(CliRunner().invoke(app, arguments))
    assert "hostile.pt: config" in line and expected in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("section, name, value, expected", HOSTILE_FIELDS[:4], ids=field_ids(HOSTILE_FIELDS[:4]))
def test_train_with_a_hostile_config_exits_2(dataset, tmp_path, section, name, value, expected):
    config = tmp_path / "hostile.yaml"
    config.write_text(yaml.safe_dump({section: {name: value}}))
    arguments = ["train", "--config", str(config), "--data", str(dataset), "--out", str(tmp_path / "run")]
    line = assert_one_line_exit_2(CliRunner().invoke(app, arguments))
    assert "hostile.yaml" in line and expected in line
    assert not (tmp_path / "run").exists()


# --- any file: it loads, or it is refused with an InputError ------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
VIEW = st.fixed_dictionaries(
    {},
    optional={
        "image_shape": JSON | st.lists(st.integers(), max_size=3),
        "projection_matrix": JSON | st.lists(st.lists(st.floats(allow_nan=False), max_size=4), max_size=3),
        "carm": JSON
        | st.dictionaries(
            st.sampled_from(["lao_rao_deg", "cranio_caudal_deg", "source_isocenter_mm", "source_detector_mm"]),
            JSON | st.floats(),
        ),
    },
)
GEOMETRY = JSON | st.fixed_dictionaries({"views": st.dictionaries(st.sampled_from(["AP", "LAT"]), VIEW | JSON)})
PROPERTY = settings(
    max_examples=50, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@PROPERTY
@given(document=GEOMETRY)
def test_any_json_as_a_geometry_file_loads_or_is_refused(tmp_path, document):
    path = tmp_path / "geometry.json"
    path.write_text(json.dumps(document))
    try:
        read_geometry(path, np.zeros(3))
    except InputError as error:
        assert str(path) in str(error) and one_line_error(str(error))


@PROPERTY
@given(data=st.binary(max_size=2048) | st.builds(lambda tail: b"PK\x03\x04" + tail, st.binary(max_size=512)))
def test_any_bytes_as_a_checkpoint_load_or_are_refused(tmp_path, data):
    path = tmp_path / "model.pt"
    path.write_bytes(data)
    with pytest.raises(InputError, match=r"model\.pt: "):
        load_model(path)


# Byte strings that start like each format, so that the readers get past their first check.
HEADERS = {
    ".npy": b"\x93NUMPY\x01\x00",
    ".png": b"\x89PNG\r\n\x1a\n",
    ".tif": b"II*\x00",
    ".dcm": b"\x00" * 128 + b"DICM",
    ".nii.gz": b"\x1f\x8b\x08",
}


@PROPERTY
@given(suffix=st.sampled_from(sorted(HEADERS)), prefixed=st.booleans(), tail=st.binary(max_size=1024))
def test_any_bytes_as_an_image_or_volume_load_or_are_refused(tmp_path, suffix, prefixed, tail):
    path = tmp_path / f"input{suffix}"
    path.write_bytes((HEADERS[suffix] if prefixed else b"") + tail)
    read = read_volume if suffix == ".nii.gz" else read_image
    try:
        read(path)
    except InputError as error:
        assert str(path) in str(error) and one_line_error(str(error))


@PROPERTY
@given(document=JSON | st.fixed_dictionaries({"geometry": JSON, "local": JSON, "training": JSON}))
def test_any_json_as_a_stored_config_builds_or_is_refused(document):
    for config_class in (ExperimentConfig, SopiConfig):
        try:
            config_class.from_dict(document, "model.pt: config")
        except InputError as error:
            assert str(error).startswith("model.pt: config") and one_line_error(str(error))


@pytest.fixture
def memory_env(monkeypatch):
    """No ``BIPLANAR_MAX_MEMORY_GB`` during the test, and none after it (``--max-memory`` sets it)."""
    monkeypatch.setenv(MAX_MEMORY_ENV, "16")  # recorded first, so that the teardown removes it again
    monkeypatch.delenv(MAX_MEMORY_ENV)


def test_max_memory_raises_the_limit_of_the_cli(memory_env, tmp_path):
    document = load_config("lite").to_dict()
    document["geometry"] |= {"image_shape": [1024, 1024], "num_samples": 512}  # about 32 GiB
    (tmp_path / "big.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(document))))
    train = ["train", "--config", str(tmp_path / "big.yaml"), "--data", str(tmp_path / "data"), "--out"]
    runner = CliRunner()

    refused = runner.invoke(app, [*train, str(tmp_path / "run")])
    last = refused.output.strip().splitlines()[-1]
    assert refused.exit_code == 2 and "big.yaml: the network needs about 32." in last, refused.output
    assert "above the 16 GiB limit (raise it with biplanar --max-memory GiB" in last

    accepted = runner.invoke(app, ["--max-memory", "64", *train, str(tmp_path / "run")])
    last = accepted.output.strip().splitlines()[-1]
    assert accepted.exit_code == 2 and "GiB" not in last and "data" in last, accepted.output  # the next check
    assert not (tmp_path / "run").exists()

    lower = runner.invoke(app, ["--max-memory", "0.01", "train", "--config", "lite", "--out", str(tmp_path / "r")])
    assert lower.exit_code == 2 and "above the 0.01 GiB limit" in lower.output  # it lowers the limit too
    assert runner.invoke(app, ["--help"]).output.count("--max-memory") == 1


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-3"])
def test_max_memory_must_be_a_finite_positive_number(memory_env, tmp_path, value):
    result = CliRunner().invoke(app, ["--max-memory", value, "geometry", "--out", str(tmp_path / "g.json")])
    assert result.exit_code == 2 and not (tmp_path / "g.json").exists()
    expected = f"biplanar: error: --max-memory: expected a finite number of GiB > 0, got {float(value)}"
    assert result.output.strip() == expected
