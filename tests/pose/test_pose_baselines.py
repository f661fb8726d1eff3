"""Opt-NCC / Opt-NGI / Opt-GC on the real lumbar CT, and the resolution pyramid they use.

The recovery tests simulate an AP and a LAT radiograph of the real lumbar-pelvis CT shipped with
the package (``biplanar/resources/real_ct``, 3 mm voxels) by ProST at a known pose (5 deg about a
tilted axis, 10 mm off), on 128 x 128 detectors of 3 mm pixels, with 256 samples per ray (the
optimiser renders with ~1 sample per voxel on its own pyramid, so its DRRs are not the targets'
renderer), and start each baseline at the identity with its default settings.
"""

import math

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info

from biplanar.data.real_ct import REAL_CT
from biplanar.geometry.presets import biplanar_pair
from biplanar.geometry.se3 import pose_errors, so3_exp
from biplanar.geometry.transforms import rigid_matrix, rigid_params
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.io.volumes import read_volume
from biplanar.layers.prost import ProST
from biplanar.physics.attenuation import hu_to_mu
from biplanar.pose.baselines import (
    METHODS,
    REFINE_CONFIG,
    OptimisationConfig,
    PoseProblem,
    _lbfgs,
    downsample_image,
    downsample_view,
    downsample_volume,
    estimate_pose,
    estimate_poses,
    refine_config_for,
    refine_pose,
    refine_turned,
    run_baseline,
    search_along_beam,
)


def true_pose(centre: np.ndarray, angle_deg: float = 5.0, offset_mm: float = 10.0) -> torch.Tensor:
    """``(4, 4)`` float64: ``angle_deg`` about a tilted axis through ``centre``, then ``offset_mm``."""
    axis = torch.tensor([1.0, -2.0, 1.5], dtype=torch.float64)
    direction = torch.tensor([-2.0, 1.0, 2.0], dtype=torch.float64)
    rotation = so3_exp(axis / axis.norm() * math.radians(angle_deg))
    centre = torch.as_tensor(centre, dtype=torch.float64)
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, :3] = rotation
    pose[:3, 3] = centre + offset_mm * direction / direction.norm() - rotation @ centre
    return pose


@pytest.fixture(scope="module")
def lumbar_case():
    data, grid = read_volume(REAL_CT)
    mu = hu_to_mu(torch.from_numpy(data))
    views = biplanar_pair(image_shape=(128, 128), pixel_spacing_mm=(3.0, 3.0), isocenter_mm=grid.centre_world)
    pose = true_pose(grid.centre_world)
    with torch.no_grad():
        radiographs = {
            name: ProST(view, grid, 256, margin_mm=60.0)(mu[None, None], pose[None].float())[0, 0]
            for name, view in views.items()
        }
    return mu, grid, views, radiographs, pose


@pytest.mark.parametrize("method", sorted(METHODS))
def test_baseline_recovers_a_known_pose_of_the_real_ct(lumbar_case, method):
    mu, grid, views, radiographs, pose = lumbar_case
    start_rotation, start_translation = pose_errors(torch.eye(4, dtype=torch.float64), pose, grid.centre_world)
    assert abs(float(start_rotation) - 5.0) < 1e-9 and abs(float(start_translation) - 10.0) < 1e-9
    estimate = run_baseline(method, mu, grid, radiographs, views)
    rotation_deg, translation_mm = pose_errors(estimate.matrix, pose, torch.as_tensor(grid.centre_world))
    assert float(rotation_deg) < 1.0 and float(translation_mm) < 1.0, (method, rotation_deg, translation_mm)
    centre = torch.as_tensor(grid.centre_world)
    torch.testing.assert_close(estimate.params, rigid_params(estimate.matrix, centre))
    assert estimate.method == method and estimate.evaluations > 0 and estimate.time_s > 0
    assert set(estimate.per_view_similarity) == {"AP", "LAT"}


@pytest.mark.slow
def test_refine_pose_from_a_nearby_start(lumbar_case):
    mu, grid, views, radiographs, pose = lumbar_case
    start = true_pose(grid.centre_world, angle_deg=1.5, offset_mm=3.0).inverse() @ pose
    estimate = refine_pose(mu, grid, radiographs, views, start)
    rotation_deg, translation_mm = pose_errors(estimate.matrix, pose, torch.as_tensor(grid.centre_world))
    assert float(rotation_deg) < 0.5 and float(translation_mm) < 0.5


