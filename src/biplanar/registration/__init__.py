"""``register``: the atlas registered to one AP + LAT pair of radiographs, in the order the data flows.

- :mod:`~biplanar.registration.inputs`: read the geometry, radiographs, masks, atlas and truth.
- :mod:`~biplanar.registration.pipeline`: network inference, calibration correction, refinement.
- :mod:`~biplanar.registration.outputs`: write the volumes, transform, mesh, overlays and report.

Hip measurements live in :mod:`biplanar.evaluation.hip`.
"""

from biplanar.registration.outputs import CORRECTED_GEOMETRY, OUTPUT_FILES
from biplanar.registration.pipeline import RegistrationReport, correct_calibration, register

__all__ = ["CORRECTED_GEOMETRY", "OUTPUT_FILES", "RegistrationReport", "correct_calibration", "register"]
