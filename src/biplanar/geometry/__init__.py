"""Projection geometry, volume grids and transforms (frames: see ``volume_grid``)."""

from biplanar.geometry.presets import biplanar_pair, random_generalized_pair
from biplanar.geometry.projection import CarmPose, ProjectionView, carm_projection_matrix
from biplanar.geometry.transforms import (
    euler_to_rotation,
    rigid_matrix,
    rigid_params,
    rotation_to_euler,
    similarity_matrix,
    similarity_params,
    transform_points,
)
from biplanar.geometry.volume_grid import VolumeGrid

__all__ = [
    "CarmPose",
    "ProjectionView",
    "VolumeGrid",
    "biplanar_pair",
    "carm_projection_matrix",
    "euler_to_rotation",
    "random_generalized_pair",
    "rigid_matrix",
    "rigid_params",
    "rotation_to_euler",
    "similarity_matrix",
    "similarity_params",
    "transform_points",
]
