"""Config presets and their old forms: ``geometry.prost_samples`` (before the rename to ``num_samples``)
still reads from YAML files, config dicts and the bundled checkpoints; the presets keep their values."""

from __future__ import annotations

import inspect

import pytest

from biplanar.config import DEFAULT_NUM_SAMPLES, ExperimentConfig, load_config
from biplanar.data.masks import femur_masks
from biplanar.data.simulate import SimulationConfig
from biplanar.errors import InputError
from biplanar.layers.prost import ProST
from biplanar.models.sopi.config import SopiConfig, load_sopi_config
from biplanar.optimisation.intensity_registration import ProjectionObjective
from biplanar.physics.drr import RadiographSettings, render_drr
from biplanar.physics.polychromatic import render_polychromatic_drr
from biplanar.pose.sopi import load_sopi_network
from biplanar.training.checkpoints import bundled_models_dir, load_checkpoint, load_model

BUNDLED = bundled_models_dir()
# Every shipped preset states its samples per ray; these are the values its models were trained with.
PRESET_SAMPLES = {
    "paper": 256,
    "lite": 128,
    "tiny": 64,
    "sopi_lite": 128,
    "sopi_lite_clinical": 128,
    "sopi_lumbar": 160,
    "sopi_lumbar_clinical": 160,
    "sopi_tiny": 64,
}


@pytest.mark.parametrize("preset, samples", PRESET_SAMPLES.items())
def test_presets_keep_their_samples_per_ray(preset, samples):
    load = load_sopi_config if preset.startswith("sopi") else load_config
    assert load(preset).geometry.num_samples == samples


@pytest.mark.parametrize(
    "function",
    [
        ProST,
        render_drr,
        RadiographSettings,
        render_polychromatic_drr,
        femur_masks,
        SimulationConfig,
        ProjectionObjective,
    ],
)
def test_one_default_for_the_samples_per_ray(function):
    assert inspect.signature(function).parameters["num_samples"].default == DEFAULT_NUM_SAMPLES
    assert ExperimentConfig().geometry.num_samples == SopiConfig().geometry.num_samples == DEFAULT_NUM_SAMPLES


@pytest.mark.parametrize("config_class, preset", [(ExperimentConfig, "lite"), (SopiConfig, "sopi_lumbar")])
def test_an_old_style_dict_loads(config_class, preset):
    new = (load_sopi_config if config_class is SopiConfig else load_config)(preset)
    document = new.to_dict()
    document["geometry"]["prost_samples"] = document["geometry"].pop("num_samples")
    assert config_class.from_dict(document) == new


def test_old_and_new_names_together_are_an_error():
    document = load_config("tiny").to_dict()
    document["geometry"]["prost_samples"] = 64
    with pytest.raises(InputError, match=r"old\.yaml\.geometry: prost_samples and num_samples both given"):
        ExperimentConfig.from_dict(document, "old.yaml")


def test_old_style_yaml_files_load(tmp_path):
    # These bundled runs' logs are YAML written before the rename (sopi_lumbar's, retrained since, after it).
    assert load_config(BUNDLED / "lite" / "training_log" / "config.yaml").geometry.num_samples == 128
    for name, samples, old_style in (("sopi_lite", 128, True), ("sopi_lumbar", 160, False)):
        for network in ("rtpi", "fine"):
            path = BUNDLED / name / "training_log" / network / "config.yaml"
            assert ("prost_samples" in path.read_text()) == old_style
            assert load_sopi_config(path).geometry.num_samples == samples
    old = tmp_path / "old.yaml"
    old.write_text("name: old\ngeometry:\n  prost_samples: 32\n")
    assert load_config(old).geometry.num_samples == 32


def test_the_bundled_checkpoints_still_load():
    path = BUNDLED / "lite" / "model.pt"
    stored = load_checkpoint(path)["config"]["geometry"]
    network, config = load_model(path)
    assert stored.get("prost_samples", stored.get("num_samples")) == config.geometry.num_samples == 128
    assert network.projectors.num_samples == 128
    for name, samples in (("sopi_lite", 128), ("sopi_lumbar", 160)):
        for network_name in ("rtpi", "fine"):
            loaded = load_sopi_network(BUNDLED / name / f"{network_name}.pt", network_name)
            assert loaded.config.geometry.num_samples == samples
