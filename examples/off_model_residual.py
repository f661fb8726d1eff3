"""How far a real femur lies from a shape model built without it: the size of ``off_model_vertices``.

A femur of another cohort (another shape model's, a patient's) is no combination of this project's
26 femurs. How far off is it? Each of the shape model's 26 real femurs is left out in turn; a model
is built from the other 25 (their mean and 24 principal modes, in point correspondence) and the
left-out femur is projected onto it; what the projection misses is its residual. Per femur the table
gives the residual's root mean square along the surface normals (the part that moves the surface)
over the proximal femur (130 mm below the head centre: what the registration grid holds) and its
largest value there; then the correlation of that normal residual between two surface points
against their distance, pooled over the femurs, beside Matern's correlation (nu = 3/2) with
``OFF_MODEL_LENGTH_MM``, the field :func:`biplanar.data.femur_ssm.off_model_vertices` draws.

Usage::

    python examples/off_model_residual.py [--pairs 20000] [--seed 0] [--figure docs/img/off_model.png]

(about 10 s; ``--pairs``: random point pairs per femur for the correlation) prints two Markdown
tables; ``--figure`` also draws the proximal femur whose residual is the median one, coloured by
that residual along the normals, beside the same femur moved 1 and 2 mm off the model by
:func:`~biplanar.data.femur_ssm.off_model_vertices` (seed 0), seen from the front.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from biplanar.data.femur_ssm import (
    OFF_MODEL_LENGTH_MM,
    area_weighted_vertex_normals,
    femur_shape_model,
    off_model_vertices,
    training_femurs,
)

PROXIMAL_MM = 130.0  # below the head centre
DISTANCE_BINS_MM = (0.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0)


def left_out_residual(femurs: np.ndarray, index: int) -> np.ndarray:
    """``(V, 3)`` mm: femur ``index`` minus its projection onto the model of the others."""
    others = np.delete(femurs, index, axis=0)
    mean = others.mean(axis=0)
    _, _, modes = np.linalg.svd((others - mean).reshape(len(others), -1), full_matrices=False)
    modes = modes[: len(others) - 1]  # the last singular value is zero: centred data
    offset = (femurs[index] - mean).reshape(-1)
    return (offset - modes.T @ (modes @ offset)).reshape(-1, 3)


def draw_figure(path: Path, femur: np.ndarray, faces: np.ndarray, residual_along_normals: np.ndarray) -> None:
    """The proximal ``femur`` ``(V, 3)`` mm coloured by its left-out residual ``(V,)`` mm, and by two
    synthetic moves off the model; written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    normals = area_weighted_vertex_normals(femur, faces)
    panels = {"a real femur's left-out residual": residual_along_normals}
    for rms_mm in (1.0, 2.0):
        moved = off_model_vertices(femur, faces, rms_mm, seed=0)
        panels[f"off_model_vertices, {rms_mm:g} mm rms"] = np.einsum("vd,vd->v", moved - femur, normals)
    top = femur[:, 2].max()
    shown = faces[np.all(femur[faces, 2] > top - PROXIMAL_MM - 23.0, axis=1)]
    colour = plt.get_cmap("coolwarm")
    figure = plt.figure(figsize=(12, 6.5))
    for number, (title, values) in enumerate(panels.items()):
        axes = figure.add_subplot(1, len(panels), number + 1, projection="3d")
        face_values = values[shown].mean(axis=1)
        collection = Poly3DCollection(femur[shown], facecolors=colour(0.5 + face_values / 6.0), edgecolor="none")
        axes.add_collection3d(collection)
        low, high = femur[shown].reshape(-1, 3).min(0), femur[shown].reshape(-1, 3).max(0)
        middle, half = (low + high) / 2, (high - low).max() / 2
        for setter, centre in zip((axes.set_xlim, axes.set_ylim, axes.set_zlim), middle, strict=True):
            setter(centre - half, centre + half)
        axes.view_init(elev=0, azim=-90)  # from the front: the model's -y is anterior
        axes.set_box_aspect((1.0, 1.0, 1.0), zoom=1.6)
        axes.set_axis_off()
        axes.set_title(f"{title}\n(rms {np.sqrt(np.mean(values**2)):.2f} mm over the femur)", fontsize=10)
    mappable = plt.cm.ScalarMappable(cmap=colour, norm=matplotlib.colors.Normalize(-3.0, 3.0))
    figure.colorbar(mappable, ax=figure.axes, shrink=0.6, label="move along the outward normal (mm)")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90, bbox_inches="tight")


def matern_correlation(distance_mm: np.ndarray) -> np.ndarray:
    scaled = np.sqrt(3.0) * distance_mm / OFF_MODEL_LENGTH_MM
    return (1.0 + scaled) * np.exp(-scaled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20000, help="random point pairs per femur")
    parser.add_argument("--seed", type=int, default=0, help="seed of the point pairs")
    parser.add_argument("--figure", type=Path, default=None, help="also draw the median femur's residual here")
    arguments = parser.parse_args()
    femurs, faces = training_femurs(), femur_shape_model().faces
    rng = np.random.default_rng(arguments.seed)
    bins = np.asarray(DISTANCE_BINS_MM)
    products, counts, squares, points = np.zeros(len(bins) - 1), np.zeros(len(bins) - 1), 0.0, 0
    rows, residuals = [], []
    for index, femur in enumerate(femurs):
        normal = np.einsum("vd,vd->v", left_out_residual(femurs, index), area_weighted_vertex_normals(femur, faces))
        residuals.append(normal)
        proximal = femur[:, 2] > femur[:, 2].max() - PROXIMAL_MM - 23.0  # the head's top is ~23 mm above its centre
        normal, where = normal[proximal], femur[proximal]
        rows.append((index, np.sqrt(np.mean(normal**2)), np.abs(normal).max()))
        first, second = rng.integers(0, len(where), (2, arguments.pairs))
        which = np.digitize(np.linalg.norm(where[first] - where[second], axis=1), bins) - 1
        inside = which < len(bins) - 1
        np.add.at(products, which[inside], (normal[first] * normal[second])[inside])
        np.add.at(counts, which[inside], 1)
        squares, points = squares + float(np.sum(normal**2)), points + len(normal)
    rms = np.array([row[1] for row in rows])
    print("| femur left out | residual rms along the normals, proximal (mm) | largest (mm) |")
    print("|---:|---:|---:|")
    for index, value, largest in rows:
        print(f"| {index} | {value:.2f} | {largest:.2f} |")
    print(f"| all 26 | median {np.median(rms):.2f}, range {rms.min():.2f}-{rms.max():.2f} | |")
    print()
    print("| distance (mm) | correlation of the residual | Matern 3/2 at the bin's centre |")
    print("|---|---:|---:|")
    correlation = products / counts / (squares / points)
    for low, high, value in zip(bins[:-1], bins[1:], correlation, strict=True):
        print(f"| {low:.0f}-{high:.0f} | {value:.2f} | {matern_correlation(np.array((low + high) / 2)):.2f} |")
    if arguments.figure is not None:
        median = int(np.argsort(rms)[len(rms) // 2])
        draw_figure(arguments.figure, femurs[median], faces, residuals[median])


if __name__ == "__main__":
    main()
