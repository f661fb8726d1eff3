"""The real lumbar-pelvis CT shipped with the package: a named source for studies and SOPI training.

``biplanar/resources/real_ct/lumbar_pelvis_ct.nii.gz`` (HU, RAS+ mm, 122 x 101 x 112 voxels of
3 mm; origin and licence in that folder's README), found through :mod:`importlib.resources`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

REAL_CT = Path(str(resources.files("biplanar") / "resources" / "real_ct" / "lumbar_pelvis_ct.nii.gz"))
REAL_CT_SOURCE = "real_ct"  # the name configs use for it