def test_turned_refinement_recovers_a_start_turned_about_the_long_axis(lumbar_case):
    """A start 120 deg off about the CT's long axis (world z through its centre): the local refinement
    alone stays off; from three turns (0, 120, 240 deg) the best refinement is the true pose."""
    mu, grid, views, radiographs, pose = lumbar_case
    centre = torch.as_tensor(grid.centre_world)
    turned = rigid_matrix(torch.tensor([0.0, 0.0, math.radians(120.0), 0.0, 0.0, 0.0], dtype=torch.float64), centre)
    start = pose @ turned
    alone = refine_pose(mu, grid, radiographs, views, start)
    assert float(pose_errors(alone.matrix, pose, centre)[0]) > 30.0
    found = refine_turned(mu, grid, radiographs, views, start, turns=3)
    rotation_deg, translation_mm = pose_errors(found.best.matrix, pose, centre)
    assert float(rotation_deg) < 0.5 and float(translation_mm) < 0.5
    assert [turn["turn_deg"] for turn in found.turns] == [0.0, 120.0, 240.0]
    assert [turn["start"] for turn in found.turns] == ["turned 0 deg", "turned 120 deg", "turned 240 deg"]
    best = max(found.turns, key=lambda turn: turn["similarity"])
    assert best["turn_deg"] == 240.0 and best["rotation_from_best_deg"] == 0.0
    assert found.turns[0]["rotation_from_best_deg"] > 30.0 and found.best.similarity == best["similarity"]
    assert found.best.evaluations > alone.evaluations
    runner_up = found.runner_up()  # the best refinement in another local optimum
    others = [turn["similarity"] for turn in found.turns if turn["rotation_from_best_deg"] > 10.0]
    assert runner_up is not None and runner_up.similarity == max(others) < found.best.similarity
    assert float(pose_errors(runner_up.matrix, found.best.matrix, centre)[0]) > 10.0


def test_searches_in_lockstep_end_where_each_alone_ends(lumbar_case):
    """Three starts turned about the CT's long axis searched together (their CMA-ES generations
    rendered in one call): each ends at the pose, similarity and iteration count of its search alone."""
    mu, grid, views, radiographs, pose = lumbar_case
    centre = torch.as_tensor(grid.centre_world)
    config = OptimisationConfig(levels_mm=(12.0, 6.0), max_evaluations=40, refine_steps=3)
    turns = torch.tensor([[0.0, 0.0, angle, 0.0, 0.0, 0.0] for angle in (0.0, 0.3, -0.5)], dtype=torch.float64)
    starts = pose @ rigid_matrix(turns, centre)
    together = estimate_poses(PoseProblem(mu, grid, radiographs, views, pose, config), starts)
    assert len(together) == 3 and together[0].evaluations == together[2].evaluations
    for start, found in zip(starts, together, strict=True):
        alone = estimate_pose(PoseProblem(mu, grid, radiographs, views, start, config))
        torch.testing.assert_close(found.matrix, alone.matrix, rtol=0.0, atol=1e-6)
        assert found.similarity == pytest.approx(alone.similarity, abs=1e-6)
        assert found.iterations == alone.iterations
        assert [entry["stage"] for entry in found.history] == [entry["stage"] for entry in alone.history]


