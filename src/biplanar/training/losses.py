"""The registration loss (Van Houtte et al. 2022, eq. 4) and its parts.

    L = -NCC(V o T, V_f) - NCC(V o Psi, V_f) + delta * L_smooth(phi)

reported (same gradients) as ``(1 - NCC_T) + (1 - NCC_Psi) + delta * L_smooth``, which is
non-negative and zero for a perfect match, so that relative decreases mean something.

NCC is MONAI's windowed ``LocalNormalizedCrossCorrelationLoss`` (its map of squared windowed NCC)
or a global NCC; ``L_smooth`` is MONAI's ``DiffusionLoss``, the mean squared spatial gradient
(central differences, per voxel) of the displacement in mm, computed by
:func:`~biplanar.layers.smoothness.diffusion_energy` (the same value, a faster gradient). With
``masked``, both volumes are compared inside their femur labels (the paper's semi-supervised
set-up): voxels outside both labels are zeroed, and the windowed NCC map is averaged only over the
voxels whose window touches either label. (Windows that see background alone are flat in both
volumes, where MONAI scores 0; averaging them in would put the loss of a perfect match far above
zero.)

``label_dice_weight`` adds the auxiliary segmentation term of VoxelMorph (Balakrishnan et al.,
TMI 2019): ``weight * (1 - Dice)`` of the warped (soft) atlas label against the patient's label,
MONAI's ``DiceLoss``. The intensity terms leave the femoral neck's direction loosely held (its
windows see mostly cortex of similar texture); the label term pulls on its outline directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biplanar.config import LossConfig
from biplanar.layers.similarity import global_ncc
from biplanar.layers.smoothness import diffusion_energy
from biplanar.models.network import RegistrationOutput


class RegistrationLoss(nn.Module):
    """Eq. 4 on a network output and the fixed (patient) volume.

    Args:
        config: the loss section of the experiment config.
    """

    def __init__(self, config: LossConfig) -> None:
        super().__init__()
        from monai.losses import DiceLoss, LocalNormalizedCrossCorrelationLoss  # lazy: monai's start-up

        self.config = config
        self.dice_loss = DiceLoss(reduction="mean")
        self.local_ncc = LocalNormalizedCrossCorrelationLoss(
            spatial_dims=3, kernel_size=config.ncc_window, reduction="none"
        )

    def ncc(self, moving: Tensor, fixed: Tensor, region: Tensor | None = None) -> Tensor:
        """Mean over the batch of the NCC (local or global).

        Args:
            moving, fixed: ``(B, 1, I, J, K)``.
            region: ``(B, 1, I, J, K)`` 0/1, where the local NCC map is averaged (all voxels if None).
        """
        if self.config.ncc == "global":
            return global_ncc(moving, fixed).mean()
        ncc_map = -self.local_ncc(moving, fixed)  # (B, 1, I, J, K)
        if region is None:
            return ncc_map.mean()
        return ((ncc_map * region).flatten(1).sum(1) / region.flatten(1).sum(1).clamp(min=1.0)).mean()

    def label_region(self, *labels: Tensor) -> Tensor:
        """``(B, 1, I, J, K)`` 0/1: voxels whose NCC window touches any of the (soft) label maps."""
        region = (torch.stack(labels).amax(dim=0) > 0.5).float()
        window = self.config.ncc_window
        # A cube's maximum is the maximum along each axis in turn: three 1-D pools of ``window``
        # values per voxel instead of one of ``window**3`` (PyTorch's CPU 3-D pool is slow).
        for axis in range(3):
            kernel = tuple(window if index == axis else 1 for index in range(3))
            padding = tuple(window // 2 if index == axis else 0 for index in range(3))
            region = F.max_pool3d(region, kernel, stride=1, padding=padding)
        return region

    def forward(self, output: RegistrationOutput, fixed_mu: Tensor, fixed_labels: Tensor) -> dict[str, Tensor]:
        """Args:
            output: the network's output.
            fixed_mu: ``(B, 1, I, J, K)`` patient attenuation (1/mm) on the atlas grid.
            fixed_labels: ``(B, 1, I, J, K)`` patient femur label (0/1).

        Returns:
            ``total`` and its parts ``affine_ncc``, ``local_ncc`` (NCC values), ``smoothness``,
            ``label_dice`` (soft Dice of the warped label; in the total only with a weight).
        """
        fixed = fixed_mu * fixed_labels if self.config.masked else fixed_mu
        affine, warped = output.affine_image, output.warped_image
        affine_region = warped_region = None
        if self.config.masked:
            affine, warped = affine * output.affine_labels, warped * output.warped_labels
            with torch.no_grad():
                affine_region = self.label_region(fixed_labels, output.affine_labels)
                warped_region = self.label_region(fixed_labels, output.warped_labels)
        parts = {
            "affine_ncc": self.ncc(affine, fixed, affine_region),
            "local_ncc": self.ncc(warped, fixed, warped_region),
            "smoothness": diffusion_energy(output.local_displacement),
            "label_dice": 1.0 - self.dice_loss(output.warped_labels, fixed_labels),
        }
        parts["total"] = (
            (1.0 - parts["affine_ncc"])
            + (1.0 - parts["local_ncc"])
            + self.config.smoothness_weight * parts["smoothness"]
            + self.config.label_dice_weight * (1.0 - parts["label_dice"])
        )
        return parts
