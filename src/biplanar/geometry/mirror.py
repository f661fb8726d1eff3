"""A left femur registered as a right one: the mirror through the atlas's mid-sagittal plane.

The atlas, the training data and the network are of a right femur. A left femur is registered in
the *mirrored* world, where it is a right femur, and every output is brought back::

    S: (x, y, z) -> (2 c_x - x, y, z)      world RAS+ mm, c_x the x of the atlas grid's centre

- A view ``P`` of the patient becomes ``F P S`` in the mirrored world: ``S`` maps a mirrored point
  back to the patient's, where ``P`` projects it, and ``F`` (``u -> cols - 1 - u``) flips the
  detector's columns, so that the mirrored view is again a right-handed C-arm (a mirror reverses
  the detector's handedness). Its radiograph is the patient's with its columns flipped.
- Volumes on the atlas grid (whose ``i`` axis runs along ``x`` and whose centre has ``x = c_x``)
  mirror by reversing the ``i`` axis; a displacement field also negates its ``x`` component;
  a 4 x 4 world transform ``M`` becomes ``S M S``; points map by ``S`` and directions by
  ``diag(-1, 1, 1)``.

Exactness: the mirrored view sees exactly the mirrored patient. A LAT view whose source is on the
femur's lateral side (a left hip with ``lao_rao_deg`` near +90) becomes, mirrored, a view from the
lateral side of a right femur (``lao_rao_deg`` near -90), the other side than the network learnt;
:mod:`biplanar.geometry.facing` says how the network is shown such a view.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from biplanar.geometry.projection import ProjectionView
from biplanar.geometry.volume_grid import VolumeGrid

SIDES = ("right", "left")


@dataclass(frozen=True)
class SagittalMirror:
    """The mirror ``S`` through the plane ``x = centre_x`` (module doc).

    Attributes:
        centre_x: the plane's ``x``, world mm.
    """

    centre_x: float

    @classmethod
    def of_grid(cls, grid: VolumeGrid) -> SagittalMirror:
        """The mirror through the centre of ``grid``, whose ``i`` axis must run along world ``x``.

        Raises:
            ValueError: the grid is rotated or its ``i`` axis does not point along ``+x``.
        """
        linear = grid.affine[:3, :3]
        if not (np.allclose(linear, np.diag(np.diag(linear))) and linear[0, 0] > 0):
            raise ValueError("mirror: the atlas grid's i axis must run along +x (an axis-aligned affine)")
        return cls(float(grid.centre_world[0]))

    @property
    def matrix(self) -> np.ndarray:
        """``(4, 4)`` homogeneous ``S`` (its own inverse)."""
        matrix = np.diag([-1.0, 1.0, 1.0, 1.0])
        matrix[0, 3] = 2.0 * self.centre_x
        return matrix

    def view(self, view: ProjectionView) -> ProjectionView:
        """``F P S``: the view of the mirrored world, with the detector's columns flipped."""
        cols = view.image_shape[1]
        flip_columns = np.array([[-1.0, 0.0, cols - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        return ProjectionView(flip_columns @ view.matrix @ self.matrix, view.image_shape, view.name)

    @staticmethod
    def image(image: np.ndarray) -> np.ndarray:
        """A ``(rows, cols)`` radiograph (or mask) of the view, as the mirrored view sees it."""
        return np.ascontiguousarray(image[:, ::-1])

    @staticmethod
    def volume(volume: np.ndarray) -> np.ndarray:
        """An ``(I, J, K, ...)`` volume on the atlas grid, mirrored (the ``i`` axis reversed)."""
        return np.ascontiguousarray(volume[::-1])

    @staticmethod
    def displacement(displacement: np.ndarray) -> np.ndarray:
        """An ``(I, J, K, ..., 3)`` displacement field (world mm, components last), mirrored:
        ``d'(p) = diag(-1, 1, 1) d(S p)``."""
        mirrored = np.array(displacement[::-1], copy=True)
        mirrored[..., 0] *= -1.0
        return mirrored

    def transform(self, matrix: np.ndarray) -> np.ndarray:
        """A ``(4, 4)`` world transform of the mirrored world in the patient's: ``S M S``."""
        return self.matrix @ np.asarray(matrix, dtype=np.float64) @ self.matrix

    def points(self, points_world: np.ndarray) -> np.ndarray:
        """``(..., 3)`` world mm points, mirrored."""
        mirrored = np.array(points_world, dtype=np.float64, copy=True)
        mirrored[..., 0] = 2.0 * self.centre_x - mirrored[..., 0]
        return mirrored

    @staticmethod
    def directions(directions: np.ndarray) -> np.ndarray:
        """``(..., 3)`` world directions, mirrored (``x`` negated)."""
        mirrored = np.array(directions, dtype=np.float64, copy=True)
        mirrored[..., 0] *= -1.0
        return mirrored
