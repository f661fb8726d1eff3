"""The two geometry studies of the paper: a wrong LAO/RAO angle (Fig. 3) and generalized pairs (Fig. 4).

Fig. 3 (:func:`angle_error_rows`): the test cases of the orthogonal dataset (AP at 0, LAT at 90
degrees) are registered by the full model with the LAT view given to the network at the wrong
angle ``90 + error`` (the radiographs stay those of the true angle); once as given
(``correction = none``), once after per-view pose correction (``correction = per_view``):
:func:`biplanar.pose.estimate.estimate_view_rotations` with Opt-GC re-estimates, for
each view alone, a rotation of that view about its isocentre that makes the DRR of the atlas's
whole-body CT (the only CT known at registration time) match that view's unmasked radiograph; the
network then runs with the corrected views. The search corrects both views, as a user who does not
know which angle is wrong would.

Fig. 4 (:func:`geometry_grid_rows`): every test case's CT is rendered (as ``biplanar simulate``
renders it: radiographs of the whole CT times the femur masks) at each pair
``(AP = a, LAT = 90 + b)`` of a grid of offsets ``a, b`` and registered by the model trained on
generalized geometries; its Dice per cell is averaged over the cases.

Views are the paper's C-arm (:func:`biplanar.geometry.presets.biplanar_pair`) with the dataset's
detector, isocentre at the grid's centre, as :func:`biplanar.data.simulate.case_views` builds them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from biplanar.data.masks import femur_masks
from biplanar.data.simulate import render_radiographs
from biplanar.errors import InputError
from biplanar.experiments.scoring import label_scores, timed_labels, truth_labels
from biplanar.geometry.presets import AP_LAO_RAO_DEG, LAT_LAO_RAO_DEG, VIEW_NAMES, biplanar_pair
from biplanar.geometry.projection import ProjectionView, view_angles_deg
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.physics.attenuation import hu_to_mu
from biplanar.pose.estimate import compose_each_view, estimate_view_rotations

CORRECTIONS = ("none", "per_view")
CORRECTION_METHOD = "opt-gc"
MATRIX_TOLERANCE = 1e-6  # relative difference up to which a stored projection matrix is the expected one


def carm_views(ap_deg: float, lat_deg: float, simulation, grid: VolumeGrid) -> dict[str, ProjectionView]:
    """The ``AP`` and ``LAT`` views at LAO/RAO ``ap_deg`` and ``lat_deg`` (degrees) with the detector of
    a :class:`~biplanar.data.simulate.SimulationConfig`, isocentre at the centre of ``grid``."""
    return biplanar_pair(ap_deg, lat_deg, simulation.image_shape, simulation.pixel_spacing_mm, grid.centre_world)


def _check_views(sample: dict[str, Any], expected: dict[str, ProjectionView], where: str) -> None:
    """``InputError`` unless the sample's projection matrices are those of ``expected`` (AP, LAT)."""
    for matrix, name in zip(sample["projection_matrices"].numpy(), VIEW_NAMES):
        reference = expected[name].matrix
        if np.abs(matrix - reference).max() > MATRIX_TOLERANCE * np.abs(reference).max():
            raise InputError(
                f"{where}: case {sample['subject_id']} view {name} is not at LAO/RAO "
                f"{round(view_angles_deg(expected[name])[0], 6) + 0.0:g} deg (Fig. 3 needs an orthogonal dataset)"
            )


def _masked(sample: dict[str, Any]) -> torch.Tensor:
    """``(1, 2, rows, cols)`` radiographs x masks (AP, LAT) of an unmasked dataset sample."""
    return (sample["radiographs"] * sample["masks"])[None]


def _network_scores(
    predictor,
    radiographs: torch.Tensor,
    views: dict[str, ProjectionView],
    truth: np.ndarray,
    spacing_mm: tuple[float, ...],
) -> dict[str, float]:
    """Scores and network time of one registration of ``(1, 2, rows, cols)`` radiographs with ``views``."""
    predicted, seconds = timed_labels(predictor, radiographs, (views["AP"], views["LAT"]))
    return {**label_scores(predicted, truth, spacing_mm), "network_time_s": seconds}


def _used_angles(views: dict[str, ProjectionView]) -> dict[str, float]:
    """The LAO/RAO angles (degrees) of the views given to the network, read from their matrices."""
    return {f"{name.lower()}_angle_used_deg": view_angles_deg(views[name])[0] for name in VIEW_NAMES}


