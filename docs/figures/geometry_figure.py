"""Draw the paper's biplanar geometry (docs/img/geometry.png) from biplanar's own geometry code.

Everything drawn comes from the package: ``biplanar_pair()`` for the two views,
``ProjectionView.source_world`` for the sources, ``CarmPose.axes_world()`` for the detector
axes, ``ProjectionView.pixel_rays()`` extended to depth ``source_detector_mm`` for the detector
corners and pixel (0, 0), and the paper's ``VolumeGrid`` for the volume box.

Usage::

    python docs/figures/geometry_figure.py --out docs/img/geometry.png
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from mpl_toolkits.mplot3d.art3d import Poly3DCollection

from biplanar.geometry import ProjectionView, VolumeGrid, biplanar_pair

PAPER_GRID = VolumeGrid.from_spacing((192, 128, 192), (0.664, 0.664, 1.0))
VIEW_COLOURS = {"AP": "tab:blue", "LAT": "tab:red"}
AXIS_ARROW_MM = 60.0  # length of the drawn u / v detector axes
ZOOM_HALF_WIDTH_MM = 140.0  # half-width of the close-up panels around the isocentre
RAY_STUB_MM = 230.0  # how far towards the source the close-up panels draw the rays


@dataclass(frozen=True)
class DrawnView:
    """The world-mm points of one view that the figure draws.

    Attributes:
        name: ``"AP"`` or ``"LAT"``.
        source: ``(3,)`` X-ray source.
        corners: ``(4, 3)`` centres of the detector's corner pixels, in the order
            (0, 0), (0, cols-1), (rows-1, cols-1), (rows-1, 0).
        centre: ``(3,)`` where the central ray (through the isocentre) meets the detector.
        u_axis, v_axis: ``(3,)`` unit detector axes (columns, rows).
        to_source: ``(3,)`` unit vector from the isocentre towards the source.
        source_isocenter_mm: distance from the source to the isocentre, mm.
    """

    name: str
    source: np.ndarray
    corners: np.ndarray
    centre: np.ndarray
    u_axis: np.ndarray
    v_axis: np.ndarray
    to_source: np.ndarray
    source_isocenter_mm: float

    @property
    def isocentre(self) -> np.ndarray:
        """``(3,)`` world mm of the isocentre, ``source_isocenter_mm`` from the source."""
        return self.source - self.source_isocenter_mm * self.to_source


def drawn_view(view: ProjectionView) -> DrawnView:
    """Detector-plane points of ``view`` (a C-arm view): corner pixel rays at ``source_detector_mm``."""
    carm = view.carm
    source = view.source_world
    rays = view.pixel_rays().numpy()  # (rows, cols, 3), world mm per mm of depth
    corner_rays = np.stack([rays[0, 0], rays[0, -1], rays[-1, -1], rays[-1, 0]])
    to_source, u_axis, v_axis = carm.axes_world()
    return DrawnView(
        name=view.name,
        source=source,
        corners=source + carm.source_detector_mm * corner_rays,
        centre=source + carm.source_detector_mm * view.principal_direction,
        u_axis=u_axis,
        v_axis=v_axis,
        to_source=to_source,
        source_isocenter_mm=carm.source_isocenter_mm,
    )


def box_edges(corners: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The 12 edges of a box given by ``VolumeGrid.corners_world()`` ``(8, 3)`` (i, j, k binary order)."""
    edges = []
    for a in range(8):
        for bit in (4, 2, 1):
            if not a & bit:
                edges.append((corners[a], corners[a | bit]))
    return edges


