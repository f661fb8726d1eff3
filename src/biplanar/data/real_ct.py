"""The real lumbar-pelvis CT of this repository: a named source for studies and SOPI training.

``tests/data/real_ct/lumbar_pelvis_ct.nii.gz`` (a copy of ``shared/data/real_ct``; HU, RAS+ mm,
122 x 101 x 112 voxels of 3 mm; see that folder's README) ships with a checkout of the repository,
not with an installed package.
"""

from __future__ import annotations

from pathlib import Path

from biplanar.errors import InputError

REAL_CT = Path(__file__).resolve().parents[3] / "tests" / "data" / "real_ct" / "lumbar_pelvis_ct.nii.gz"
REAL_CT_SOURCE = "real_ct"  # the name configs use for it


def real_ct_path() -> Path:
    """:data:`REAL_CT`, or ``InputError`` when this is not a checkout of the repository."""
    if not REAL_CT.is_file():
        raise InputError(
            f"{REAL_CT}: the real CT is not there (it ships with the repository's tests/data, "
            f"not with an installed package)"
        )
    return REAL_CT