def angle_error_rows(
    predictor, dataset, angle_errors_deg: tuple[float, ...], correction_config, tick: Callable[[], None] | None = None
) -> list[dict[str, Any]]:
    """Fig. 3: one row per case, angle error and correction (module doc).

    Args:
        predictor: a :class:`~biplanar.experiments.scoring.NetworkPredictor` (its atlas is the
            pose correction's volume).
        dataset: an *unmasked* :class:`~biplanar.data.datasets.SimulatedDataset` of orthogonal cases.
        angle_errors_deg: errors added to the LAT view's LAO/RAO angle, degrees.
        correction_config: the :class:`~biplanar.pose.baselines.OptimisationConfig` of the correction.
        tick: called after each case and angle (progress).

    Returns:
        rows: ``case``, ``angle_error_deg``, ``correction``, ``ap_angle_used_deg`` / ``lat_angle_used_deg``
        (of the views the network was given, read from their matrices), the metrics,
        ``network_time_s``, ``correction_time_s``.
    """

    atlas = predictor.atlas
    atlas_mu = hu_to_mu(torch.from_numpy(atlas.ct_hu).float()).to(predictor.device)  # (I, J, K) 1/mm
    spacing = tuple(float(s) for s in dataset.grid.spacing_mm)
    rows = []
    for index in range(len(dataset)):
        sample = dataset[index]
        _check_views(
            sample, carm_views(AP_LAO_RAO_DEG, LAT_LAO_RAO_DEG, dataset.config, dataset.grid), str(dataset.root)
        )
        radiographs = {name: sample["radiographs"][i].to(predictor.device) for i, name in enumerate(VIEW_NAMES)}
        truth, inputs = truth_labels(sample), _masked(sample)
        for error in angle_errors_deg:
            given = carm_views(AP_LAO_RAO_DEG, LAT_LAO_RAO_DEG + error, dataset.config, dataset.grid)
            case = {"case": sample["subject_id"], "angle_error_deg": float(error)}
            rows.append(
                {
                    **case,
                    "correction": "none",
                    **_used_angles(given),
                    **_network_scores(predictor, inputs, given, truth, spacing),
                    "correction_time_s": 0.0,
                }
            )
            started = time.perf_counter()
            rotations = estimate_view_rotations(
                atlas_mu, atlas.grid, radiographs, given, CORRECTION_METHOD, correction_config
            )
            corrected = compose_each_view(given, rotations)
            seconds = time.perf_counter() - started
            rows.append(
                {
                    **case,
                    "correction": "per_view",
                    **_used_angles(corrected),
                    **_network_scores(predictor, inputs, corrected, truth, spacing),
                    "correction_time_s": seconds,
                }
            )
            if tick is not None:
                tick()
    return rows


def geometry_grid_rows(
    predictor, dataset, offsets_deg: tuple[float, ...], tick: Callable[[], None] | None = None
) -> list[dict[str, Any]]:
    """Fig. 4: one row per case and ``(AP, LAT)`` angle pair (module doc).

    Args:
        predictor: a :class:`~biplanar.experiments.scoring.NetworkPredictor` (the generalized model).
        dataset: an *unmasked* :class:`~biplanar.data.datasets.SimulatedDataset` (its CTs and labels
            are rendered; its simulation config sets the detector and the DRR mode).
        offsets_deg: offsets of the AP angle from 0 and of the LAT angle from 90, degrees.
        tick: called after each case and AP angle (progress).

    Returns:
        rows: ``case``, ``ap_angle_deg``, ``lat_angle_deg``, ``angle_between_deg`` (LAT - AP), the
        metrics, ``network_time_s``.
    """

    grid, simulation = dataset.grid, dataset.config
    spacing = tuple(float(s) for s in grid.spacing_mm)
    rows = []
    for index in range(len(dataset)):
        sample = dataset[index]
        ct_hu, labels, truth = sample["ct"][0].numpy(), sample["labels"][0].numpy(), truth_labels(sample)
        for ap_offset in offsets_deg:
            for lat_offset in offsets_deg:
                ap_deg, lat_deg = AP_LAO_RAO_DEG + ap_offset, LAT_LAO_RAO_DEG + lat_offset
                views = carm_views(ap_deg, lat_deg, simulation, grid)
                images = render_radiographs(ct_hu, grid, views, simulation)
                masks = femur_masks(labels, grid, views, simulation.num_samples)
                # per view (rows, cols) -> (1, 2, rows, cols), AP then LAT
                inputs = torch.from_numpy(np.stack([images[name] * masks[name] for name in VIEW_NAMES]))[None]
                rows.append(
                    {
                        "case": sample["subject_id"],
                        "ap_angle_deg": ap_deg,
                        "lat_angle_deg": lat_deg,
                        "angle_between_deg": lat_deg - ap_deg,
                        **_network_scores(predictor, inputs, views, truth, spacing),
                    }
                )
            if tick is not None:
                tick()
    return rows