def draw_3d(ax, views: list[DrawnView], grid: VolumeGrid) -> None:
    """Close-up perspective around the isocentre, to scale; the sources lie off the panel.

    Seen from the patient's anterior-left, the side the two sources are on, so both detectors
    show their source-facing sides.
    """
    for start, end in box_edges(grid.corners_world()):
        ax.plot(*np.stack([start, end]).T, color="0.35", lw=1.0)
    for view in views:
        colour = VIEW_COLOURS[view.name]
        outline = np.vstack([view.corners, view.corners[:1]])
        ax.plot(*outline.T, color=colour, lw=2.0)
        ax.add_collection3d(_detector_patch(view.corners, colour))
        stub = view.isocentre + RAY_STUB_MM * view.to_source  # the central ray starts here
        ax.plot(*np.stack([stub, view.centre]).T, color=colour, lw=1.2, ls="--")
        ax.quiver(*stub, *(-0.2 * RAY_STUB_MM * view.to_source), color=colour, arrow_length_ratio=0.4, lw=2.0)
        ax.text(
            *(stub + 0.08 * RAY_STUB_MM * view.to_source + [0, 0, 30]),
            f"from the {view.name} source\n({view.source_isocenter_mm:.0f} mm from the isocentre)",
            color=colour,
            fontsize=9,
            ha="center",
        )
        for corner in view.corners:
            start = view.source + (corner - view.source) * _depth_fraction(view, stub)
            ax.plot(*np.stack([start, corner]).T, color=colour, lw=0.6, alpha=0.5)
        ax.text(*(view.centre + 135 * view.v_axis), f"{view.name} detector", color=colour, fontsize=10, ha="center")
        _detector_axes_3d(ax, view)
    _world_triad_3d(ax, origin=np.array([-ZOOM_HALF_WIDTH_MM, -ZOOM_HALF_WIDTH_MM, ZOOM_HALF_WIDTH_MM]))
    limit = 1.5 * ZOOM_HALF_WIDTH_MM
    ax.set(
        xlim=(-limit, limit),
        ylim=(-limit, limit),
        zlim=(-limit, limit),
        xlabel="x (mm)",
        ylabel="y (mm)",
        zlabel="z (mm)",
    )
    ax.set_box_aspect((1, 1, 1), zoom=1.15)
    ax.view_init(elev=20, azim=125)
    ax.set_title(
        "(a) 3D close-up, to scale, seen from the patient's anterior-left\n"
        "(the sources are 925 mm from the isocentre, off the panel)",
        fontsize=10,
    )


def _detector_patch(corners: np.ndarray, colour: str) -> Poly3DCollection:
    return Poly3DCollection([corners], facecolor=colour, alpha=0.12, edgecolor="none")


def _depth_fraction(view: DrawnView, point: np.ndarray) -> float:
    """Fraction of the source-to-detector distance at which ``point``'s depth lies."""
    depth = np.dot(point - view.source, -view.to_source)
    detector_depth = np.dot(view.centre - view.source, -view.to_source)
    return depth / detector_depth


def _detector_axes_3d(ax, view: DrawnView) -> None:
    """Arrows for ``u`` (columns) and ``v`` (rows) at pixel (0, 0), and the pixel marked."""
    origin = view.corners[0]
    ax.scatter(*origin, color="k", s=30, depthshade=False)
    # Labels sit outside the detector: (0, 0) is the corner where u and v point into it.
    ax.text(
        *(origin - 12 * view.v_axis - 12 * view.u_axis),
        f"{view.name} (0,0)",
        fontsize=9,
        ha="right",
        color=VIEW_COLOURS[view.name],
    )
    ax.quiver(*origin, *(AXIS_ARROW_MM * view.u_axis), color="k", arrow_length_ratio=0.25, lw=1.8)
    ax.text(*(origin + 0.5 * AXIS_ARROW_MM * view.u_axis - 14 * view.v_axis), "u (cols)", fontsize=8, ha="center")
    ax.quiver(*origin, *(AXIS_ARROW_MM * view.v_axis), color="k", arrow_length_ratio=0.25, lw=1.8)
    ax.text(*(origin + 0.6 * AXIS_ARROW_MM * view.v_axis - 8 * view.u_axis), "v (rows)", fontsize=8, ha="right")


def _world_triad_3d(ax, origin: np.ndarray) -> None:
    labels = ("x (patient's right)", "y (anterior)", "z (superior)")
    for axis, label in zip(np.eye(3), labels):
        ax.quiver(*origin, *(70 * axis), color="darkgreen", arrow_length_ratio=0.2, lw=1.8)
        ax.text(*(origin + 80 * axis), label, color="darkgreen", fontsize=9)


