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

    python examples/off_model_residual.py [--pairs 20000] [--seed 0]

(about 20 s; ``--pairs``: random point pairs per femur for the correlation) prints two Markdown tables.
"""

from __future__ import annotations

import argparse

import numpy as np

from biplanar.data.femur_ssm import (
    OFF_MODEL_LENGTH_MM,
    area_weighted_vertex_normals,
    femur_shape_model,
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


def matern_correlation(distance_mm: np.ndarray) -> np.ndarray:
    scaled = np.sqrt(3.0) * distance_mm / OFF_MODEL_LENGTH_MM
    return (1.0 + scaled) * np.exp(-scaled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20000, help="random point pairs per femur")
    parser.add_argument("--seed", type=int, default=0, help="seed of the point pairs")
    arguments = parser.parse_args()
    femurs, faces = training_femurs(), femur_shape_model().faces
    rng = np.random.default_rng(arguments.seed)
    bins = np.asarray(DISTANCE_BINS_MM)
    products, counts, squares, points = np.zeros(len(bins) - 1), np.zeros(len(bins) - 1), 0.0, 0
    rows = []
    for index, femur in enumerate(femurs):
        normal = np.einsum("vd,vd->v", left_out_residual(femurs, index), area_weighted_vertex_normals(femur, faces))
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


if __name__ == "__main__":
    main()
