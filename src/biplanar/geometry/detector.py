"""Any detector onto the model's: resampling a radiograph and updating its projection matrix exactly.

A user's radiograph has its own rows, columns, pixel size and distances. The network was trained on
one detector: ``model_shape`` pixels that measure ``model_isocenter_pixel_mm`` at the isocentre
(e.g. 112 x 80 pixels of 1.86 mm, 1000 mm from the source, the isocentre 925 mm from it: 1.72 mm).
The user's view is brought onto a detector of that shape whose pixels measure as much at the
isocentre, so that the femur covers as many pixels as in training whatever the user's distances,
by a change of pixel coordinates only, centred on the projection of the isocentre
(docs/contract.md section 7, "Any detector")::

    uv_user = A uv_model,   A = [[k_u, 0, c_u - k_u m_u], [0, k_v, c_v - k_v m_v], [0, 0, 1]]

with ``k = f_user / f_model`` per axis (the user's focal lengths in pixels, read from the projection
matrix; ``f_model = d / model_isocenter_pixel_mm`` with ``d`` the isocentre's depth in the user's
view, its source-isocentre distance for a C-arm), ``(c_u, c_v)`` the isocentre's projection on the
user's detector and ``(m_u, m_v)`` the centre of the model's detector. At the training distances
``f_model`` is the training detector's focal length and the resampled view is the training view.
The resampled view's projection matrix is ``A^-1 P_user``: a point
projects onto model pixel ``uv_model`` exactly when it projects onto user pixel ``A uv_model``, so
the geometry is exact (no approximation); only the image values are interpolated.

The image is resampled by area: each model pixel covers ``k_u x k_v`` user pixels, and its value
is the mean of the user image over that footprint (a box filter of the footprint's size, then
bilinear interpolation at the footprint's centre). Outside the user's image the value is
``fill_value`` (0: no attenuation, for line integrals).

Frames: pixel coordinates ``(u, v) = (col, row)``, ``(0, 0)`` the centre of the top-left pixel
(docs/contract.md section 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from biplanar.geometry.projection import ProjectionView


def focal_lengths_px(view: ProjectionView) -> tuple[float, float]:
    """``(f_u, f_v)``: the view's focal lengths in pixels along columns and rows.

    With ``P = K [R | t]`` and ``K = [[f_u, s, c_u], [0, f_v, c_v], [0, 0, 1]]``, ``M M^T = K K^T``
    for ``M = P[:, :3]`` (``P`` normalised so ``||M[2]|| = 1``, as :class:`ProjectionView` keeps it);
    its entries give ``c_u, c_v`` and then ``f_u, f_v`` (a zero skew ``s`` is assumed, as for every
    C-arm of the contract).
    """
    gram = view.matrix[:, :3] @ view.matrix[:, :3].T  # K K^T
    centre_u, centre_v = gram[0, 2], gram[1, 2]
    return float(np.sqrt(gram[0, 0] - centre_u**2)), float(np.sqrt(gram[1, 1] - centre_v**2))


@dataclass(frozen=True)
class DetectorResampling:
    """The change of pixel coordinates from the model's detector to a user's.

    Attributes:
        model_to_user: ``(3, 3)`` homogeneous pixel map ``uv_user = A uv_model`` (module doc).
        user_shape: ``(rows, cols)`` of the user's radiograph.
        model_shape: ``(rows, cols)`` of the model's detector.
    """

    model_to_user: np.ndarray
    user_shape: tuple[int, int]
    model_shape: tuple[int, int]

    @classmethod
    def onto_model(
        cls,
        view: ProjectionView,
        model_shape: tuple[int, int],
        model_isocenter_pixel_mm: float,
        isocenter_world: np.ndarray,
    ) -> DetectorResampling:
        """The resampling that puts ``view`` onto the model's detector around the isocentre.

        Args:
            view: the user's view (its ``image_shape`` is the user's radiograph's).
            model_shape: ``(rows, cols)`` of the model's detector.
            model_isocenter_pixel_mm: the model's pixel size at the isocentre, mm (pixel spacing x
                source-isocentre / source-detector distance of the training geometry).
            isocenter_world: ``(3,)`` world mm; its projection lands on the model detector's centre.

        Raises:
            ValueError: a non-positive pixel size or an isocentre behind the source.
        """
        if not model_isocenter_pixel_mm > 0:
            raise ValueError(f"model pixel size at the isocentre: expected > 0 mm, got {model_isocenter_pixel_mm}")
        homogeneous = view.matrix @ np.append(np.asarray(isocenter_world, dtype=np.float64), 1.0)
        if homogeneous[2] <= 0:
            raise ValueError(f"view {view.name or '?'}: the isocentre is behind the X-ray source")
        centre_user = homogeneous[:2] / homogeneous[2]  # (u, v) user pixels
        model_focal_px = homogeneous[2] / model_isocenter_pixel_mm  # depth w is mm (ProjectionView)
        scale = np.array(focal_lengths_px(view)) / model_focal_px  # user pixels per model pixel, (u, v)
        centre_model = (np.array(model_shape[::-1], dtype=np.float64) - 1.0) / 2.0  # (u, v): (cols, rows)
        model_to_user = np.eye(3)
        model_to_user[[0, 1], [0, 1]] = scale
        model_to_user[:2, 2] = centre_user - scale * centre_model
        return cls(model_to_user, view.image_shape, (int(model_shape[0]), int(model_shape[1])))

    @property
    def scale(self) -> tuple[float, float]:
        """``(k_u, k_v)``: user pixels per model pixel along columns and rows."""
        return float(self.model_to_user[0, 0]), float(self.model_to_user[1, 1])

    def view(self, view: ProjectionView) -> ProjectionView:
        """The user's view as seen on the model's detector: ``A^-1 P``, the model's image shape."""
        matrix = np.linalg.solve(self.model_to_user, view.matrix)
        return ProjectionView(matrix, self.model_shape, view.name, None)

    def image(self, image: np.ndarray, fill_value: float = 0.0) -> np.ndarray:
        """Resample a user radiograph onto the model's detector (area average, module doc).

        Args:
            image: ``(rows, cols)`` of ``user_shape``, any units.
            fill_value: the value of model pixels whose footprint centre lies outside the image.

        Returns:
            ``(rows, cols)`` of ``model_shape``, float32.
        """
        if tuple(image.shape) != self.user_shape:
            raise ValueError(f"image: expected shape {list(self.user_shape)}, got {list(image.shape)}")
        scale_u, scale_v = self.scale
        # (rows, cols) order for ndimage: the box of the footprint, at least one pixel.
        footprint = (max(1, round(scale_v)), max(1, round(scale_u)))
        smoothed = ndimage.uniform_filter(np.asarray(image, dtype=np.float64), size=footprint, mode="nearest")
        if footprint[0] % 2 == 0 or footprint[1] % 2 == 0:
            # An even box is centred half a pixel before its pixel: shift the sample points with it.
            offset = np.array([(footprint[1] % 2 - 1) / 2.0, (footprint[0] % 2 - 1) / 2.0])
        else:
            offset = np.zeros(2)
        rows, cols = self.model_shape
        v, u = np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(cols, dtype=np.float64), indexing="ij")
        user_u = self.model_to_user[0, 0] * u + self.model_to_user[0, 2] - offset[0]
        user_v = self.model_to_user[1, 1] * v + self.model_to_user[1, 2] - offset[1]
        sampled = ndimage.map_coordinates(smoothed, [user_v, user_u], order=1, mode="constant", cval=np.nan)
        return np.where(np.isnan(sampled), fill_value, sampled).astype(np.float32)

    def to_user_px(self, uv_model: np.ndarray) -> np.ndarray:
        """Model detector pixels ``(..., 2)`` ``(u, v)`` to the user's ``(..., 2)`` ``(u, v)``."""
        return uv_model * np.diag(self.model_to_user)[:2] + self.model_to_user[:2, 2]

    def nearest_to_user(self, image: np.ndarray) -> np.ndarray:
        """A ``(rows_m, cols_m)`` image of the model's detector (e.g. a mask) on the user's pixels:
        each user pixel takes the model pixel its centre falls in (0 outside the model's field).

        Returns:
            ``(rows, cols)`` of ``user_shape``, ``image``'s dtype.
        """
        if tuple(image.shape) != self.model_shape:
            raise ValueError(f"image: expected shape {list(self.model_shape)}, got {list(image.shape)}")
        rows, cols = self.user_shape
        v, u = np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(cols, dtype=np.float64), indexing="ij")
        model_u = np.rint((u - self.model_to_user[0, 2]) / self.model_to_user[0, 0]).astype(int)
        model_v = np.rint((v - self.model_to_user[1, 2]) / self.model_to_user[1, 1]).astype(int)
        inside = (model_u >= 0) & (model_u < self.model_shape[1]) & (model_v >= 0) & (model_v < self.model_shape[0])
        result = np.zeros(self.user_shape, dtype=image.dtype)
        result[inside] = image[model_v[inside], model_u[inside]]
        return result
