"""The patient around the registration grid: radiographs projected from a scene larger than the
CT that registration sees, so that no ray meets the edge of a box of tissue.

A subject's *scene* holds its body outline with skin, subcutaneous fat and air outside
(:mod:`biplanar.data.body_shape`), the soft tissue, both hemipelves and both femurs: the left side
is the right side mirrored about the midsagittal plane (the contralateral femur is the subject's
femur mirrored, in the mirrored pose). Its grid is the registration grid's lattice (same voxel
spacing and alignment, world RAS+ mm) extended to the body's outline (plus
:data:`AIR_MARGIN_VOX` voxels of air) across, and along z to every ray of the views that crosses
the body (plus :data:`AIR_MARGIN_VOX`), so the DRR sees the scene at the registration grid's
resolution everywhere and the scene's own faces only where no ray reaches.

Rendering (:func:`render_scene`): the registration grid is rendered with the body
(:func:`biplanar.data.phantom.render_subject`), then the right half of the scene on its own grid
(the femur's signed distance copied from the first rendering, not evaluated again) with the
registration grid's CT pasted in, then mirrored. So the registration grid's CT and labels are cut
from the scene and are exactly those of rendering the same scene on the registration grid (the
smooth fat-plane field, interpolated from each grid's own 3-mm lattice, may differ by a few HU
across the registration grid's faces).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from biplanar.data.body_shape import BodyShape, midline_column
from biplanar.data.phantom import Subject, SubjectSpec, render_ct_hu, render_subject_and_femur_sdf
from biplanar.geometry.projection import ProjectionView
from biplanar.geometry.volume_grid import VolumeGrid

AIR_MARGIN_VOX = 2  # voxels of the scene beyond the skin and beyond the rays' reach

Block = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Scene:
    """Where a subject's scene lies.

    Attributes:
        grid: the scene's grid (world RAS+ mm), the registration grid's lattice.
        block: the registration grid's voxels in the scene's array, index slices along ``i, j, k``.
        body: the body outline, its midline on the lattice.
    """

    grid: VolumeGrid
    block: Block
    body: BodyShape

    def to_dict(self) -> dict[str, Any]:
        """Shape, affine, the registration grid's first voxel in the scene and the midline (JSON-ready)."""
        return {
            "shape": list(self.grid.shape),
            "affine": self.grid.affine.tolist(),
            "registration_grid_start": [part.start for part in self.block],
            "midline_x_mm": self.body.midline_x_mm,
        }


@dataclass(frozen=True)
class RenderedScene:
    """A subject's scene and its registration grid.

    Attributes:
        scene: the scene's grid, the registration grid's place in it, the body.
        ct_hu: ``(I', J', K')`` float32 HU on ``scene.grid``.
        subject: the subject on the registration grid; ``subject.ct_hu == ct_hu[scene.block]``.
    """

    scene: Scene
    ct_hu: np.ndarray
    subject: Subject


def visible_z_range(
    views: dict[str, ProjectionView], low_xy: np.ndarray, high_xy: np.ndarray
) -> tuple[float, float] | None:
    """World z range (mm) of the points of the prism ``low_xy <= (x, y) <= high_xy`` (any z) that
    a pixel ray of ``views`` crosses; ``None`` if no ray crosses it.

    The prism's intersection with a view's pyramid of rays is convex, so its extreme z lie on the
    rays of the detector's border pixels (their entry and exit points, by the slab method).

    Args:
        low_xy, high_xy: ``(2,)`` world mm.
    """
    heights = []
    for view in views.values():
        rays = view.pixel_rays(torch.float64).numpy()  # (rows, cols, 3), world mm per mm of depth
        border = np.concatenate([rays[0], rays[-1], rays[:, 0], rays[:, -1]])  # (P, 3)
        source = view.source_world
        with np.errstate(divide="ignore", invalid="ignore"):  # rays parallel to a slab: +-inf
            t_low = (low_xy - source[:2]) / border[:, :2]
            t_high = (high_xy - source[:2]) / border[:, :2]
        enter = np.minimum(t_low, t_high).max(axis=1).clip(min=0.0)
        leave = np.maximum(t_low, t_high).min(axis=1)
        hit = enter < leave
        heights += [source[2] + t * border[hit, 2] for t in (enter[hit], leave[hit])]
    if not any(h.size for h in heights):
        return None
    every = np.concatenate(heights)
    return float(every.min()), float(every.max())


