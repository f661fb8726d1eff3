"""Render DRRs of a real CT and draw them with orientation labels (docs/img/drr_real_ct_<view>.png).

The DRRs come from ``biplanar.drr`` (:func:`biplanar.api.drr`), the function behind ``biplanar drr``.

The edge labels are not typed in: they are read from the view's projection matrix (the world
direction in which ``u`` and ``v`` grow, ``ProjectionView.pixel_rays()``), so they stay right for
any geometry file.

Usage::

    python docs/figures/real_ct_drrs.py --ct src/biplanar/resources/real_ct/lumbar_pelvis_ct.nii.gz \\
        --geometry examples/geometry_real_ct.json --out-dir docs/img
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from biplanar.api import drr
from biplanar.geometry import ProjectionView
from biplanar.io.geometry_file import read_geometry
from biplanar.io.volumes import read_volume

# World RAS+ axes (x, y, z) and the patient directions their + and - ends point to.
DIRECTION_NAMES = (("Right", "Left"), ("Anterior", "Posterior"), ("Superior", "Inferior"))
# Display window: percentiles of the pixels the body covers (those above a fraction of the
# maximum). Soft tissue fills most of the range of a line integral, so the lower part is clipped
# to black to show the bones; the colour bar keeps the values.
BODY_FRACTION_OF_MAX = 0.25
DISPLAY_PERCENTILES = (40.0, 99.9)


def direction_name(vector_world: np.ndarray) -> str:
    """Patient direction of a world vector ``(3,)``: its largest component(s), e.g. ``"Left"``."""
    unit = vector_world / np.linalg.norm(vector_world)
    order = np.argsort(-np.abs(unit))
    names = [DIRECTION_NAMES[axis][0 if unit[axis] > 0 else 1] for axis in order[:2] if abs(unit[axis]) > 0.3]
    return "-".join(names)


def image_axes_world(view: ProjectionView) -> tuple[np.ndarray, np.ndarray]:
    """``(3,)`` world directions in which the column index ``u`` and the row index ``v`` grow.

    Neighbouring pixels' rays at the same depth differ by ``M^-1 [1, 0, 0]`` (``u``) and
    ``M^-1 [0, 1, 0]`` (``v``), read here from ``pixel_rays()``.
    """
    rays = view.pixel_rays().numpy()  # (rows, cols, 3), world mm per mm of depth
    return rays[0, 1] - rays[0, 0], rays[1, 0] - rays[0, 0]


def describe(view: ProjectionView) -> str:
    """Two lines of geometry for the title."""
    rows, cols = view.image_shape
    source = f"source on the patient's {direction_name(-view.principal_direction).lower()} side"
    if view.carm is None:
        return f"{source}; {rows} x {cols} px, projection matrix"
    carm = view.carm
    return (
        f"{source}; LAO/RAO {carm.lao_rao_deg:g}°, cranio-caudal {carm.cranio_caudal_deg:g}°;\n"
        f"source-isocentre {carm.source_isocenter_mm:g} mm, source-detector {carm.source_detector_mm:g} mm, "
        f"{rows} x {cols} px at {carm.pixel_spacing_mm[0]:g} x {carm.pixel_spacing_mm[1]:g} mm"
    )


def draw_drr(image: np.ndarray, view: ProjectionView, title: str, out: Path) -> None:
    """Save a DRR ``(rows, cols)`` (line integral, dimensionless) with its orientation labels."""
    u_world, v_world = image_axes_world(view)
    fig, ax = plt.subplots(figsize=(8.2, 7.6))
    # Row 0 at the top (origin="upper"): the radiograph as stored, (0, 0) top-left.
    low, high = np.percentile(image[image > BODY_FRACTION_OF_MAX * image.max()], DISPLAY_PERCENTILES)
    shown = ax.imshow(
        image,
        cmap="gray",
        origin="upper",
        aspect=np.linalg.norm(v_world) / np.linalg.norm(u_world),
        interpolation="nearest",
        vmin=low,
        vmax=high,
    )
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, extend="both")
    bar.set_label("line integral of mu (dimensionless)")
    low_pct, high_pct = DISPLAY_PERCENTILES
    ax.text(
        1.0,
        -0.09,
        f"window {low:.2f}-{high:.2f}: {low_pct:g}th-{high_pct:g}th percentile of the pixels "
        f"above {BODY_FRACTION_OF_MAX:g} x max",
        transform=ax.transAxes,
        ha="right",
        va="top",
        fontsize=8,
    )
    edges = (  # inside the image, in axes fractions: the left, right, top and bottom edges
        ((0.015, 0.5), "left", "center", direction_name(-u_world)),
        ((0.985, 0.5), "right", "center", direction_name(u_world)),
        ((0.5, 0.985), "center", "top", direction_name(-v_world)),
        ((0.5, 0.015), "center", "bottom", direction_name(v_world)),
    )
    for (x, y), horizontal, vertical, name in edges:
        ax.text(
            x,
            y,
            name,
            transform=ax.transAxes,
            ha=horizontal,
            va=vertical,
            fontsize=12,
            fontweight="bold",
            color="gold",
            bbox={"facecolor": "black", "alpha": 0.6, "lw": 0},
        )
    ax.set_xlabel("u (column)")
    ax.set_ylabel("v (row)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def render_views(ct: Path, geometry: Path, out_dir: Path, view_names: list[str]) -> None:
    """Render each named view with ``biplanar.drr`` and write ``drr_real_ct_<view>.png``."""
    _, grid = read_volume(ct)
    views = read_geometry(geometry, default_isocenter_mm=grid.centre_world)
    with tempfile.TemporaryDirectory() as scratch:
        for name in view_names:
            image = drr(ct, geometry, Path(scratch) / f"{name}.npy", view=name)
            title = f"{name} DRR of {ct.name} ({geometry.name})\n{describe(views[name])}"
            out = out_dir / f"drr_real_ct_{name}.png"
            draw_drr(image, views[name], title, out)
            print(f"{out}: {image.shape}, line integral {image.min():.2f} .. {image.max():.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", type=Path, required=True, help="CT volume in HU (.nii/.nii.gz).")
    parser.add_argument("--geometry", type=Path, required=True, help="geometry.json.")
    parser.add_argument("--out-dir", type=Path, default=Path("docs/img"), help="Folder for the PNGs.")
    parser.add_argument("--views", nargs="+", default=["AP", "LAT"], help="View names to render.")
    args = parser.parse_args()
    render_views(args.ct, args.geometry, args.out_dir, args.views)


if __name__ == "__main__":
    main()
