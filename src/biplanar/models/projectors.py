"""ProST and inv-ProST layers for whatever view pairs a batch brings, built once per geometry.

A calibrated pair is fixed geometry (no learned parameters): the layers are cached by projection
matrix, kept off the module's state dict, and moved to the device of the data they project.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor

from biplanar.geometry.facing import source_reversed
from biplanar.geometry.presets import VIEW_NAMES
from biplanar.geometry.projection import ProjectionView
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.layers.inv_prost import InverseProST
from biplanar.layers.prost import ProST

ViewPair = tuple[ProjectionView, ProjectionView]
IMAGE_COLUMNS = (-1,)  # the columns of (B, C, rows, cols) images
BEAM_COLUMNS_AND_DEPTH = (-1, -3)  # the columns and the depth of (B, C, Kb, Hb, Wb) beam-space tensors


def reversed_sources(views: list[ViewPair], isocenter_mm: Tensor) -> Tensor:
    """``(B, 2)`` bool: whether each view (AP, LAT) of each pair has its source on the other side of
    the isocentre than the network learnt (:mod:`biplanar.geometry.facing`).

    Args:
        views: ``B`` pairs ``(AP, LAT)``.
        isocenter_mm: ``(3,)`` world mm, the atlas grid's centre.
    """
    centre = isocenter_mm.detach().cpu().double().numpy()
    return torch.tensor(
        [[source_reversed(view, centre, name) for view, name in zip(pair, VIEW_NAMES)] for pair in views]
    )


def as_learnt_side(tensor: Tensor, reversed_views: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``tensor`` with ``dims`` reversed in the batch elements whose view is reversed (its own inverse).

    Args:
        tensor: ``(B, ...)`` one view's images (``dims`` :data:`IMAGE_COLUMNS`) or beam-space
            tensors (:data:`BEAM_COLUMNS_AND_DEPTH`).
        reversed_views: ``(B,)`` bool, that view's column of :func:`reversed_sources`.
        dims: the dimensions to reverse.
    """
    if not bool(reversed_views.any()):
        return tensor
    flags = reversed_views.to(tensor.device).reshape(-1, *([1] * (tensor.dim() - 1)))
    return torch.where(flags, tensor.flip(dims), tensor)


class ProjectorCache:
    """Builds and caches ``(ProST, InverseProST)`` per view on the atlas grid.

    Args:
        grid: the atlas grid.
        image_shape: ``(rows, cols)`` every view must have.
        num_samples: ProST samples per ray.
        capacity: how many views to keep (least recently used ones are dropped).
    """

    def __init__(self, grid: VolumeGrid, image_shape: tuple[int, int], num_samples: int, capacity: int = 32) -> None:
        self.grid, self.image_shape, self.num_samples, self.capacity = grid, image_shape, num_samples, capacity
        self._layers: OrderedDict[tuple, tuple[ProST, InverseProST]] = OrderedDict()

    def layers(self, view: ProjectionView, device: torch.device) -> tuple[ProST, InverseProST]:
        """The (ProST, InverseProST) pair of ``view`` on ``device``."""
        if tuple(view.image_shape) != tuple(self.image_shape):
            raise ValueError(
                f"view {view.name}: image_shape {view.image_shape} differs from the network's {self.image_shape}"
            )
        key = (view.matrix.round(9).tobytes(), str(device))
        if key not in self._layers:
            self._layers[key] = (
                ProST(view, self.grid, self.num_samples).to(device),
                InverseProST(view, self.grid).to(device),
            )
            if len(self._layers) > self.capacity:
                self._layers.popitem(last=False)
        self._layers.move_to_end(key)
        return self._layers[key]

    def project(self, volume: Tensor, views: list[ViewPair]) -> Tensor:
        """DRRs of each batch element along its two views.

        Args:
            volume: ``(B, 1, I, J, K)`` attenuation (1/mm) on the atlas grid.
            views: ``B`` pairs ``(AP, LAT)``.

        Returns:
            ``(B, 2, rows, cols)`` line integrals, channel 0 AP, channel 1 LAT.
        """
        images = [
            torch.cat([self.layers(view, volume.device)[0](volume[b : b + 1]) for view in pair], dim=1)
            for b, pair in enumerate(views)
        ]
        return torch.cat(images, dim=0)

    def back_project(self, beams: list[Tensor], views: list[ViewPair]) -> Tensor:
        """inv-ProST of each view's beam-space features onto the atlas grid.

        Args:
            beams: per view (AP, LAT), ``(B, C, Kb, Hb, Wb)`` beam-space features.
            views: ``B`` pairs ``(AP, LAT)``.

        Returns:
            ``(B, 2 C, I, J, K)``: the AP features then the LAT features.
        """
        per_sample = [
            torch.cat([self.layers(view, beam.device)[1](beam[b : b + 1]) for view, beam in zip(pair, beams)], dim=1)
            for b, pair in enumerate(views)
        ]
        return torch.cat(per_sample, dim=0)
