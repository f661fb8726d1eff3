"""Folds of a deformation (``biplanar.evaluation.deformation``) against closed forms: linear fields,
whose Jacobian is the same at every corner, and a one-voxel fold whose folded cells can be counted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biplanar.evaluation.deformation import corner_jacobian_determinants, folding_statistics
from biplanar.geometry import VolumeGrid

GRID = VolumeGrid.from_spacing((10, 8, 12), (0.664, 0.664, 1.0), (5.0, -3.0, 20.0))


def linear_field(gradient: np.ndarray) -> torch.Tensor:
    """``(3, I, J, K)`` ``u(x) = gradient (x - c)``, world mm on :data:`GRID`."""
    points = GRID.voxel_centres_world(torch.float64).numpy()
    return torch.as_tensor(np.moveaxis((points - np.asarray(GRID.centre_world)) @ gradient.T, -1, 0))


@pytest.mark.parametrize(
    "gradient",
    [
        np.zeros((3, 3)),
        np.array([[0.3, -0.2, 0.1], [0.05, -0.4, 0.2], [0.0, 0.3, 0.5]]),
        np.diag([-2.0, 0.0, 0.0]),  # a reflection: every cell folded
    ],
)
def test_linear_fields_have_their_closed_form_determinant_everywhere(gradient):
    determinants = corner_jacobian_determinants(linear_field(gradient), GRID)
    assert determinants.shape == (8, 9, 7, 11)
    expected = np.linalg.det(np.eye(3) + gradient)
    np.testing.assert_allclose(determinants.numpy(), expected, atol=1e-9)
    statistics = folding_statistics(linear_field(gradient)[None], GRID)
    assert statistics["smallest_jacobian_determinant"] == pytest.approx(expected, abs=1e-9)
    assert statistics["folded_cells_percent"] == (100.0 if expected <= 0 else 0.0)


def test_a_one_voxel_fold_folds_the_four_cells_behind_it():
    # u_x = -3 voxels at one interior voxel, 0 elsewhere: along x the map runs backwards on the edge
    # arriving at that voxel (J_xx = 1 - 3), so the 4 cells sharing that edge fold; the edge leaving
    # it stretches (1 + 3) and the cells beyond stay one to one.
    field = torch.zeros(3, *GRID.shape, dtype=torch.float64)
    field[0, 4, 3, 5] = -3.0 * 0.664
    statistics = folding_statistics(field, GRID)
    assert statistics["folded_cells_percent"] == pytest.approx(100.0 * 4 / (9 * 7 * 11))
    assert statistics["smallest_jacobian_determinant"] == pytest.approx(-2.0)


def test_a_field_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="displacement_mm"):
        corner_jacobian_determinants(torch.zeros(3, 4, 4, 4), GRID)
