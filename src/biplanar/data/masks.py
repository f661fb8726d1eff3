"""The femur mask rule: which pixels of a radiograph are femur.

Pixel ``(r, c)`` is femur (1.0) when the ProST line integral of the femur indicator (the label map
as 0/1 floats, trilinear) along its ray exceeds :data:`MASK_MIN_PATH_MM` mm; else 0.0. A masked
radiograph is radiograph x mask, as the paper feeds the network. The simulator writes its masks by
this rule (:mod:`biplanar.data.simulate`); registration draws its overlays and scores its
projections by it.
"""

from __future__ import annotations

import numpy as np
import torch

from biplanar.config import DEFAULT_NUM_SAMPLES
from biplanar.geometry.projection import ProjectionView
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.layers.prost import ProST

MASK_MIN_PATH_MM = 1.0  # femur path length along a ray above which a pixel is femur, mm


def femur_masks(
    labels: np.ndarray, grid: VolumeGrid, views: dict[str, ProjectionView], num_samples: int = DEFAULT_NUM_SAMPLES
) -> dict[str, np.ndarray]:
    """2D femur masks by the mask rule (module doc): path length through the femur > threshold.

    Args:
        labels: ``(I, J, K)`` label map on ``grid``, 1 = femur.
        grid: its grid.
        views: name -> view.
        num_samples: ProST samples per ray.

    Returns:
        view name -> ``(rows, cols)`` float32 of 0.0 / 1.0.
    """
    indicator = torch.from_numpy(np.asarray(labels) == 1).float()[None, None]  # (1, 1, I, J, K)
    grid.check_volume(indicator, "labels")
    with torch.no_grad():
        return {
            name: (ProST(view, grid, num_samples)(indicator)[0, 0] > MASK_MIN_PATH_MM).float().numpy()
            for name, view in views.items()
        }
