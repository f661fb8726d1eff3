"""Test-time intensity registration on the tiny atlas: closed forms, a recovered pose, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biplanar.data.atlas import load_atlas
from biplanar.data.masks import MASK_MIN_PATH_MM
from biplanar.geometry.presets import biplanar_pair
from biplanar.geometry.transforms import similarity_matrix
from biplanar.layers.velocity import VelocityIntegrator, compose_affine_displacement
from biplanar.optimisation import ProjectionObjective, RefineSettings, refine_registration
from biplanar.optimisation.intensity_registration import control_grid_field, soft_mask, tissue_fit_ncc
from biplanar.physics.attenuation import hu_to_mu

IMAGE_SHAPE = (56, 40)  # the tiny preset's detector, 3.72 mm pixels
SAMPLES = 64
# The "patient": the atlas pulled by a known similarity (4 deg about z, a few mm, 3 % larger).
TRUE_PARAMS = torch.tensor([[0.0, 0.0, np.deg2rad(4.0), 4.0, -3.0, 2.5, np.log(1.03)]], dtype=torch.float32)


@pytest.fixture(scope="module")
def problem():
    atlas = load_atlas("tiny")
    mu = hu_to_mu(torch.from_numpy(atlas.ct_hu).float())[None, None]
    labels = torch.from_numpy(atlas.labels).float()[None, None]
    views = biplanar_pair(image_shape=IMAGE_SHAPE, pixel_spacing_mm=(3.72, 3.72), isocenter_mm=atlas.grid.centre_world)
    pair = (views["AP"], views["LAT"])

    def objective(radiographs, masked=True, silhouette_weight=0.0, atlas_mu=mu, tissue_fit=False):
        return ProjectionObjective(
            atlas_mu,
            labels,
            atlas.grid,
            pair,
            radiographs,
            num_samples=SAMPLES,
            masked=masked,
            silhouette_weight=silhouette_weight,
            tissue_fit=tissue_fit,
        )

    zeros = torch.zeros(1, 3, *atlas.grid.shape)
    with torch.no_grad():
        target = objective(torch.ones(1, 2, *IMAGE_SHAPE))(TRUE_PARAMS, zeros).drrs
    return atlas, objective, target, zeros


def test_the_true_transform_scores_a_perfect_match(problem):
    atlas, objective, target, zeros = problem
    with torch.no_grad():
        value = objective(target)(TRUE_PARAMS, zeros)
        start = objective(target)(torch.zeros(1, 7), zeros)
    np.testing.assert_allclose(value.ncc.numpy(), [1.0, 1.0], atol=1e-5)
    assert float(value.smoothness) == 0.0 and float(value.loss) < 1e-5
    assert float(start.loss) > 0.01  # the identity is visibly off
    assert value.total_displacement(atlas.grid).shape == zeros.shape and value.matrix.shape == (1, 4, 4)


def test_masked_drrs_vanish_outside_the_femur_silhouette(problem):
    atlas, objective, target, zeros = problem
    with torch.no_grad():
        masked = objective(target)(torch.zeros(1, 7), zeros).drrs
        unmasked = objective(target, masked=False)(torch.zeros(1, 7), zeros).drrs
        labels = torch.from_numpy(atlas.labels).float()[None, None]
        path_mm = torch.stack(
            [
                objective(target).projectors.layers(view, labels.device)[0](labels)[0, 0]
                for view in objective(target).views
            ]
        )[None]
    outside = path_mm <= MASK_MIN_PATH_MM - 0.5
    inside = path_mm >= MASK_MIN_PATH_MM + 0.5
    assert outside.any() and inside.any()
    assert float(masked[outside].abs().max()) == 0.0
    assert float(unmasked[outside].mean()) > 0.05  # the body's soft tissue around the femur
    np.testing.assert_allclose(soft_mask(torch.tensor([0.0, 0.5, 1.0, 1.5, 9.0])).numpy(), [0.0, 0.0, 0.5, 1.0, 1.0])


def test_the_silhouette_term_is_the_soft_dice_with_the_input_mask(problem):
    """Closed form: the term adds ``weight x mean over views of (1 - Dice(soft mask of the warped
    femur's path, input > 0))``; at the true transform the silhouettes match (Dice above 0.98: the
    soft mask's ramp leaves fractions on the outline)."""
    atlas, objective, target, zeros = problem
    labels = torch.from_numpy(atlas.labels).float()[None, None]
    plain = objective(target)
    with torch.no_grad():
        path_mm = torch.stack([plain.projectors.layers(view, labels.device)[0](labels)[0, 0] for view in plain.views])
        silhouettes = soft_mask(path_mm)  # (2, rows, cols), the identity's
        masks = (target[0] > 0).float()
        dice = 2 * (silhouettes * masks).sum(dim=(1, 2)) / (silhouettes + masks).sum(dim=(1, 2))
        with_term = objective(target, silhouette_weight=3.0)(torch.zeros(1, 7), zeros).loss
        without = plain(torch.zeros(1, 7), zeros).loss
        at_truth = objective(target, silhouette_weight=3.0)(TRUE_PARAMS, zeros).loss
    assert 0.5 < float(dice.mean()) < 0.99  # the identity's outline is visibly off
    np.testing.assert_allclose(float(with_term - without), 3.0 * float((1 - dice).mean()), rtol=1e-4)
    assert float(at_truth) < 3.0 * 0.02


def test_the_silhouette_term_fits_a_femur_rendered_alone(problem):
    """A radiograph of the femur alone in air (no soft tissue: the atlas's femur, pulled by the true
    similarity), the whole-body atlas registered to it from the identity: the NCC term alone is
    drawn to the soft tissue the radiograph lacks; with the silhouette term the pose comes closer."""
    atlas, objective, _, zeros = problem
    labels = torch.from_numpy(atlas.labels).float()[None, None]
    femur_mu = hu_to_mu(torch.from_numpy(atlas.ct_hu).float())[None, None] * labels
    femur_alone = objective(torch.ones(1, 2, *IMAGE_SHAPE), atlas_mu=femur_mu)
    with torch.no_grad():
        target = femur_alone(TRUE_PARAMS, zeros).drrs
    settings = RefineSettings(iterations=40, lr_velocity_mm=0.0)
    errors = {}
    for weight in (0.0, 30.0):
        result = refine_registration(objective(target, silhouette_weight=weight), settings=settings, progress=False)
        errors[weight] = float((result.params - TRUE_PARAMS)[0, 3:6].norm())
    assert errors[30.0] < 1.5 and errors[30.0] < 0.5 * errors[0.0]  # mm, from 5.6 mm (2.4 without the term)


def test_the_tissue_fit_is_the_multiple_correlation_of_least_squares():
    """Closed form: the NCC of the fitted ``a femur + b rest + c`` with the image is the square root
    of the least-squares fit's R^2 (numpy's ``lstsq``); an exact combination scores 1; gradcheck."""
    generator = torch.Generator().manual_seed(0)
    femurs, rests, noise = (torch.rand(1, 2, 300, generator=generator, dtype=torch.float64) for _ in range(3))
    images = 2.0 * femurs + 0.3 * rests + 0.5 * noise + 4.0
    ncc, fitted = tissue_fit_ncc(images, femurs, rests)
    for view in range(2):
        design = np.stack([femurs[0, view].numpy(), rests[0, view].numpy(), np.ones(300)], axis=1)
        image = images[0, view].numpy()
        coefficients, *_ = np.linalg.lstsq(design, image, rcond=None)
        residual = image - design @ coefficients
        r_squared = 1.0 - (residual**2).sum() / ((image - image.mean()) ** 2).sum()
        np.testing.assert_allclose(float(ncc[view]), np.sqrt(r_squared), rtol=1e-9)
        np.testing.assert_allclose(
            fitted[0, view].numpy(),
            design[:, :2] @ coefficients[:2] - (design[:, :2] @ coefficients[:2]).mean(),
            atol=1e-9,
        )
    exact, _ = tissue_fit_ncc(2.0 * femurs + 0.3 * rests + 4.0, femurs, rests)
    np.testing.assert_allclose(exact.numpy(), [1.0, 1.0], atol=1e-9)
    small = [x[..., :20].clone().requires_grad_(True) for x in (femurs, rests)]
    assert torch.autograd.gradcheck(lambda femur, rest: tissue_fit_ncc(images[..., :20], femur, rest)[0], small)


def test_the_tissue_fit_matches_a_femur_alone_and_a_whole_body(problem):
    """At the true transform the tissue fit scores 1 on both a whole-body radiograph and the
    femur alone in air (to interpolation), where the whole DRR's NCC falls short (it keeps the soft
    tissue)."""
    atlas, objective, target, zeros = problem
    labels = torch.from_numpy(atlas.labels).float()[None, None]
    femur_mu = hu_to_mu(torch.from_numpy(atlas.ct_hu).float())[None, None] * labels
    with torch.no_grad():
        alone = objective(torch.ones(1, 2, *IMAGE_SHAPE), atlas_mu=femur_mu)(TRUE_PARAMS, zeros).drrs
        scores = {
            (name, fit): objective(image, tissue_fit=fit)(TRUE_PARAMS, zeros).ncc
            for name, image in (("body", target), ("alone", alone))
            for fit in (False, True)
        }
    np.testing.assert_allclose(scores["body", True].numpy(), [1.0, 1.0], atol=1e-4)
    # (the femur alone was warped as mu x label, the fit's femur as warped mu x warped label)
    np.testing.assert_allclose(scores["alone", True].numpy(), [1.0, 1.0], atol=1e-3)
    assert float(scores["alone", False].max()) < 0.99, scores


def test_zero_iterations_return_the_start(problem):
    atlas, objective, target, _ = problem
    params = torch.tensor([[0.01, -0.02, 0.03, 1.0, 2.0, -1.0, 0.02]])
    velocity = 0.5 * torch.ones(1, 3, *atlas.grid.shape)
    result = refine_registration(objective(target), params, velocity, RefineSettings(iterations=0), progress=False)
    assert torch.equal(result.params, params) and torch.equal(result.velocity, velocity)
    matrix = similarity_matrix(params, torch.as_tensor(atlas.grid.centre_world).float())
    expected = compose_affine_displacement(matrix, VelocityIntegrator(atlas.grid)(velocity), atlas.grid)
    torch.testing.assert_close(result.total_displacement, expected)
    assert len(result.history) == 1 and result.ncc_before == result.ncc_after


def test_adam_recovers_a_known_similarity_from_the_identity(problem):
    """The no-learning baseline: from the identity, the pose only (velocity frozen)."""
    _, objective, target, _ = problem
    settings = RefineSettings(
        iterations=40, lr_rotation_rad=0.01, lr_translation_mm=0.5, lr_log_scale=0.005, lr_velocity_mm=0.0
    )
    result = refine_registration(objective(target), settings=settings, progress=False)
    assert len(result.history) == 41 and result.loss_after == min(result.history)
    assert result.loss_after < 0.1 * result.loss_before
    assert all(result.ncc_after[view] > max(result.ncc_before[view], 0.99) for view in ("AP", "LAT"))
    error = (result.params - TRUE_PARAMS)[0]
    assert float(error[3:6].norm()) < 1.0  # mm, from 5.6 mm
    assert abs(np.rad2deg(float(error[2]))) < 1.0  # deg, from 4 deg
    assert float(result.velocity.abs().max()) == 0.0


def test_the_velocity_field_improves_the_match_on_its_own(problem):
    """Pose fixed at the identity: the deformation alone moves towards the target, smoothly."""
    _, objective, target, _ = problem
    settings = RefineSettings(
        iterations=8, lr_rotation_rad=0.0, lr_translation_mm=0.0, lr_log_scale=0.0, lr_velocity_mm=0.5
    )
    result = refine_registration(objective(target), settings=settings, progress=False)
    assert torch.equal(result.params, torch.zeros(1, 7))
    assert result.loss_after < 0.8 * result.loss_before
    assert float(result.velocity.abs().max()) > 0.1


def test_bad_input_is_refused(problem):
    _, objective, target, zeros = problem
    with pytest.raises(ValueError, match="radiographs: expected shape"):
        objective(target[:, :, :-1])
    bad = target.clone()
    bad[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        objective(bad)
    with pytest.raises(ValueError, match="params"):
        objective(target)(torch.zeros(7), zeros)
    with pytest.raises(ValueError, match="velocity"):
        refine_registration(objective(target), velocity=torch.zeros(1, 3, 4, 4, 4), progress=False)
    with pytest.raises(ValueError, match="velocity_stride"):
        RefineSettings(velocity_stride=0)
    with pytest.raises(ValueError, match=r"lr_translation_mm: expected a number >= 0, got -1\.0"):
        RefineSettings(lr_translation_mm=-1.0)


def test_the_affine_phase_freezes_the_velocity(problem):
    """``affine_iterations``: those first steps move the similarity only, the later ones the field too."""
    _, objective, target, _ = problem
    rates = {"lr_rotation_rad": 0.01, "lr_translation_mm": 0.5, "lr_log_scale": 0.005, "lr_velocity_mm": 0.5}
    affine_only = refine_registration(
        objective(target), settings=RefineSettings(iterations=3, affine_iterations=3, **rates), progress=False
    )
    assert float(affine_only.velocity.abs().max()) == 0.0 and float(affine_only.params.abs().max()) > 0.0
    both = refine_registration(
        objective(target), settings=RefineSettings(iterations=4, affine_iterations=2, **rates), progress=False
    )
    assert float(both.velocity.abs().max()) > 0.0
    torch.testing.assert_close(both.history[:3], affine_only.history[:3])
    with pytest.raises(ValueError, match="affine_iterations"):
        RefineSettings(iterations=2, affine_iterations=3)


def test_the_control_grid_field_is_trilinear_at_either_resolution():
    """Factor 1 is ``F.interpolate(align_corners=True)``; a field linear in the voxel index is read
    exactly at the pooled grid's voxel centres (fine index ``f n + (f - 1) / 2``)."""
    shape, control_shape = (12, 8, 6), (4, 3, 5)
    control = torch.randn(1, 3, *control_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected = torch.nn.functional.interpolate(control, size=shape, mode="trilinear", align_corners=True)
    torch.testing.assert_close(control_grid_field(control, shape), expected)
    slopes = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    axes = [torch.linspace(0, n - 1, c, dtype=torch.float64) for n, c in zip(shape, control_shape)]
    linear = sum(
        slope * axis.view(*[-1 if a == i else 1 for a in range(3)]) for i, (slope, axis) in enumerate(zip(slopes, axes))
    )
    pooled = control_grid_field(linear.expand(1, 1, *control_shape), shape, factor=2)
    centres = [torch.arange(n // 2, dtype=torch.float64) * 2 + 0.5 for n in shape]
    truth = sum(
        slope * centre.view(*[-1 if a == i else 1 for a in range(3)])
        for i, (slope, centre) in enumerate(zip(slopes, centres))
    )
    torch.testing.assert_close(pooled[0, 0], truth.expand(6, 4, 3))


@pytest.mark.parametrize("approximation", [{"integration_factor": 2}, {"linearised_iterates": True}])
def test_approximate_iterates_refine_as_well_and_return_exact_fields(problem, approximation):
    """Pooled (``integration_factor=2``) or no (``linearised_iterates``) integration of the
    iterates: the result is evaluated exactly."""
    _, objective, target, _ = problem
    rates = {"lr_rotation_rad": 0.01, "lr_translation_mm": 0.5, "lr_log_scale": 0.005, "lr_velocity_mm": 0.1}
    exact = refine_registration(objective(target), settings=RefineSettings(iterations=20, **rates), progress=False)
    pooled = refine_registration(
        objective(target), settings=RefineSettings(iterations=20, **approximation, **rates), progress=False
    )
    assert pooled.loss_after < 0.2 * pooled.loss_before and float(pooled.velocity.abs().max()) > 0.0
    assert abs(pooled.loss_after - exact.loss_after) < 0.2 * exact.loss_before
    with torch.no_grad():
        value = objective(target)(pooled.params, pooled.velocity)
    torch.testing.assert_close(pooled.total_displacement, value.total_displacement(objective(target).grid))
    assert pooled.loss_after == pytest.approx(float(value.loss), abs=1e-6)
    with pytest.raises(ValueError, match="integration_factor"):
        RefineSettings(integration_factor=0)
    with pytest.raises(ValueError, match="integration_factor: expected 1 with linearised_iterates"):
        RefineSettings(integration_factor=2, linearised_iterates=True)


def test_pooled_integration_evaluates_the_start_exactly(problem):
    """The fixed correction makes the pooled objective equal the exact one at the start, whatever
    fine detail the start's velocity has."""
    atlas, objective, target, _ = problem
    velocity = torch.randn(1, 3, *atlas.grid.shape, generator=torch.Generator().manual_seed(5))
    result = refine_registration(
        objective(target),
        velocity=velocity,
        settings=RefineSettings(iterations=0, integration_factor=2),
        progress=False,
    )
    with torch.no_grad():
        exact = objective(target)(torch.zeros(1, 7), velocity)
    assert result.history[0] == pytest.approx(float(exact.loss), abs=1e-6)
    assert result.loss_before == pytest.approx(float(exact.loss), abs=1e-6)
