"""Scoring the 2D femur segmentation network on a simulated dataset: Dice per radiograph.

:func:`evaluate_segmentation` segments both views of every subject of a split with a trained
U-Net (:func:`biplanar.models.segmentation.segment`'s rule: ``sigmoid > 0.5``, largest connected
component) and scores each mask against the dataset's femur mask (MONAI ``compute_dice``, through
:func:`biplanar.models.segmentation.mask_dice`). :func:`dice_summary` and
:func:`write_segmentation_scores` give the table of the bundled model's README.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biplanar.io.atomic import atomic_write_text
from biplanar.training.segmentation_model import load_segmentation_model
from biplanar.training.segmentation_trainer import load_radiographs, score_radiographs

SCORE_FIELDS = ("subject_id", "view", "dice")


def evaluate_segmentation(
    model_path: str | Path | None,
    data_dir: str | Path,
    split: str = "all",
    device: str | torch.device = "cpu",
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    working_shape: tuple[int, int] | None = None,
) -> list[dict[str, Any]]:
    """Dice of the network's femur mask of every radiograph of a split.

    Args:
        model_path: a segmentation checkpoint (full or weights-only); ``None``: the bundled model.
        data_dir: a ``biplanar simulate`` folder.
        split: ``train``, ``val``, ``test`` or ``all`` (every subject: a dataset made for testing).
        device: where to run the network.
        transform: applied to the ``(N, rows, cols)`` line-integral radiographs before they are
            segmented (e.g. ``lambda x: np.exp(-x)``: transmitted intensities); ``None``: none.
        working_shape: ``(rows, cols)`` to run the network at (e.g.
            :data:`~biplanar.training.segmentation_model.BUNDLED_IMAGE_SHAPE` for radiographs of
            another preset); ``None``: the radiographs' own.

    Returns:
        One row per radiograph, subject-major, AP then LAT: ``{"subject_id", "view", "dice"}``.

    Raises:
        InputError: a bad model file, dataset folder or split.
    """
    network, _ = load_segmentation_model(model_path, device)
    radiographs = load_radiographs(data_dir, split)
    images = radiographs.images if transform is None else np.asarray(transform(radiographs.images), dtype=np.float32)
    scores = score_radiographs(network, images, radiographs.masks, working_shape)
    return [
        {"subject_id": subject, "view": view, "dice": float(score)}
        for subject, view, score in zip(radiographs.subject_ids, radiographs.views, scores, strict=True)
    ]


def dice_summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """``{"n", "mean", "std", "min", "median"}`` of the rows' Dice (``n``: the number of radiographs)."""
    values = np.array([row["dice"] for row in rows], dtype=np.float64)
    return {
        "n": float(len(values)),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "median": float(np.median(values)),
    }


def write_segmentation_scores(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write the rows of :func:`evaluate_segmentation` as a CSV table (:data:`SCORE_FIELDS`), atomically."""
    text = io.StringIO()
    table = csv.DictWriter(text, fieldnames=SCORE_FIELDS, lineterminator="\n")
    table.writeheader()
    table.writerows({**row, "dice": f"{row['dice']:.6f}"} for row in rows)
    atomic_write_text(Path(path), text.getvalue())