def draw_plane(
    ax, views: list[DrawnView], grid: VolumeGrid, plane: tuple[int, int], flip_horizontal: bool, close_up: bool
) -> None:
    """An orthographic view onto the world plane ``plane`` (two axis indices: horizontal, vertical).

    ``flip_horizontal`` makes the horizontal world axis increase to the left (a viewer on the
    other side of the plane).
    """
    h, v = plane
    right = np.eye(3)[h] * (-1.0 if flip_horizontal else 1.0)
    out_of_page = np.cross(right, np.eye(3)[v])  # towards the viewer
    corners = grid.corners_world()
    ax.add_patch(
        plt.Rectangle(
            (corners[:, h].min(), corners[:, v].min()),
            np.ptp(corners[:, h]),
            np.ptp(corners[:, v]),
            fill=False,
            color="0.35",
            lw=1.0,
        )
    )
    for view in views:
        colour = VIEW_COLOURS[view.name]
        outline = np.vstack([view.corners, view.corners[:1]])
        face_on = abs(np.dot(view.to_source, out_of_page)) > 0.9
        ax.plot(outline[:, h], outline[:, v], color=colour, lw=2.5)
        if face_on:  # the source lies on the line of sight through the isocentre
            ax.fill(outline[:, h], outline[:, v], color=colour, alpha=0.08)
            side = "towards the viewer" if np.dot(view.to_source, out_of_page) > 0 else "behind the page"
            ax.annotate(
                f"{view.name} detector, face-on;\n{view.name} source {side}",
                (view.centre[h], view.centre[v]),
                textcoords="offset points",
                xytext=(0, -40),
                ha="center",
                color=colour,
                fontsize=8,
            )
        else:
            _rays_2d(ax, view, plane, colour, label_source=not close_up)
            _label_edge_on(ax, view, plane, right)
        if close_up:
            _detector_axes_2d(ax, view, plane, out_of_page)
    isocentre = views[0].isocentre
    ax.plot(isocentre[h], isocentre[v], "k+", ms=10)
    ax.set_aspect("equal")
    if close_up:
        ax.set_xlim(-ZOOM_HALF_WIDTH_MM, ZOOM_HALF_WIDTH_MM)
        ax.set_ylim(-ZOOM_HALF_WIDTH_MM, ZOOM_HALF_WIDTH_MM)
    if flip_horizontal:
        ax.invert_xaxis()
    names = ("x (mm, patient's right)", "y (mm, anterior)", "z (mm, superior)")
    ax.set_xlabel(names[h] + (", increasing to the left" if flip_horizontal else ""))
    ax.set_ylabel(names[v])
    ax.grid(alpha=0.25)


def _rays_2d(ax, view: DrawnView, plane: tuple[int, int], colour: str, label_source: bool) -> None:
    """Corner rays and the central ray of a view seen from the side, and its source."""
    h, v = plane
    for corner in view.corners:
        ax.plot([view.source[h], corner[h]], [view.source[v], corner[v]], color=colour, lw=0.6, alpha=0.5)
    ax.plot([view.source[h], view.centre[h]], [view.source[v], view.centre[v]], color=colour, lw=1.2, ls="--")
    ax.plot(view.source[h], view.source[v], "o", color=colour, ms=8)
    if label_source:
        position = ", ".join(f"{value + 0.0:.0f}" for value in np.round(view.source))
        ax.annotate(
            f"{view.name} source ({position}) mm",
            (view.source[h], view.source[v]),
            textcoords="offset points",
            xytext=(0, 12),
            ha="center",
            color=colour,
            fontsize=9,
        )


def _label_edge_on(ax, view: DrawnView, plane: tuple[int, int], right: np.ndarray) -> None:
    """Name a detector seen edge-on, just behind it (on the side away from its source)."""
    h, v = plane
    behind = -np.array([np.dot(view.to_source, right), view.to_source[v]])  # screen direction
    vertical = abs(behind[0]) > abs(behind[1])
    anchor = (view.centre + view.corners[2]) / 2.0  # half-way to pixel (rows-1, cols-1), clear of (0, 0)
    ax.annotate(
        f"{view.name} detector",
        (anchor[h], anchor[v]),
        textcoords="offset points",
        xytext=tuple(14 * behind),
        rotation=90 if vertical else 0,
        ha="center",
        va="center",
        color=VIEW_COLOURS[view.name],
        fontsize=9,
    )