def scene_layout(spec: SubjectSpec, grid: VolumeGrid, views: dict[str, ProjectionView]) -> Scene:
    """The scene of ``spec`` around the registration grid ``grid`` seen by ``views`` (module doc).

    The scene's columns are symmetric about the midline (a voxel face), the right half reaching
    the body's right edge or the grid's, whichever is further.

    Raises:
        ValueError: ``grid`` is not axis-aligned RAS+, or the midline crosses it.
    """
    body = spec.body_on(grid)
    spacing = grid.spacing_mm
    start_world = grid.affine[:3, 3]
    midline = midline_column(grid, body.midline_x_mm)
    if midline > 0:
        raise ValueError(
            f"the body's midline (x = {body.midline_x_mm:.1f} mm) crosses the registration grid "
            f"(x from {start_world[0]:.1f} mm): the scene mirrors the grid's side only"
        )
    low_xy, high_xy = body.bounds_world()
    to_index = lambda value, axis: (value - start_world[axis]) / spacing[axis]  # noqa: E731
    last = np.asarray(grid.shape) - 1
    right = max(int(last[0]), int(np.ceil(to_index(high_xy[0], 0))) + AIR_MARGIN_VOX)
    width = right - midline + 1  # columns of each half
    y_range = (
        min(0, int(np.floor(to_index(low_xy[1], 1))) - AIR_MARGIN_VOX),
        max(int(last[1]), int(np.ceil(to_index(high_xy[1], 1))) + AIR_MARGIN_VOX),
    )
    # The rays' reach over the scene's whole cross-section (both halves, the grid's included).
    first_x = start_world[0] + (midline - width) * spacing[0]
    scene_low = np.array([first_x, start_world[1] + y_range[0] * spacing[1]])
    scene_high = np.array([start_world[0] + right * spacing[0], start_world[1] + y_range[1] * spacing[1]])
    reach = visible_z_range(views, scene_low, scene_high)
    z_range = (0, int(last[2]))
    if reach is not None:
        z_range = (
            min(0, int(np.floor(to_index(reach[0], 2))) - AIR_MARGIN_VOX),
            max(int(last[2]), int(np.ceil(to_index(reach[1], 2))) + AIR_MARGIN_VOX),
        )
    offset = np.eye(4)
    offset[:3, 3] = (midline - width, y_range[0], z_range[0])  # the scene's voxel 0 in grid voxels
    shape = (2 * width, y_range[1] - y_range[0] + 1, z_range[1] - z_range[0] + 1)
    starts = (width - midline, -y_range[0], -z_range[0])
    block = tuple(slice(start, start + size) for start, size in zip(starts, grid.shape))
    return Scene(VolumeGrid(shape, grid.affine @ offset), (block[0], block[1], block[2]), body)


def right_half(scene: Scene) -> tuple[VolumeGrid, Block]:
    """The grid of the scene's right half (from the midline, world +x) and the registration grid's
    block in it."""
    width = scene.grid.shape[0] // 2
    offset = np.eye(4)
    offset[0, 3] = width
    columns = scene.block[0]
    block = (slice(columns.start - width, columns.stop - width), scene.block[1], scene.block[2])
    return VolumeGrid((width, *scene.grid.shape[1:]), scene.grid.affine @ offset), block


def render_scene(spec: SubjectSpec, grid: VolumeGrid, views: dict[str, ProjectionView]) -> RenderedScene:
    """Render the scene of ``spec`` around ``grid`` for ``views`` and cut the registration grid
    from it (module doc). Deterministic; torch runs single-threaded."""
    scene = scene_layout(spec, grid, views)
    subject, femur_sdf = render_subject_and_femur_sdf(spec, grid, scene.body)
    half_grid, block = right_half(scene)
    half = render_ct_hu(spec, half_grid, scene.body, (block, femur_sdf))
    half[block] = torch.from_numpy(subject.ct_hu)
    # Mirror about the midline (a voxel face): the right half's column c is the left half's -1 - c.
    ct_hu = torch.cat([half.flip(0), half]).numpy()
    return RenderedScene(scene, ct_hu, subject)
