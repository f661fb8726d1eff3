"""Which side of the patient a view's X-ray source is on, against the side the network learnt.

The registration network learnt its AP views with the source in front of the patient (``+y``) and
its LAT views with the source on the patient's left (``-x``), of a right femur (``docs/contract.md``
section 2; LAO/RAO within 30 degrees of 0 and of 90). A view from the opposite side (a PA, a LAT
with the source on the patient's right, or, once mirrored, a left hip's LAT taken with the source
on the patient's left) crosses the patient along the same lines the other way. Its radiograph is
the learnt side's with its columns reversed, except for the perspective: a point ``d`` mm nearer
the source than the isocentre is magnified by ``SID / (SID - d)`` instead of ``SID / (SID + d)``
(about 6 % apart for ``d`` = 30 mm at the paper's 925 mm).

:class:`biplanar.models.network.AtlasRegistrationNet` therefore shows the network such a view's
images with their columns reversed, and reverses its beam-space output back (columns and depth)
before inv-ProST maps it with the view's own, exact geometry.
"""

from __future__ import annotations

import numpy as np

from biplanar.geometry.projection import ProjectionView

# Unit vectors, world RAS+, from the isocentre towards the source of each view as the network learnt it.
LEARNT_SOURCE_DIRECTIONS = {"AP": np.array([0.0, 1.0, 0.0]), "LAT": np.array([-1.0, 0.0, 0.0])}


def source_reversed(view: ProjectionView, isocenter_mm: np.ndarray, view_name: str) -> bool:
    """Whether ``view``'s source lies on the other side of the isocentre than the network learnt.

    Args:
        view: a calibrated view of a right femur (a left one's mirrored view).
        isocenter_mm: ``(3,)`` world mm, the point the views turn about (the atlas grid's centre).
        view_name: ``"AP"`` or ``"LAT"`` (:data:`LEARNT_SOURCE_DIRECTIONS`).
    """
    offset = view.source_world - np.asarray(isocenter_mm, dtype=np.float64)
    return float(np.dot(offset, LEARNT_SOURCE_DIRECTIONS[view_name])) < 0.0