def _detector_axes_2d(ax, view: DrawnView, plane: tuple[int, int], out_of_page: np.ndarray) -> None:
    """u / v arrows at pixel (0, 0), projected onto the plane; an axis along the line of sight is named."""
    h, v = plane
    origin = view.corners[0]
    ax.plot(origin[h], origin[v], "ks", ms=5)
    ax.annotate(
        f"{view.name} (0,0)",
        (origin[h], origin[v]),
        textcoords="offset points",
        xytext=(-8, 6),
        ha="right",
        fontsize=8,
        color=VIEW_COLOURS[view.name],
    )
    for axis, label in ((view.u_axis, "u (cols)"), (view.v_axis, "v (rows)")):
        toward_viewer = np.dot(axis, out_of_page)
        if abs(toward_viewer) > 0.9:
            where = "out of the page" if toward_viewer > 0 else "into the page"
            ax.annotate(
                f"{label} {where}",
                (origin[h], origin[v]),
                textcoords="offset points",
                xytext=(6, -14 if label.startswith("v") else -26),
                fontsize=7,
            )
            continue
        tip = origin + AXIS_ARROW_MM * axis
        ax.annotate(
            "",
            xy=(tip[h], tip[v]),
            xytext=(origin[h], origin[v]),
            arrowprops={"arrowstyle": "->", "lw": 1.6, "color": "k"},
        )
        ax.annotate(label, (tip[h], tip[v]), textcoords="offset points", xytext=(4, 4), fontsize=8)


def figure_title(pair: dict[str, ProjectionView], grid: VolumeGrid) -> str:
    """The geometry in words, read from the views and the grid."""
    carm = pair["AP"].carm
    angles = " and ".join(f"{name} (LAO/RAO {view.carm.lao_rao_deg:g}°)" for name, view in pair.items())
    rows, cols = pair["AP"].image_shape
    shape = " x ".join(map(str, grid.shape))
    spacing = " x ".join(f"{value:g}" for value in grid.spacing_mm)
    return (
        f"biplanar_pair(): {angles}, source-isocentre {carm.source_isocenter_mm:g} mm, "
        f"source-detector {carm.source_detector_mm:g} mm,\n{rows} x {cols} px at "
        f"{carm.pixel_spacing_mm[0]:g} mm; grey box: paper volume {shape} voxels at {spacing} mm "
        "(box of voxel centres), centred on the isocentre (+)"
    )


def make_figure(out: Path) -> None:
    """Draw the four panels and save them to ``out``."""
    pair = biplanar_pair()
    views = [drawn_view(view) for view in pair.values()]
    fig = plt.figure(figsize=(16, 15))
    draw_3d(fig.add_subplot(2, 2, 1, projection="3d"), views, PAPER_GRID)
    # Looking down -z from above the head: x to the right, y (anterior) up.
    top = fig.add_subplot(2, 2, 2)
    draw_plane(top, views, PAPER_GRID, (0, 1), flip_horizontal=False, close_up=False)
    top.set_title("(b) top view (looking down -z), to scale", fontsize=10)
    top_zoom = fig.add_subplot(2, 2, 3)
    draw_plane(top_zoom, views, PAPER_GRID, (0, 1), flip_horizontal=False, close_up=True)
    top_zoom.set_title("(c) top view, close-up around the isocentre (+)", fontsize=10)
    # Looking along +x from the patient's left, as the LAT source does: anterior on the left.
    side = fig.add_subplot(2, 2, 4)
    draw_plane(side, views, PAPER_GRID, (1, 2), flip_horizontal=True, close_up=True)
    side.set_title("(d) side view from the patient's left (looking along +x), close-up", fontsize=10)
    fig.suptitle(figure_title(pair, PAPER_GRID), fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img/geometry.png"), help="PNG to write.")
    make_figure(parser.parse_args().out)


if __name__ == "__main__":
    main()
