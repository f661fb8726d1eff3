"""Scoring any method by its predicted femur labels (the labels-only path).

Kasten et al.'s network regresses a label map and no transform, so it cannot go through
:func:`biplanar.evaluation.evaluate.evaluate` (which scores transforms); here every method is a
*predictor* of a binary femur label map on the atlas grid, scored with
:func:`biplanar.evaluation.metrics.segmentation_metrics` against the case's true label:

- :class:`NetworkPredictor`: the atlas labels warped (nearest neighbour) by the registration
  network's total transform ``Psi``, exactly as ``register`` writes ``warped_labels.nii.gz``;
- :class:`BaselinePredictor`: a learned baseline's femur probability ``> 0.5`` (Kasten, SDM);
- :class:`OptimisationPredictor`: no learning: test-time intensity registration
  (:func:`biplanar.optimisation.refine_registration`) from the identity.

Rows (one per case) hold ``case``, ``stage``, the metrics of :data:`METRICS` and ``time_s``, the
predictor's wall time, in the columns of ``evaluate``'s ``cases.csv``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from biplanar.data.atlas import FEMUR_LABEL, load_atlas, warped_atlas_labels
from biplanar.devices import synchronise
from biplanar.evaluation.evaluate import network_inputs
from biplanar.evaluation.metrics import segmentation_metrics
from biplanar.models.projectors import ViewPair
from biplanar.optimisation import ProjectionObjective, RefineSettings, refine_registration
from biplanar.physics.attenuation import hu_to_mu
from biplanar.training.baselines import load_baseline, predict_labels
from biplanar.training.checkpoints import load_model

METRICS = ("dice", "jaccard", "assd_mm", "hd95_mm")
LABEL_THRESHOLD = 0.5  # a soft label or probability above this is femur
LABELS_STAGE = "labels"  # stage name of a method that predicts labels only
TOTAL_STAGE = "affine+local"  # stage name of a full transform, as in evaluate's cases.csv


def warped_femur(atlas, displacement: Tensor) -> np.ndarray:
    """``(I, J, K)`` bool: the atlas femur pulled by ``displacement`` ``(1, 3, I, J, K)`` mm (nearest),
    as ``register`` warps ``warped_labels.nii.gz``."""
    return warped_atlas_labels(atlas, displacement) == FEMUR_LABEL


class NetworkPredictor:
    """The registration network of a checkpoint; labels = the atlas warped by ``Psi`` (module doc).

    Args:
        checkpoint: a ``biplanar train`` checkpoint (or a weights-only one).
        device: where the network runs.
    """

    stage = TOTAL_STAGE

    def __init__(self, checkpoint: str | Path, device: torch.device) -> None:

        self.network, self.config = load_model(checkpoint, device)
        self.atlas = load_atlas(self.config.geometry.grid_preset)
        self.device = device

    def labels(self, radiographs: Tensor, views: ViewPair) -> np.ndarray:
        """``(I, J, K)`` bool predicted femur from ``(1, 2, rows, cols)`` masked radiographs (AP, LAT)."""
        with torch.no_grad():
            output = self.network(radiographs.to(self.device), [views])
        return warped_femur(self.atlas, output.total_displacement)


class BaselinePredictor:
    """A learned baseline of a ``biplanar train-baseline`` checkpoint (module doc)."""

    stage = LABELS_STAGE

    def __init__(self, checkpoint: str | Path, device: torch.device) -> None:

        self.model, self.config = load_baseline(checkpoint, device)
        self.device = device

    def labels(self, radiographs: Tensor, views: ViewPair) -> np.ndarray:
        """``(I, J, K)`` bool predicted femur from ``(1, 2, rows, cols)`` masked radiographs (AP, LAT)."""

        with torch.no_grad():
            probability = predict_labels(self.model, radiographs.to(self.device), [views])
        return (probability[0, 0] > LABEL_THRESHOLD).cpu().numpy()


class OptimisationPredictor:
    """Intensity registration of the atlas from the identity, no learning (module doc).

    Args:
        config: the :class:`~biplanar.config.ExperimentConfig` whose atlas grid, ProST samples,
            smoothness weight and integration steps it uses (the full model's).
        affine_iterations: Adam steps on the similarity alone (the affine registration) ...
        iterations: ... then Adam steps on the similarity and the velocity together.
        integration_factor: :attr:`~biplanar.optimisation.RefineSettings.integration_factor`.
        device: where it runs.
    """

    stage = TOTAL_STAGE

    def __init__(
        self, config, affine_iterations: int, iterations: int, integration_factor: int, device: torch.device
    ) -> None:

        self.config, self.device = config, device
        self.settings = RefineSettings(
            iterations=affine_iterations + iterations,
            affine_iterations=affine_iterations,
            integration_factor=integration_factor,
        )
        self.atlas = load_atlas(config.geometry.grid_preset)
        # (I, J, K) -> (1, 1, I, J, K)
        self.atlas_mu = hu_to_mu(torch.from_numpy(self.atlas.ct_hu).float())[None, None].to(device)
        self.atlas_labels = torch.from_numpy(self.atlas.labels == FEMUR_LABEL).float()[None, None].to(device)

    def labels(self, radiographs: Tensor, views: ViewPair) -> np.ndarray:
        """``(I, J, K)`` bool predicted femur from ``(1, 2, rows, cols)`` masked radiographs (AP, LAT)."""

        objective = ProjectionObjective(
            self.atlas_mu,
            self.atlas_labels,
            self.atlas.grid,
            views,
            radiographs.to(self.device),
            smoothness_weight=self.config.loss.smoothness_weight,
            integration_steps=self.config.local.integration_steps,
            num_samples=self.config.geometry.num_samples,
            masked=True,
        )
        result = refine_registration(objective, settings=self.settings, progress=False)
        return warped_femur(self.atlas, result.total_displacement)


def timed_labels(predictor, radiographs: Tensor, views: ViewPair) -> tuple[np.ndarray, float]:
    """``predictor.labels(radiographs, views)`` and its wall time, s."""
    synchronise(predictor.device)
    started = time.perf_counter()
    labels = predictor.labels(radiographs, views)
    synchronise(predictor.device)
    return labels, time.perf_counter() - started


def label_scores(predicted: np.ndarray, truth: np.ndarray, spacing_mm) -> dict[str, float]:
    """:data:`METRICS` of ``(I, J, K)`` bool ``predicted`` vs ``truth`` on one grid of ``(3,)`` spacing, mm."""

    return segmentation_metrics(predicted, truth, spacing_mm)


def truth_labels(sample: dict[str, Any]) -> np.ndarray:
    """``(I, J, K)`` bool true femur of a dataset sample."""
    return sample["labels"][0].numpy() == FEMUR_LABEL


def score_split(predictor, dataset, tick: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """One row per case of ``dataset`` (a masked :class:`~biplanar.data.datasets.SimulatedDataset`).

    Args:
        predictor: a :class:`NetworkPredictor`, :class:`BaselinePredictor` or :class:`OptimisationPredictor`.
        dataset: the cases; their grid must be the predictor's atlas grid.
        tick: called after each case (progress).
    """
    spacing = tuple(float(s) for s in dataset.grid.spacing_mm)
    rows = []
    for index in range(len(dataset)):
        sample = dataset[index]
        # inputs on the CPU: moving them to the device is part of the timed prediction
        predicted, seconds = timed_labels(predictor, *network_inputs(sample, torch.device("cpu")))
        rows.append(
            {
                "case": sample["subject_id"],
                "stage": predictor.stage,
                **label_scores(predicted, truth_labels(sample), spacing),
                "time_s": seconds,
            }
        )
        if tick is not None:
            tick()
    return rows
