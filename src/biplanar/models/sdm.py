"""Statistical deformation model (SDM) baseline (the paper's ref. [10], Table 1).

Training: each training subject's CT is registered to the atlas in 3D
(:func:`biplanar.optimisation.volume_registration.register_volumes`), giving a displacement field
``u_n`` (atlas -> subject, pull convention: ``subject(p) ~ atlas(p + u_n(p))``). A PCA of those
fields (:class:`DeformationPCA`) keeps the ``K`` leading components; a network
(:class:`SDMNet`) regresses the ``K`` component weights from the two radiographs, and the
predicted field ``u = mean + sum_k w_k sd_k c_k`` warps the atlas labels.

Fields are ``(3, i, j, k)`` mm, world components ``(x, y, z)``, on the atlas grid pooled by
``factor`` (:func:`~biplanar.geometry.volume_grid.pooled_grid`), and trilinearly
upsampled to the atlas grid before warping (:func:`~biplanar.optimisation.volume_registration.upsample_field`).
Weights are *standardised*: ``w_k = <u - mean, c_k> / sd_k``, zero mean and unit variance over
the training fields, with orthonormal components ``c_k`` (as flat vectors) and ``sd_k`` the
square root of the ``k``-th eigenvalue of the fields' covariance (mm).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from biplanar.config import ExperimentConfig
from biplanar.data.atlas import Atlas
from biplanar.errors import InputError
from biplanar.geometry.volume_grid import pooled_grid
from biplanar.io.atomic import atomic_path
from biplanar.layers.resample import upsample_field
from biplanar.layers.warp import SpatialTransformer
from biplanar.models.affine import AffineModule
from biplanar.models.network import normalise_pair
from biplanar.models.projectors import ProjectorCache, ViewPair
from biplanar.physics.attenuation import hu_to_mu

RANK_TOLERANCE = 1e-6  # singular values below this fraction of the largest are numerical zeros
ROUNDING_TOLERANCE = 1e-10  # ... and below this fraction of the fields' norm
PCA_ARRAYS = ("mean", "components", "stddev", "explained", "factor")


@dataclass(frozen=True)
class DeformationPCA:
    """A PCA of displacement fields.

    Attributes:
        mean: ``(3, i, j, k)`` float32 mean field, mm.
        components: ``(K, 3, i, j, k)`` float32, orthonormal as flat vectors (dimensionless).
        stddev: ``(K,)`` float32, standard deviation of the fields along each component, mm.
        explained: ``(K,)`` float32, fraction of the total variance each component explains.
        factor: pooling factor of the fields' grid relative to the atlas grid.
    """

    mean: np.ndarray
    components: np.ndarray
    stddev: np.ndarray
    explained: np.ndarray
    factor: int

    @property
    def num_components(self) -> int:
        return int(self.components.shape[0])

    @classmethod
    def fit(
        cls, fields: np.ndarray, factor: int, variance: float = 0.95, max_components: int | None = None
    ) -> DeformationPCA:
        """PCA of ``N`` fields, keeping the fewest components that explain ``variance`` of the total.

        Args:
            fields: ``(N, 3, i, j, k)`` displacement fields, mm, ``N >= 2``.
            factor: pooling factor of their grid (stored with the model).
            variance: in ``(0, 1]``: the fraction of the total variance to explain.
            max_components: an upper bound on ``K`` (default: none).

        Raises:
            ValueError: fewer than 2 fields, fields all equal, or ``variance`` outside ``(0, 1]``.
        """
        if fields.ndim != 5 or fields.shape[1] != 3 or fields.shape[0] < 2:
            raise ValueError(f"fields: expected shape (N >= 2, 3, i, j, k), got {fields.shape}")
        if not 0.0 < variance <= 1.0:
            raise ValueError(f"variance: expected a fraction in (0, 1], got {variance}")
        flat = fields.reshape(fields.shape[0], -1).astype(np.float64)
        mean = flat.mean(axis=0)
        # Centred data X = U S V^T: the rows of V^T are the principal directions, the eigenvalues
        # of the covariance X^T X / (N - 1) are S^2 / (N - 1).
        _, singular, directions = np.linalg.svd(flat - mean, full_matrices=False)
        # Numerical zeros: relative to the largest singular value, and to the fields themselves
        # (identical fields leave float64 rounding noise after centring).
        floor = max(RANK_TOLERANCE * singular[0], ROUNDING_TOLERANCE * np.linalg.norm(flat), np.finfo(float).tiny)
        singular = singular[singular > floor]
        if singular.size == 0:
            raise ValueError("fields: all equal, no variation to model")
        eigen = singular**2 / (flat.shape[0] - 1)
        explained = eigen / eigen.sum()
        count = int(np.searchsorted(np.cumsum(explained), variance - 1e-12) + 1)
        count = min(count, singular.size, max_components or singular.size)
        return cls(
            mean.reshape(fields.shape[1:]).astype(np.float32),
            directions[:count].reshape(count, *fields.shape[1:]).astype(np.float32),
            np.sqrt(eigen[:count]).astype(np.float32),
            explained[:count].astype(np.float32),
            int(factor),
        )

    def weights(self, fields: np.ndarray) -> np.ndarray:
        """Standardised weights ``(N, K)`` of fields ``(N, 3, i, j, k)`` (their projection on the components)."""
        flat = fields.reshape(fields.shape[0], -1).astype(np.float64) - self.mean.reshape(-1)
        return (
            flat
            @ self.components.reshape(self.num_components, -1).T.astype(np.float64)
            / self.stddev.astype(np.float64)
        ).astype(np.float32)

    def reconstruct(self, weights: np.ndarray) -> np.ndarray:
        """Fields ``(N, 3, i, j, k)`` of standardised weights ``(N, K)``: ``mean + sum_k w_k sd_k c_k``."""
        flat = (np.asarray(weights, np.float64) * self.stddev) @ self.components.reshape(self.num_components, -1)
        return (flat + self.mean.reshape(-1)).reshape(-1, *self.mean.shape).astype(np.float32)

    def to_tensors(self) -> dict[str, Tensor]:
        """The arrays as tensors (for a weights-only checkpoint)."""
        return {name: torch.as_tensor(np.asarray(getattr(self, name))) for name in PCA_ARRAYS}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], source: str = "sdm") -> DeformationPCA:
        """Undo :meth:`to_tensors` (also reads an ``.npz``'s arrays).

        Raises:
            InputError: a missing array.
        """
        missing = [name for name in PCA_ARRAYS if name not in tensors]
        if missing:
            raise InputError(f"{source}: missing SDM array(s) {missing}")
        arrays = {name: np.asarray(tensors[name]) for name in PCA_ARRAYS}
        return cls(arrays["mean"], arrays["components"], arrays["stddev"], arrays["explained"], int(arrays["factor"]))

    def save(self, path: str | Path, **extra: np.ndarray) -> Path:
        """Write an ``.npz`` (atomically) with the arrays and any ``extra`` ones (e.g. training weights)."""
        path = Path(path)
        with atomic_path(path) as temporary, open(temporary, "wb") as handle:
            arrays = {name: np.asarray(getattr(self, name)) for name in PCA_ARRAYS}
            # numpy's stubs let mypy match the ``**`` arrays to savez's ``allow_pickle: bool`` keyword.
            np.savez(handle, **arrays, **extra)  # type: ignore[arg-type]
        return path

    @classmethod
    def load(cls, path: str | Path) -> DeformationPCA:
        """Read an ``.npz`` written by :meth:`save`.

        Raises:
            InputError: a missing or unreadable file, or missing arrays.
        """
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: file not found")
        try:
            with np.load(path) as archive:
                return cls.from_tensors({name: archive[name] for name in archive.files}, str(path))
        except (OSError, ValueError) as error:
            raise InputError(f"{path}: not a readable SDM file ({error})") from None


@dataclass
class SDMOutput:
    """What :class:`SDMNet` returns; volumes are on the atlas grid.

    Attributes:
        weights: ``(B, K)`` standardised component weights.
        displacement: ``(B, 3, I, J, K)`` predicted field, mm, world components (pull convention).
        warped_labels: ``(B, 1, I, J, K)`` atlas femur label (soft, in [0, 1]) warped by it.
    """

    weights: Tensor
    displacement: Tensor
    warped_labels: Tensor


class WeightRegressor(AffineModule):
    """The affine module's encoders (per view: radiograph and atlas DRR) with a dense layer to ``K`` weights.

    Args:
        config: the experiment config (its ``affine`` section sizes the encoders).
        num_components: ``K``.
    """

    def __init__(self, config: ExperimentConfig, num_components: int) -> None:
        super().__init__(config.affine, config.geometry.image_shape)
        self.dense = nn.Linear(self.dense.in_features, num_components)
        nn.init.normal_(self.dense.weight, std=config.affine.init_std)  # starts at the mean field
        nn.init.zeros_(self.dense.bias)
        self.parameter_scales = torch.ones(num_components)  # standardised weights need no scaling


class SDMNet(nn.Module):
    """Regresses SDM weights from a calibrated AP + LAT pair and warps the atlas labels.

    Args:
        config: the experiment config (geometry; the ``affine`` section sizes the regressor).
        atlas: the atlas (its grid is the output grid).
        pca: the deformation model; its arrays are buffers outside the state dict (a checkpoint
            stores them once, :meth:`DeformationPCA.to_tensors`).
    """

    atlas_femur_mu: Tensor  # buffers, registered in __init__
    atlas_labels: Tensor
    mean_field: Tensor
    scaled_components: Tensor

    def __init__(self, config: ExperimentConfig, atlas: Atlas, pca: DeformationPCA) -> None:
        super().__init__()
        self.config, self.grid, self.pca = config, atlas.grid, pca
        expected = pooled_grid(atlas.grid, pca.factor).shape
        if tuple(pca.mean.shape) != (3, *expected):
            raise InputError(
                f"sdm: fields of shape {tuple(pca.mean.shape)} do not fit the atlas grid "
                f"{atlas.grid.shape} pooled by {pca.factor}: expected {(3, *expected)}"
            )
        geometry = config.geometry
        self.projectors = ProjectorCache(self.grid, geometry.image_shape, geometry.num_samples)
        mu = hu_to_mu(torch.from_numpy(atlas.ct_hu).float())[None, None]
        labels = torch.from_numpy(atlas.labels > 0).float()[None, None]
        self.register_buffer("atlas_femur_mu", mu * labels)  # (1, 1, I, J, K) 1/mm
        self.register_buffer("atlas_labels", labels)  # (1, 1, I, J, K) 1 = femur
        self.register_buffer("mean_field", torch.from_numpy(pca.mean)[None], persistent=False)  # (1, 3, i, j, k)
        # (K, 3 i j k): each row a component times its standard deviation, mm per unit weight.
        scaled = pca.components.reshape(pca.num_components, -1) * pca.stddev[:, None]
        self.register_buffer("scaled_components", torch.from_numpy(scaled), persistent=False)
        self.regressor = WeightRegressor(config, pca.num_components)
        self.transformer = SpatialTransformer(self.grid)

    def field(self, weights: Tensor) -> Tensor:
        """``(B, K)`` standardised weights -> ``(B, 3, I, J, K)`` displacement (mm) on the atlas grid."""
        coarse = self.mean_field + (weights @ self.scaled_components).view(-1, *self.mean_field.shape[1:])
        return upsample_field(coarse, self.grid.shape)

    def forward(self, radiographs: Tensor, views: list[ViewPair]) -> SDMOutput:
        """Args:
        radiographs: ``(B, 2, rows, cols)`` masked line integrals, channel 0 AP, 1 LAT.
        views: ``B`` pairs ``(AP, LAT)`` of calibrated views.
        """
        batch = radiographs.shape[0]
        if radiographs.dim() != 4 or radiographs.shape[1] != 2 or len(views) != batch:
            raise ValueError(
                f"radiographs: expected shape (B, 2, rows, cols) with B = len(views) = {len(views)}, "
                f"got {tuple(radiographs.shape)}"
            )
        with torch.no_grad():  # the atlas DRRs are constants of the geometry
            drrs = self.projectors.project(self.atlas_femur_mu.expand(batch, -1, -1, -1, -1), views)
        weights = self.regressor(*normalise_pair(radiographs, drrs))
        displacement = self.field(weights)
        return SDMOutput(weights, displacement, self.transformer(self.atlas_labels, displacement))

    def predict_labels(self, radiographs: Tensor, views: list[ViewPair]) -> Tensor:
        """``(B, 1, I, J, K)`` femur probability on the atlas grid (the warped soft atlas label)."""
        return self.forward(radiographs, views).warped_labels
