"""SOPI training pairs simulated on the fly: a CT posed by random parameters, its ProST DRR as the X-ray.

One sample: a CT (a femur phantom from a cached pool, or the one CT of ``data.source``), a true
pose ``theta*`` with each Euler angle ~ N(0, rotation_sigma) and each translation ~
N(0, translation_sigma) (:class:`~biplanar.models.sopi.config.PoseDataConfig`), the X-ray
``ProST(mu, A(theta*))`` of the single AP view, and for the fine registration a starting pose
``theta = theta* + N(0, fine sigmas)`` with the projected mask at ``theta``. With
``data.clinical_fraction`` > 0 that share of X-rays (training and validation) become a clinic's processed image of
the DRR (:func:`~biplanar.physics.clinical_appearance.clinical_radiograph`, its appearance drawn per
sample by :meth:`~biplanar.physics.clinical_appearance.ClinicalAppearance.draw`).

Poses move the CT about its volume's centre (:func:`biplanar.geometry.transforms.rigid_matrix`
with ``centre_mm`` = the grid centre); the AP view (the paper's distances, CONTRACT section 2) has
its isocentre there too. Every draw of step ``s`` comes from ``numpy.random.default_rng([seed,
stream, s])``, so a resumed run sees exactly the samples it would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from biplanar.data.grid_presets import grid_preset
from biplanar.data.phantom import make_subject
from biplanar.data.real_ct import REAL_CT, REAL_CT_SOURCE
from biplanar.geometry.presets import biplanar_pair
from biplanar.geometry.projection import ProjectionView
from biplanar.geometry.transforms import rigid_matrix
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.io.volumes import read_volume
from biplanar.layers.prost import ProST
from biplanar.models.sopi.config import PHANTOM, SopiConfig
from biplanar.physics.attenuation import hu_to_mu
from biplanar.physics.clinical_appearance import ClinicalAppearance, clinical_radiograph

TRAIN_STREAM, VALIDATION_STREAM = 1, 2
SUBJECT_STREAMS = {TRAIN_STREAM: 11, VALIDATION_STREAM: 12}  # seed streams of the phantom subjects


@dataclass
class PoseBatch:
    """A batch of simulated pairs on one device.

    Attributes:
        volume_mu: ``(B, 1, I, J, K)`` CT attenuation, 1/mm, on :attr:`PosePairSimulator.grid`.
        mask_volume: ``(B, 1, I, J, K)`` 0/1 volume whose projection is L_N's mask.
        radiograph: ``(B, 1, rows, cols)`` the X-ray: line integrals at the true pose.
        target_params: ``(B, 6)`` true pose (rad, mm).
        start_params: ``(B, 6)`` the fine stage's starting pose (rad, mm).
    """

    volume_mu: Tensor
    mask_volume: Tensor
    radiograph: Tensor
    target_params: Tensor
    start_params: Tensor


def ap_view(config: SopiConfig, grid: VolumeGrid) -> ProjectionView:
    """SOPI's single view: the AP view at the paper's distances, isocentre at the volume's centre."""
    spacing = config.geometry.pixel_spacing_mm
    rows, cols = config.geometry.image_shape
    return biplanar_pair(
        image_shape=(rows, cols),
        pixel_spacing_mm=(spacing, spacing),
        isocenter_mm=grid.centre_world,
    )["AP"]


def pose_prost(config: SopiConfig, view: ProjectionView, grid: VolumeGrid) -> ProST:
    """ProST for posed volumes: ``geometry.num_samples`` samples, ``geometry.depth_margin_mm`` of room."""
    return ProST(view, grid, config.geometry.num_samples, margin_mm=config.geometry.depth_margin_mm)


def mask_volume_from(ct_hu: np.ndarray, labels: np.ndarray | None, config: SopiConfig) -> np.ndarray:
    """``(I, J, K)`` float32 0/1: the labels (``data.mask: labels``, when given) or bone above the threshold."""
    if config.data.mask == "labels" and labels is not None:
        return (labels > 0).astype(np.float32)
    return (ct_hu > config.data.bone_threshold_hu).astype(np.float32)


def project_mask(prost: ProST, mask_volume: Tensor, pose: Tensor, min_path_mm: float) -> Tensor:
    """``(B, 1, rows, cols)`` 0/1: pixels whose ray crosses more than ``min_path_mm`` of the posed mask volume."""
    with torch.no_grad():
        return (prost(mask_volume, pose) > min_path_mm).to(mask_volume.dtype)


