"""Which bundled registration network a pair of radiographs needs: a femur in a body, or a bone in air.

The bundled ``lite`` network learnt femurs inside a patient: under the femur mask the soft tissue
lifts the femur onto a nearly flat plateau and the network works from its outline. A femur X-rayed
alone (a dry bone or a specimen in air, or an outside projector's voxelised femur with nothing around
it) shows its own thickness instead, dark at its outline; there the ``lite`` network alone reaches
Dice 0.85 (docs/results.md, "Femurs rendered alone or of one density"). The bundled ``lite_alone``
network was fine-tuned on such radiographs only (its README).

The choice is read off the radiographs, never off the result. Inside a body the femur stands on
soft tissue: a ring of pixels just outside the femur mask (from :data:`RING_INNER_PX` to
:data:`RING_OUTER_PX` model pixels away) has a median line integral of most of the femur's own
median; in air it has next to none. Both views must show a **bone in air**: the ring's median below
:data:`BONE_IN_AIR_MAX_SURROUND` of the femur's median. Measured on validation and held-out subjects
(``python examples/bone_in_air.py``, docs/results.md "A network for bones in air"): 0.00-0.23 for
femurs alone in air, as line integrals and as clinic-processed DICOM (whose unsharp masking leaves
a grey background but a dark halo next to the bone); 0.60-1.06 inside a body or a CT box.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage

BONE_IN_AIR_MODEL = "lite_alone"  # the bundled network for bones in air
BODY_MODEL = "lite"  # the bundled network for femurs in a body
RING_INNER_PX = 3  # the ring around the mask starts here (model pixels): past the femur's blurred edge
RING_OUTER_PX = 7  # and ends here
BONE_IN_AIR_MAX_SURROUND = 0.4  # the ring's median over the femur's, below which the femur is in air


def surround_level(image: np.ndarray, mask: np.ndarray) -> float | None:
    """The median line integral around the femur over the median on it (module doc).

    Args:
        image: ``(rows, cols)`` float32 line integrals (dimensionless).
        mask: ``(rows, cols)`` bool femur mask of ``image``.

    Returns:
        the ratio (about 1 inside a body, about 0 in air); ``None`` when the mask is empty, leaves no
        ring around it or covers no line integral above 0 (such a view never shows a bone in air).
    """
    ring = ndimage.binary_dilation(mask, iterations=RING_OUTER_PX)
    ring &= ~ndimage.binary_dilation(mask, iterations=RING_INNER_PX)
    femur_level = float(np.median(image[mask])) if mask.any() else 0.0
    if not ring.any() or femur_level <= 0.0:
        return None
    return float(np.median(image[ring])) / femur_level


def choose_bundled_model(images: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The bundled network for these radiographs, as ``report.json``'s ``inputs.model_choice``.

    Args:
        images: view name -> ``(rows, cols)`` line integrals on the model's detector.
        masks: view name -> ``(rows, cols)`` bool femur mask (given or segmented) of that image.

    Returns:
        ``model`` (:data:`BONE_IN_AIR_MODEL` or :data:`BODY_MODEL`), ``bone_in_air``, each view's
        :func:`surround_level` and the ``rule``.
    """
    levels = {name: surround_level(images[name], masks[name]) for name in images}
    bone_in_air = all(level is not None and level < BONE_IN_AIR_MAX_SURROUND for level in levels.values())
    return {
        "model": BONE_IN_AIR_MODEL if bone_in_air else BODY_MODEL,
        "bone_in_air": bone_in_air,
        "surround_level": levels,
        "rule": f"{BONE_IN_AIR_MODEL} if in both views the median line integral {RING_INNER_PX}-{RING_OUTER_PX} px "
        f"outside the femur mask is below {BONE_IN_AIR_MAX_SURROUND:g} x the femur's median (a bone in air), "
        f"else {BODY_MODEL}",
    }
