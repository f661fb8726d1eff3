"""The atlas-to-biplanar-X-ray registration network (Van Houtte et al., IJCARS 2022, Fig. 1).

Affine: ProST projects the atlas along both views; with the radiographs it feeds the affine
module, which regresses ``T`` (7 similarity parameters about the atlas centre); the atlas is
warped by ``T``. Local: ProST projects the affine-warped atlas; with the radiographs it feeds the
local module, whose velocity field is integrated by scaling and squaring into ``phi``; the total
transform is ``Psi = T o phi`` (``atlas o Psi = (atlas o T) o phi``), and the atlas image and
labels are warped by ``Psi``.

All transforms *pull* (``warped(p) = atlas(T p)``) and displacements are mm in the world frame on
the atlas grid (``docs/contract.md`` section 6).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from biplanar.config import ExperimentConfig
from biplanar.data.atlas import Atlas
from biplanar.geometry.transforms import similarity_matrix
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.layers.velocity import VelocityIntegrator, compose_affine_displacement
from biplanar.layers.warp import SpatialTransformer, affine_displacement
from biplanar.models.affine import AffineModule
from biplanar.models.local import LocalModule
from biplanar.models.projectors import IMAGE_COLUMNS, ProjectorCache, ViewPair, as_learnt_side, reversed_sources
from biplanar.physics.attenuation import hu_to_mu


@dataclass
class RegistrationOutput:
    """What the network returns; volumes are on the atlas grid.

    Attributes:
        params: ``(B, 7)`` similarity parameters of ``T`` (radians, mm, log-scale).
        affine_matrix: ``(B, 4, 4)`` pull matrix of ``T`` (world mm).
        velocity: ``(B, 3, I, J, K)`` stationary velocity field, mm.
        local_displacement: ``(B, 3, I, J, K)`` displacement of ``phi``, mm.
        total_displacement: ``(B, 3, I, J, K)`` displacement of ``Psi = T o phi``, mm.
        affine_image: ``(B, 1, I, J, K)`` atlas attenuation (1/mm) warped by ``T``.
        warped_image: ``(B, 1, I, J, K)`` atlas attenuation (1/mm) warped by ``Psi``.
        affine_labels: ``(B, 1, I, J, K)`` atlas femur label (soft, in [0, 1]) warped by ``T``.
        warped_labels: ``(B, 1, I, J, K)`` atlas femur label (soft) warped by ``Psi``.
    """

    params: Tensor
    affine_matrix: Tensor
    velocity: Tensor
    local_displacement: Tensor
    total_displacement: Tensor
    affine_image: Tensor
    warped_image: Tensor
    affine_labels: Tensor
    warped_labels: Tensor


def normalise_radiographs(images: Tensor) -> Tensor:
    """``(B, V, rows, cols)`` -> the same with each image divided by its own maximum (the networks' inputs)."""
    return images / images.amax(dim=(2, 3), keepdim=True).clamp(min=1e-6)


def normalise_pair(radiographs: Tensor, drrs: Tensor, reversed_views: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-view network inputs: radiograph and DRR, each divided by its own maximum.

    Args:
        radiographs: ``(B, 2, rows, cols)`` masked line integrals (AP, LAT).
        drrs: ``(B, 2, rows, cols)`` DRRs of the (warped) atlas (AP, LAT).
        reversed_views: ``(B, 2)`` bool (:func:`reversed_sources`): the views whose images are shown
            with their columns reversed, as from the side the network learnt; none if not given.

    Returns:
        AP and LAT inputs, each ``(B, 2, rows, cols)`` (radiograph, DRR).
    """
    radiographs, drrs = normalise_radiographs(radiographs), normalise_radiographs(drrs)
    inputs = [torch.stack([radiographs[:, view], drrs[:, view]], dim=1) for view in range(2)]
    if reversed_views is not None:
        inputs = [as_learnt_side(image, reversed_views[:, view], IMAGE_COLUMNS) for view, image in enumerate(inputs)]
    return inputs[0], inputs[1]


class AtlasRegistrationNet(nn.Module):
    """Registers the atlas to a calibrated AP + LAT pair of radiographs.

    Args:
        config: the experiment config (sizes, widths, ablation switches).
        atlas: the atlas image (HU), femur labels and grid.
    """

    atlas_mu: Tensor  # buffers, registered in __init__
    atlas_labels: Tensor
    atlas_centre: Tensor

    def __init__(self, config: ExperimentConfig, atlas: Atlas) -> None:
        super().__init__()
        self.config = config
        self.grid: VolumeGrid = atlas.grid
        geometry = config.geometry
        self.projectors = ProjectorCache(self.grid, geometry.image_shape, geometry.num_samples)
        mu = hu_to_mu(torch.from_numpy(atlas.ct_hu).float())[None, None]
        labels = torch.from_numpy(atlas.labels > 0).float()[None, None]
        self.register_buffer("atlas_mu", mu)  # (1, 1, I, J, K) 1/mm
        self.register_buffer("atlas_labels", labels)  # (1, 1, I, J, K) 1 = femur
        self.register_buffer("atlas_centre", torch.as_tensor(self.grid.centre_world).float())
        self.affine = AffineModule(config.affine, geometry.image_shape)
        self.local = LocalModule(config.local, self.grid, self.projectors, config.training.activation_checkpointing)
        self.transformer = SpatialTransformer(self.grid)
        self.integrator = VelocityIntegrator(self.grid, config.local.integration_steps)

    @property
    def atlas_femur_mu(self) -> Tensor:
        """``(1, 1, I, J, K)`` atlas attenuation inside the femur label, 1/mm (what the DRRs show)."""
        return self.atlas_mu * self.atlas_labels

    def forward(self, radiographs: Tensor, views: list[ViewPair], affine_only: bool = False) -> RegistrationOutput:
        """Args:
        radiographs: ``(B, 2, rows, cols)`` masked line integrals, channel 0 AP, 1 LAT.
        views: ``B`` pairs ``(AP, LAT)`` of calibrated views.
        affine_only: skip the local module (``phi`` = identity).
        """
        batch = radiographs.shape[0]
        if radiographs.dim() != 4 or radiographs.shape[1] != 2 or len(views) != batch:
            raise ValueError(
                f"radiographs: expected shape (B, 2, rows, cols) with B = len(views) = {len(views)}, "
                f"got {tuple(radiographs.shape)}"
            )
        reversed_views = reversed_sources(views, self.atlas_centre)
        femur = self.atlas_femur_mu.expand(batch, -1, -1, -1, -1)
        params = self.affine(*normalise_pair(radiographs, self.projectors.project(femur, views), reversed_views))
        matrix = similarity_matrix(params, self.atlas_centre)
        affine_field = affine_displacement(matrix, self.grid)
        affine_femur = self.transformer(self.atlas_femur_mu, affine_field)
        if affine_only:
            velocity = torch.zeros_like(affine_field)
            local_field = velocity
        else:
            inputs = normalise_pair(radiographs, self.projectors.project(affine_femur, views), reversed_views)
            velocity = self.local(*inputs, views, reversed_views)
            local_field = self.integrator(velocity)
        total_field = compose_affine_displacement(matrix, local_field, self.grid)
        return RegistrationOutput(
            params=params,
            affine_matrix=matrix,
            velocity=velocity,
            local_displacement=local_field,
            total_displacement=total_field,
            affine_image=self.transformer(self.atlas_mu, affine_field),
            warped_image=self.transformer(self.atlas_mu, total_field),
            affine_labels=self.transformer(self.atlas_labels, affine_field),
            warped_labels=self.transformer(self.atlas_labels, total_field),
        )
