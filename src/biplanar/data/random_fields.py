"""Seeded smooth random fields defined in millimetres, independent of any voxel grid.

A :class:`FourierField` is a sum of plane waves with random directions, wavelengths and phases
(a random Fourier feature approximation of a stationary Gaussian field with unit variance per
channel). Being analytic in mm, the same seed gives the same field on every grid; evaluating it
as the average over a voxel box (anti-aliasing) multiplies each wave by the box filter's
transfer function, a product of sincs, which :meth:`FourierField.__call__` applies exactly.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_CHUNK_POINTS = 1 << 18  # points per matmul chunk: keeps the (points, modes) buffer < 64 MiB


class FourierField:
    """``channels`` independent smooth random fields, each with unit variance.

    Args:
        rng: the generator all random choices come from.
        n_modes: plane waves per field.
        wavelength_mm: ``(shortest, longest)``; wavelengths are log-uniform in between.
        channels: number of independent output fields.
    """

    def __init__(
        self, rng: np.random.Generator, n_modes: int, wavelength_mm: tuple[float, float], channels: int = 1
    ) -> None:
        directions = rng.normal(size=(n_modes, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        log_shortest, log_longest = np.log(wavelength_mm)
        wavelengths = np.exp(rng.uniform(log_shortest, log_longest, size=n_modes))
        self._set_waves(rng, directions * (2.0 * np.pi / wavelengths)[:, None], channels)

    @classmethod
    def matern(
        cls, rng: np.random.Generator, n_modes: int, length_mm: float, smoothness: float = 1.5, channels: int = 1
    ) -> FourierField:
        """A field whose correlation is Matern's with ``length_mm`` and ``smoothness`` (nu).

        Matern's spectral density in 3-D is a multivariate Student t with ``2 nu`` degrees of
        freedom and scale ``1 / length_mm``, so the wavevectors are drawn from it (Rahimi and Recht's
        random features): ``nu = 1.5`` gives the correlation ``(1 + sqrt(3) d / l) exp(-sqrt(3) d / l)``
        at distance ``d``.
        """
        field = cls.__new__(cls)
        degrees = 2.0 * smoothness
        gaussian = rng.normal(size=(n_modes, 3))
        chi_square = rng.chisquare(degrees, size=n_modes)
        field._set_waves(rng, gaussian / np.sqrt(chi_square / degrees)[:, None] / length_mm, channels)
        return field

    def _set_waves(self, rng: np.random.Generator, wavevectors: np.ndarray, channels: int) -> None:
        """``(modes, 3)`` rad/mm wavevectors; draws each wave's phase and weights."""
        n_modes = len(wavevectors)
        self.wavevectors = wavevectors
        self.phases = rng.uniform(0.0, 2.0 * np.pi, size=n_modes)  # (modes,) rad
        # E[w^2] * E[cos^2] * modes = (2 / modes) * (1 / 2) * modes = 1: unit variance.
        self.weights = rng.normal(0.0, np.sqrt(2.0 / n_modes), size=(n_modes, channels))

    def __call__(self, points_mm: Tensor, voxel_edges_mm: np.ndarray | None = None) -> Tensor:
        """Evaluate the fields.

        Args:
            points_mm: ``(N, 3)`` points in the field's frame, mm.
            voxel_edges_mm: ``(3, 3)`` rows = the three edge vectors of a voxel expressed in the
                field's frame (mm); when given, each value is the field's mean over that box
                centred on the point (exact box-filter anti-aliasing). ``None``: point values.

        Returns:
            ``(N, channels)`` field values, same dtype and device as ``points_mm``.
        """
        weights = self.weights
        if voxel_edges_mm is not None:
            # Mean of cos(k.x) over a box with edges e_i: prod_i sinc(k.e_i / 2) (sinc = sin x / x).
            weights = weights * np.prod(np.sinc(self.wavevectors @ voxel_edges_mm.T / (2 * np.pi)), axis=1)[:, None]
        dtype, device = points_mm.dtype, points_mm.device
        wavevectors = torch.as_tensor(self.wavevectors.T, dtype=dtype, device=device)
        phases = torch.as_tensor(self.phases, dtype=dtype, device=device)
        weights_t = torch.as_tensor(weights, dtype=dtype, device=device)
        out = [
            torch.cos(torch.addmm(phases, chunk, wavevectors)) @ weights_t for chunk in points_mm.split(_CHUNK_POINTS)
        ]
        if not out:
            return points_mm.new_zeros(0, weights.shape[1])
        return torch.cat(out)
