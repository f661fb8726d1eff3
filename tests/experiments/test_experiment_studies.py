"""The geometry studies' views, the models' ablation switches, recovering a correction's rotation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from biplanar.config import load_config
from biplanar.data.grid_presets import grid_preset
from biplanar.data.simulate import SimulationConfig, case_views
from biplanar.errors import InputError
from biplanar.experiments.angle_studies import _check_views, carm_views
from biplanar.experiments.models import ABLATIONS, FULL, MODELS, model_config
from biplanar.geometry.projection import view_angles_deg

SIMULATION = SimulationConfig(preset="tiny")
GRID = grid_preset("tiny")


def _sample(views) -> dict:
    return {
        "subject_id": "case_x",
        "projection_matrices": torch.from_numpy(np.stack([views["AP"].matrix, views["LAT"].matrix])),
    }


def test_true_views_are_those_of_the_simulated_orthogonal_cases():
    simulated = case_views(7, SIMULATION, GRID)
    ours = carm_views(0.0, 90.0, SIMULATION, GRID)
    for name in ("AP", "LAT"):
        np.testing.assert_allclose(ours[name].matrix, simulated[name].matrix, rtol=1e-12, atol=1e-9)
        assert ours[name].image_shape == simulated[name].image_shape
    _check_views(_sample(simulated), ours, "data")  # no error


@pytest.mark.parametrize("error", [-10.0, -3.0, 7.0])
def test_a_wrong_lat_angle_moves_only_the_lat_view(error):
    true, wrong = carm_views(0.0, 90.0, SIMULATION, GRID), carm_views(0.0, 90.0 + error, SIMULATION, GRID)
    np.testing.assert_array_equal(true["AP"].matrix, wrong["AP"].matrix)
    assert view_angles_deg(wrong["LAT"])[0] == pytest.approx(90.0 + error, abs=1e-9)
    # the source stays on the C-arm's circle about the isocentre (the grid's centre)
    assert np.linalg.norm(wrong["LAT"].source_world - GRID.centre_world) == pytest.approx(925.0)


def test_a_non_orthogonal_case_is_refused_for_fig3():
    generalized = carm_views(12.0, 95.0, SIMULATION, GRID)
    with pytest.raises(InputError, match="case_x view AP is not at LAO/RAO 0"):
        _check_views(_sample(generalized), carm_views(0.0, 90.0, SIMULATION, GRID), "data")


def test_each_ablation_changes_exactly_its_switch():
    base = load_config("tiny")
    assert model_config(FULL, base) == base
    for spec in ABLATIONS:
        config = model_config(spec, base)
        ((section, name, value),) = spec.switches
        assert getattr(getattr(config, section), name) == value != getattr(getattr(base, section), name)
        restored = dataclasses.replace(config, **{section: getattr(base, section)})
        assert restored == base
    assert len({spec.name for spec in MODELS}) == len(MODELS)