def test_search_starts_at_the_initial_pose_and_rotates_about_its_moved_centre(lumbar_case):
    mu, grid, views, radiographs, pose = lumbar_case
    problem = PoseProblem(mu, grid, radiographs, views, pose, OptimisationConfig(levels_mm=(12.0,)))
    torch.testing.assert_close(problem.pose(torch.zeros(6, dtype=torch.float64)), pose)
    moved_centre = pose[:3, :3] @ torch.as_tensor(grid.centre_world) + pose[:3, 3]
    rotated = problem.pose(torch.tensor([10.0, -20.0, 30.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(rotated[:3, :3] @ torch.as_tensor(grid.centre_world) + rotated[:3, 3], moved_centre)


def test_objective_peaks_at_the_true_pose(lumbar_case):
    mu, grid, views, radiographs, pose = lumbar_case
    problem = PoseProblem(mu, grid, radiographs, views, pose, OptimisationConfig(levels_mm=(12.0,)))
    offsets = torch.tensor([[0.0] * 6, [2.0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 4.0, 0]], dtype=torch.float64)
    with torch.no_grad():
        values = problem.objective(problem.levels[0], offsets)
    assert values[0] > values[1] and values[0] > values[2]


def test_free_parameters_stay_fixed():
    grid = VolumeGrid.from_spacing((8, 8, 8), (4.0, 4.0, 4.0))
    views = biplanar_pair(image_shape=(16, 16), pixel_spacing_mm=(4.0, 4.0))
    problem = PoseProblem(
        torch.rand(8, 8, 8),
        grid,
        {name: torch.rand(16, 16) for name in views},
        views,
        free=(True, True, True, False, False, False),
        config=OptimisationConfig(levels_mm=(4.0,)),
    )
    full = problem.full_x(torch.tensor([[1.0, 2.0, 3.0]]))
    torch.testing.assert_close(full, torch.tensor([[1.0, 2.0, 3.0, 0.0, 0.0, 0.0]]))


def test_bad_problem_inputs_raise():
    grid = VolumeGrid.from_spacing((8, 8, 8), (4.0, 4.0, 4.0))
    views = biplanar_pair(image_shape=(16, 16), pixel_spacing_mm=(4.0, 4.0))
    good = {name: torch.rand(16, 16) for name in views}
    with pytest.raises(ValueError, match=r"radiographs\['AP'\]: expected shape \(16, 16\)"):
        PoseProblem(torch.rand(8, 8, 8), grid, {**good, "AP": torch.rand(15, 16)}, views)
    with pytest.raises(ValueError, match="radiographs: expected the views"):
        PoseProblem(torch.rand(8, 8, 8), grid, {"AP": good["AP"]}, views)
    with pytest.raises(ValueError, match="volume_mu"):
        PoseProblem(torch.rand(8, 8, 7), grid, good, views)
    with pytest.raises(ValueError, match="method"):
        run_baseline("opt-mi", torch.rand(8, 8, 8), grid, good, views)
    with pytest.raises(ValueError, match="seed"):
        OptimisationConfig(seed=0)
    with pytest.raises(ValueError, match=r"cma_levels: expected None or 1 to 2"):
        OptimisationConfig(levels_mm=(12.0, 6.0), cma_levels=3)


def test_refinement_searches_at_12_mm_only_a_ct_that_spans_16_voxels_of_it():
    lumbar = VolumeGrid.from_spacing((122, 101, 112), (3.0, 3.0, 3.0))  # 31 x 26 x 28 voxels at 12 mm
    coarse = refine_config_for(lumbar)
    assert coarse.levels_mm == (12.0, 6.0) and coarse.cma_levels == 1
    assert (coarse.sigma_deg, coarse.max_evaluations) == (REFINE_CONFIG.sigma_deg, REFINE_CONFIG.max_evaluations)
    femur = VolumeGrid.from_spacing((96, 64, 96), (1.328, 1.328, 2.0))  # 11 x 8 x 11 voxels at 12 mm
    assert refine_config_for(femur) == REFINE_CONFIG


def test_cma_searches_only_its_levels_and_lbfgs_refines_at_the_finest(lumbar_case):
    mu, grid, views, radiographs, pose = lumbar_case
    config = OptimisationConfig(levels_mm=(12.0, 6.0), cma_levels=1, max_evaluations=30, refine_steps=2)
    found = estimate_pose(PoseProblem(mu, grid, radiographs, views, pose, config))
    assert [entry["stage"] for entry in found.history] == ["CMA-ES 12 mm", "L-BFGS 6 mm"]


def test_lbfgs_keeps_to_its_evaluation_budget_returns_its_best_and_runs_blas_on_one_thread(lumbar_case, monkeypatch):
    mu, grid, views, radiographs, pose = lumbar_case
    problem = PoseProblem(mu, grid, radiographs, views, pose, OptimisationConfig(levels_mm=(6.0,)))
    seen: list[tuple[float, list[int]]] = []
    objective = problem.objective

    def recording(level, x, start=None):
        value = objective(level, x, start)
        blas_threads = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
        seen.append((float(value[0].detach()), blas_threads))
        return value

    monkeypatch.setattr(problem, "objective", recording)
    start_x = np.array([2.0, -1.0, 1.5, 3.0, -2.0, 1.0])
    x, value, iterations = _lbfgs(problem, problem.levels[-1], start_x, steps=4, start=None)
    assert 1 <= len(seen) <= 5  # 1.25 x 4 evaluations
    assert iterations <= 4
    assert value == max(v for v, _ in seen) and value > seen[0][0]
    assert all(threads == [1] * len(threads) for _, threads in seen)
    with torch.no_grad():
        again = problem.objective(problem.levels[-1], problem.full_x(torch.as_tensor(x))[None], None)
    assert float(again[0]) == pytest.approx(value, abs=1e-6)


def test_an_extra_start_is_refined_beside_the_turns_and_reported_by_name(lumbar_case):
    mu, grid, views, radiographs, pose = lumbar_case
    centre = torch.as_tensor(grid.centre_world)
    turned = rigid_matrix(torch.tensor([0.0, 0.0, math.radians(90.0), 0.0, 0.0, 0.0], dtype=torch.float64), centre)
    found = refine_turned(mu, grid, radiographs, views, pose @ turned, turns=1, extra_starts={"the truth": pose})
    assert [(turn["start"], turn["turn_deg"]) for turn in found.turns] == [("turned 0 deg", 0.0), ("the truth", None)]
    assert found.turns[1]["rotation_from_best_deg"] == 0.0 and found.turns[0]["rotation_from_best_deg"] > 30.0
    assert float(pose_errors(found.best.matrix, pose, centre)[0]) < 0.5


@pytest.mark.parametrize("depth_error_mm", [-24.0, 0.0, 36.0])
def test_search_along_beam_undoes_a_depth_error_of_the_beam_view(lumbar_case, depth_error_mm):
    mu, grid, views, radiographs, pose = lumbar_case
    direction = torch.as_tensor(views["AP"].principal_direction, dtype=torch.float64)
    start = pose.clone()
    start[:3, 3] += depth_error_mm * direction  # the CT moved along the AP beam: AP barely changes
    moved, offset_mm = search_along_beam(mu, grid, radiographs, views, start, "AP", refine_config_for(grid))
    assert offset_mm == -depth_error_mm
    torch.testing.assert_close(moved, pose, atol=1e-9, rtol=0.0)


# --- the pyramid ------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [1, 2, 3])
def test_downsampled_view_maps_points_to_block_coordinates(factor):
    view = biplanar_pair(image_shape=(31, 20))["LAT"]
    coarse = downsample_view(view, factor)
    assert coarse.image_shape == (31 // factor, 20 // factor)
    points = torch.tensor([[10.0, -5.0, 3.0], [-40.0, 20.0, 60.0]], dtype=torch.float64)
    uv, depth = view.project(points)
    uv_coarse, depth_coarse = coarse.project(points)
    torch.testing.assert_close(uv_coarse, (uv - (factor - 1) / 2) / factor)
    torch.testing.assert_close(depth_coarse, depth)


def test_downsampled_image_averages_blocks():
    image = torch.arange(36.0).view(1, 1, 6, 6)
    coarse = downsample_image(image, 3)
    torch.testing.assert_close(coarse[0, 0, 0, 0], image[0, 0, :3, :3].mean())
    assert coarse.shape == (1, 1, 2, 2)


def test_downsampled_volume_keeps_block_means_at_block_centres():
    grid = VolumeGrid(
        (7, 6, 5), np.array([[0.0, -2.0, 0.0, 5.0], [1.5, 0.0, 0.0, -3.0], [0.0, 0.0, 1.0, 8.0], [0.0, 0.0, 0.0, 1.0]])
    )
    volume = torch.rand(1, 1, *grid.shape, dtype=torch.float64)
    pooled, coarse = downsample_volume(volume, grid, 2)
    assert coarse.shape == (4, 3, 3) and pooled.shape == (1, 1, 4, 3, 3)
    torch.testing.assert_close(pooled[0, 0, 1, 2, 0], volume[0, 0, 2:4, 4:6, 0:2].mean())
    block_centre = grid.vox_to_world(torch.tensor([2.5, 4.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(coarse.vox_to_world(torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)), block_centre)
    # the last block along i holds voxel 6 and a zero pad
    torch.testing.assert_close(pooled[0, 0, 3, 0, 0], volume[0, 0, 6, 0:2, 0:2].sum() / 8)


def test_coarse_drr_approximates_the_block_mean_of_the_fine_drr(lumbar_case):
    mu, grid, views, _, _ = lumbar_case
    view = views["AP"]
    with torch.no_grad():
        fine = ProST(view, grid, 128)(mu[None, None])
        pooled_mu, coarse_grid = downsample_volume(mu[None, None], grid, 2)
        coarse = ProST(downsample_view(view, 2), coarse_grid, 64)(pooled_mu)
    reference = downsample_image(fine, 2)
    relative = (coarse - reference).abs().mean() / reference.abs().mean()
    assert coarse.shape == reference.shape and float(relative) < 0.05


def test_rigid_params_round_trip_of_the_true_pose(lumbar_case):
    _, grid, _, _, pose = lumbar_case
    centre = torch.as_tensor(grid.centre_world)
    torch.testing.assert_close(rigid_matrix(rigid_params(pose, centre), centre), pose)
