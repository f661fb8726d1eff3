"""Named volume grids of the phantom population (world frame: RAS+ mm, origin at the volume centre).

All presets cover the same 127.5 x 85 x 192 mm field of view as the paper's grid (Van Houtte et
al. 2022: 192 x 128 x 192 voxels of 0.664 x 0.664 x 1.0 mm), at coarser voxels for speed. The
world origin is the centre of that box, so the default isocentre (the volume centre) is the
world origin; the phantom places the proximal femur around it, the head in the upper part of the
volume (:data:`biplanar.data.phantom.HEAD_HEIGHT_MM`).
"""

from __future__ import annotations

from biplanar.config import GRID_SHAPES
from biplanar.geometry.volume_grid import VolumeGrid

# Voxel sizes (mm) of the presets; their names and voxels are the configs' (biplanar.config.GRID_SHAPES).
_SPACINGS_MM = {"paper": (0.664, 0.664, 1.0), "lite": (1.328, 1.328, 2.0), "tiny": (2.656, 2.656, 4.0)}
GRID_PRESETS: dict[str, VolumeGrid] = {
    name: VolumeGrid.from_spacing(shape, _SPACINGS_MM[name]) for name, shape in GRID_SHAPES.items()
}


def grid_preset(name: str) -> VolumeGrid:
    """The :data:`GRID_PRESETS` grid called ``name``; ``ValueError`` listing the names otherwise."""
    try:
        return GRID_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown grid preset {name!r}: expected one of {sorted(GRID_PRESETS)}") from None
