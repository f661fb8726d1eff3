"""Does a proximal femur's shape tell where its condyles point? Leave-one-out on the shape model's 26 real femurs.

Anteversion is read against the posterior condylar axis, which the registration grid and the
radiographs do not show (``examples/anteversion_floor.py``). A statistical shape model of whole
femurs could predict it: fit the model to the proximal femur that a registration recovers, and read
the condylar axis of the fitted whole femur. How well that works depends on how strongly the
proximal shape of real femurs correlates with their distal torsion, which only real femurs can
tell. This script asks it of the shape model's own 26 training femurs (:mod:`biplanar.data.femur_ssm`),
each left out in turn:

1. the left-out femur, in its own femur frame (condyles along ``+l``), is cut to its proximal
   ``--proximal-mm`` below the head centre (what the lite and paper grids show, about 150 mm) and
   sampled every 1.5 mm over its surface;
2. a shape model is built from the other 25 (each in its own femur frame; principal components);
3. its mean and first ``K`` modes are fitted to the proximal samples: rigid motion and mode weights
   by alternating least squares (weights with a standard normal prior and ``--noise-mm`` of surface
   noise), each sample paired with the closest model point (ICP) or, ``exact``, with its own vertex
   (the correspondence a perfect surface registration would give);
4. the anteversion of the left-out femur's true neck and shaft is read against the fitted femur's
   condylar axis and compared with its own; the population mean of the other 25 is the baseline.

Usage::

    python examples/anteversion_from_shape.py --modes 5 10 24

prints a Markdown table (about 1 min on this project's 2-core CPU).
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.spatial import cKDTree

from biplanar.data.femur_ssm import femur_shape_model, mesh_anatomy, surface_samples, training_femurs
from biplanar.evaluation.hip import version_deg

SURFACE_SPACING_MM = 1.5
FIT_ITERATIONS = 40


def rigid_fit(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(R, t)`` minimising ``sum |source @ R + t - target|^2`` over rotations (``(N, 3)`` each, Kabsch)."""
    source_centre, target_centre = source.mean(axis=0), target.mean(axis=0)
    u, _, vt = np.linalg.svd((source - source_centre).T @ (target - target_centre))
    rotation = u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt
    return rotation, target_centre - source_centre @ rotation


def principal_modes(femurs: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``((V, 3) mean, (count, V, 3) modes scaled by their sd)`` of ``(N, V, 3)`` femurs (mm)."""
    mean = femurs.mean(axis=0)
    _, singular, rows = np.linalg.svd((femurs - mean).reshape(len(femurs), -1), full_matrices=False)
    sd = singular / np.sqrt(len(femurs) - 1)
    return mean, rows[:count].reshape(count, *mean.shape) * sd[:count, None, None]


def fitted_femur(
    mean: np.ndarray,
    modes: np.ndarray,
    proximal: np.ndarray,
    samples: np.ndarray,
    noise_mm: float,
    partners: np.ndarray | None,
) -> np.ndarray:
    """``(V, 3)`` the whole femur of the model (``mean`` ``(V, 3)``, ``modes`` ``(K, V, 3)``) fitted
    to ``(P, 3)`` surface ``samples`` with its ``proximal`` ``(V,)`` vertices: each vertex paired
    with the closest sample, or with its row of ``partners`` ``(V, 3)`` (known correspondence)."""
    tree = cKDTree(samples)
    weights = np.zeros(len(modes))
    rotation, shift = np.eye(3), np.zeros(3)
    design = modes[:, proximal].reshape(len(modes), -1).T  # (3 P', K)
    for _ in range(FIT_ITERATIONS):
        shape = mean + np.einsum("k,kvd->vd", weights, modes)
        paired = samples[tree.query(shape[proximal] @ rotation + shift)[1]] if partners is None else partners[proximal]
        rotation, shift = rigid_fit(shape[proximal], paired)
        residual = ((paired - shift) @ rotation.T - mean[proximal]).ravel()
        precision = design.T @ design / noise_mm**2 + np.eye(len(modes))  # the prior: weights ~ N(0, 1)
        weights = np.linalg.solve(precision, design.T @ residual / noise_mm**2)
    return (mean + np.einsum("k,kvd->vd", weights, modes)) @ rotation + shift


def leave_one_out(femurs: np.ndarray, modes: int, proximal_mm: float, noise_mm: float, exact: bool):
    """``((N,) true, (N,) predicted, (N,) population mean of the others)`` anteversion (deg) of the
    ``(N, V, 3)`` femurs, each left out."""
    faces = femur_shape_model().faces
    anatomies = [mesh_anatomy(femur, faces) for femur in femurs]
    local = np.stack([anatomy.to_local(femur) for anatomy, femur in zip(anatomies, femurs)])
    truth = np.array([version_deg(a.neck_axis, a.shaft_axis, a.lateral) for a in anatomies])
    predicted, population = np.empty(len(femurs)), np.empty(len(femurs))
    for index, anatomy in enumerate(anatomies):
        others = np.arange(len(femurs)) != index
        mean, mode_vectors = principal_modes(local[others], modes)
        samples, _ = surface_samples(local[index], faces, SURFACE_SPACING_MM)
        samples = samples[samples[:, 2] > -proximal_mm]
        proximal = mean[:, 2] > -proximal_mm
        fitted = fitted_femur(mean, mode_vectors, proximal, samples, noise_mm, local[index] if exact else None)
        neck = anatomy.neck_axis @ anatomy.rotation  # in the femur frame: shaft +z
        predicted[index] = version_deg(neck, np.array([0.0, 0.0, 1.0]), mesh_anatomy(fitted, faces).lateral)
        population[index] = truth[others].mean()
    return truth, predicted, population


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", type=int, nargs="+", default=[5, 10, 24], help="modes fitted (at most 24)")
    parser.add_argument("--proximal-mm", type=float, default=130.0, help="the femur shown below the head centre")
    parser.add_argument("--noise-mm", type=float, default=1.0, help="surface noise of the fit's prior")
    arguments = parser.parse_args()
    femurs = training_femurs()
    print(f"26 real femurs, each left out; proximal {arguments.proximal_mm:g} mm; noise {arguments.noise_mm:g} mm")
    print(
        "| estimate | pairing | mean abs. error (deg) | median abs. (deg) | mean (deg) | sd (deg) | max abs. (deg)"
        " | correlation with truth |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    rows = []
    for modes in arguments.modes:
        for exact in (False, True):
            fit = (modes, arguments.proximal_mm, arguments.noise_mm, exact)
            truth, predicted, population = leave_one_out(femurs, *fit)
            rows.append((f"shape model, {modes} modes", "own vertex" if exact else "closest point", predicted))
    rows.append(("population mean of the other 25", "-", population))
    for name, pairing, estimate in rows:
        error = estimate - truth
        stats = (np.abs(error).mean(), np.median(np.abs(error)), error.mean(), error.std(), np.abs(error).max())
        cells = " | ".join(f"{value:.1f}" for value in stats)
        # The others' mean falls as the left-out femur's value rises: no reading to correlate.
        correlation = "-" if estimate is population else f"{np.corrcoef(estimate, truth)[0, 1]:.2f}"
        print(f"| {name} | {pairing} | {cells} | {correlation} |")


if __name__ == "__main__":
    main()