class PosePairSimulator:
    """Makes :class:`PoseBatch` es for one SOPI config (see the module doc).

    Args:
        config: the SOPI config.
        device: where batches are made.
    """

    def __init__(self, config: SopiConfig, device: torch.device | str = "cpu") -> None:
        self.config, self.device = config, torch.device(device)
        self._subjects: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
        if config.data.source == PHANTOM:
            self.grid = grid_preset(config.geometry.grid_preset)
        else:
            self._load_ct(REAL_CT if config.data.source == REAL_CT_SOURCE else Path(config.data.source))
        self.view = ap_view(config, self.grid)
        self.prost = pose_prost(config, self.view, self.grid).to(self.device)
        self.centre = torch.as_tensor(self.grid.centre_world, dtype=torch.float32, device=self.device)
        self.sigmas = config.param_sigmas().to(self.device)
        self.fine_sigmas = config.fine_offset_sigmas().to(self.device)

    def _load_ct(self, path: Path) -> None:

        ct_hu, self.grid = read_volume(path)
        self._ct = self._as_volumes(ct_hu, mask_volume_from(ct_hu, None, self.config))

    def _as_volumes(self, ct_hu: np.ndarray, mask: np.ndarray) -> tuple[Tensor, Tensor]:
        mu = hu_to_mu(torch.from_numpy(np.asarray(ct_hu, dtype=np.float32)))
        return mu[None].to(self.device), torch.from_numpy(mask)[None].to(self.device)

    def subject(self, stream: int, index: int) -> tuple[Tensor, Tensor]:
        """``(1, I, J, K)`` attenuation (1/mm) and mask volume of subject ``index`` of a stream (cached)."""
        if self.config.data.source != PHANTOM:
            return self._ct
        key = (stream, index)
        if key not in self._subjects:
            seeds = np.random.SeedSequence(self.config.training.seed, spawn_key=(SUBJECT_STREAMS[stream], index))
            subject = make_subject(int(seeds.generate_state(1)[0]), self.config.geometry.grid_preset)
            self._subjects[key] = self._as_volumes(
                subject.ct_hu, mask_volume_from(subject.ct_hu, subject.labels, self.config)
            )
        return self._subjects[key]

    def pool_size(self, stream: int) -> int:
        """Subjects in a stream's pool (validation: one per validation sample)."""
        return self.config.data.subjects if stream == TRAIN_STREAM else self.config.data.validation_samples

    def pose_matrix(self, params: Tensor) -> Tensor:
        """``(B, 6)`` (rad, mm) -> ``(B, 4, 4)`` moving the CT about its centre."""
        return rigid_matrix(params, self.centre)

    def sample(self, stream: int, step: int, batch_size: int) -> PoseBatch:
        """The batch of ``step`` in ``stream`` (:data:`TRAIN_STREAM` or :data:`VALIDATION_STREAM`)."""
        rng = np.random.default_rng([self.config.training.seed, stream, step])
        if stream == VALIDATION_STREAM:  # one held-out subject per validation step
            indices = [(step * batch_size + b) % self.pool_size(stream) for b in range(batch_size)]
        else:
            indices = rng.integers(self.pool_size(stream), size=batch_size).tolist()
        volumes, masks = zip(*(self.subject(stream, index) for index in indices))
        noise = torch.from_numpy(rng.standard_normal((2, batch_size, 6)).astype(np.float32)).to(self.device)
        target = noise[0] * self.sigmas
        start = target + noise[1] * self.fine_sigmas
        volume_mu = torch.stack(volumes)
        with torch.no_grad():
            radiograph = self.prost(volume_mu, self.pose_matrix(target))
            if self.config.data.clinical_fraction > 0:
                radiograph = self.clinical_appearance(radiograph, rng)
        return PoseBatch(volume_mu, torch.stack(masks), radiograph, target, start)

    def clinical_appearance(self, radiograph: Tensor, rng: np.random.Generator) -> Tensor:
        """``(B, 1, rows, cols)`` line integrals with each, at probability ``data.clinical_fraction``,
        replaced by a clinic's processed image of it (0 to 4095, bone bright), drawn from ``rng``."""
        spacing = (self.config.geometry.pixel_spacing_mm,) * 2
        images = list(radiograph.unbind(0))
        for index, image in enumerate(images):
            if rng.random() < self.config.data.clinical_fraction:
                appearance = ClinicalAppearance.draw(rng)
                generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
                shown = clinical_radiograph(image[None].double().cpu(), spacing, appearance, generator)[0]
                images[index] = shown.to(image)
        return torch.stack(images)
