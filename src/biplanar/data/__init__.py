"""Data: the synthetic femur phantom population and its grids."""

from biplanar.data.femur_shape import FemurParameters, FemurShape
from biplanar.data.grid_presets import GRID_PRESETS, grid_preset
from biplanar.data.pelvis_shape import PelvisParameters
from biplanar.data.phantom import (
    HEAD_HEIGHT_MM,
    FemurLandmarks,
    Pose,
    Subject,
    SubjectSpec,
    TissueParameters,
    make_atlas,
    make_subject,
    render_subject,
)

__all__ = [
    "GRID_PRESETS",
    "HEAD_HEIGHT_MM",
    "FemurLandmarks",
    "FemurParameters",
    "FemurShape",
    "PelvisParameters",
    "Pose",
    "Subject",
    "SubjectSpec",
    "TissueParameters",
    "grid_preset",
    "make_atlas",
    "make_subject",
    "render_subject",
]
