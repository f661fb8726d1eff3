# The names biplanar.data loads on first use (lazy_loader.attach_stub reads this file), and their types.
from .femur_shape import FemurParameters as FemurParameters
from .femur_shape import FemurShape as FemurShape
from .grid_presets import GRID_PRESETS as GRID_PRESETS
from .grid_presets import grid_preset as grid_preset
from .pelvis_shape import PelvisParameters as PelvisParameters
from .phantom import HEAD_HEIGHT_MM as HEAD_HEIGHT_MM
from .phantom import FemurLandmarks as FemurLandmarks
from .phantom import Pose as Pose
from .phantom import Subject as Subject
from .phantom import SubjectSpec as SubjectSpec
from .phantom import TissueParameters as TissueParameters
from .phantom import make_atlas as make_atlas
from .phantom import make_subject as make_subject
from .phantom import render_subject as render_subject
