"""Rigid pose estimation accuracy, as SOPI's Tables 1 and 3 (Chen et al. 2023): Opt-NCC, Opt-NGI, Opt-GC (and SOPI).

Usage::

    python benchmarks/pose_eval.py --out DIR [--datasets lumbar femur] [--n 10] [--seed 0]
        [--methods opt-gc opt-ncc opt-ngi] [--rtpi CKPT --fine CKPT]

For each dataset, ``n`` cases: a CT, a true pose ``A`` (rotations ``rx, ry, rz ~ N(0, sigma_r)``
each, translations ``tx, ty, tz ~ N(0, sigma_t)`` each, about the CT centre; :mod:`biplanar.geometry.se3`),
an AP and a LAT radiograph rendered by ProST at ``A`` (line integrals, 256 samples per ray, no
noise), and every method started at the identity. Datasets:

- ``lumbar``: the real CT ``tests/data/real_ct/lumbar_pelvis_ct.nii.gz`` (3 mm voxels, abdomen to
  hips), the same CT in every case; detectors 128 x 128 of 3 mm pixels (source-detector 1000 mm,
  source-isocentre 925 mm, isocentre = the CT centre); ``sigma_r = 5 deg``, ``sigma_t = 10 mm``;
  optimisation levels 12 and 6 mm.
- ``femur``: femur phantoms ``make_subject(seed, "lite")`` (proximal femur, pelvis piece, soft
  tissue; 1.33 x 1.33 x 2 mm voxels), a new subject per case; the ``lite`` detectors (112 x 80 of
  1.86 mm); ``sigma_r = 5 deg``, ``sigma_t = 5 mm`` (a smaller anatomy); levels 6 and 3 mm.

The optimisers' CMA-ES step sizes are the dataset's ``sigma_r`` / ``sigma_t`` (the expected error
of the start). Errors: rotation = geodesic angle (deg), translation = displacement of the CT
centre (mm), per axis = |difference of the Euler parameters| (deg, mm); success = both < 3.
Writes ``cases.csv`` (one row per case and method) and ``summary.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from biplanar.errors import InputError
from biplanar.geometry.presets import biplanar_pair
from biplanar.geometry.projection import ProjectionView
from biplanar.geometry.se3 import matrix_to_rigid_params, pose_errors, rigid_params_to_matrix
from biplanar.geometry.volume_grid import VolumeGrid
from biplanar.io.atomic import atomic_write_text
from biplanar.layers.prost import ProST
from biplanar.physics.attenuation import hu_to_mu
from biplanar.pose.baselines import METHODS, OptimisationConfig
from biplanar.pose.estimate import SopiCheckpoints, estimate

REAL_CT = Path(__file__).resolve().parents[1] / "tests" / "data" / "real_ct" / "lumbar_pelvis_ct.nii.gz"
SUCCESS_DEG, SUCCESS_MM = 3.0, 3.0
TARGET_SAMPLES = 256
TARGET_MARGIN_MM = 60.0


@dataclass(frozen=True)
class Dataset:
    """How one dataset's cases are made (module doc)."""

    name: str
    sigma_deg: float
    sigma_mm: float
    levels_mm: tuple[float, ...]
    image_shape: tuple[int, int]
    pixel_mm: float


DATASETS = {
    "lumbar": Dataset("lumbar", 5.0, 10.0, (12.0, 6.0), (128, 128), 3.0),
    "femur": Dataset("femur", 5.0, 5.0, (6.0, 3.0), (112, 80), 1.86),
}


def load_ct(dataset: Dataset, case: int) -> tuple[torch.Tensor, VolumeGrid]:
    """``(1, 1, I, J, K)`` attenuation (1/mm) and its grid for ``case``."""
    if dataset.name == "lumbar":
        from biplanar.io.volumes import read_volume

        data, grid = read_volume(REAL_CT)
        return hu_to_mu(torch.from_numpy(data))[None, None], grid
    from biplanar.data.phantom import make_subject

    subject = make_subject(10_000 + case, "lite")
    return hu_to_mu(torch.from_numpy(subject.ct_hu))[None, None], subject.grid


def sample_pose(dataset: Dataset, rng: np.random.Generator, centre: np.ndarray) -> torch.Tensor:
    """``(4, 4)`` float64 true pose: N(0, sigma) Euler angles and translations about ``centre``."""
    rotation = np.radians(rng.normal(0.0, dataset.sigma_deg, 3))
    translation = rng.normal(0.0, dataset.sigma_mm, 3)
    params = torch.tensor(np.concatenate([rotation, translation]))
    return rigid_params_to_matrix(params, torch.as_tensor(centre))


def radiographs_at(volume: torch.Tensor, grid: VolumeGrid, views: dict[str, ProjectionView],
                   pose: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {name: ProST(view, grid, TARGET_SAMPLES, TARGET_MARGIN_MM)(volume, pose[None].float())[0, 0]
                for name, view in views.items()}


def score(estimated: torch.Tensor, truth: torch.Tensor, centre: np.ndarray) -> dict[str, float]:
    """Rotation / translation errors and per-axis errors of an estimate."""
    centre_t = torch.as_tensor(centre)
    rotation_deg, translation_mm = pose_errors(estimated, truth, centre_t)
    axes = (matrix_to_rigid_params(estimated, centre_t) - matrix_to_rigid_params(truth, centre_t)).abs()
    row = {"rotation_deg": float(rotation_deg), "translation_mm": float(translation_mm)}
    for index, axis in enumerate(("rx", "ry", "rz")):
        row[f"{axis}_deg"] = math.degrees(float(axes[index]))
    for index, axis in enumerate(("tx", "ty", "tz")):
        row[f"{axis}_mm"] = float(axes[3 + index])
    row["success"] = float(row["rotation_deg"] < SUCCESS_DEG and row["translation_mm"] < SUCCESS_MM)
    return row


def run_dataset(dataset: Dataset, n: int, seed: int, methods: list[str], checkpoints: SopiCheckpoints | None,
                log) -> list[dict]:
    rng = np.random.default_rng([seed, list(DATASETS).index(dataset.name)])  # independent poses per dataset
    config = OptimisationConfig(levels_mm=dataset.levels_mm, sigma_deg=dataset.sigma_deg, sigma_mm=dataset.sigma_mm)
    rows = []
    for case in range(n):
        volume, grid = load_ct(dataset, case)
        views = biplanar_pair(image_shape=dataset.image_shape, pixel_spacing_mm=(dataset.pixel_mm,) * 2,
                              isocenter_mm=grid.centre_world)
        truth = sample_pose(dataset, rng, grid.centre_world)
        radiographs = radiographs_at(volume, grid, views, truth)
        rows.append({"dataset": dataset.name, "case": case, "method": "initial", "time_s": 0.0,
                     **score(torch.eye(4, dtype=torch.float64), truth, grid.centre_world)})
        for method in methods:
            started = time.perf_counter()
            try:
                found, _ = estimate(method, volume, grid, radiographs, views, None, config, checkpoints)
            except InputError as error:
                log(f"{dataset.name} case {case} {method}: failed: {error}")
                continue
            row = {"dataset": dataset.name, "case": case, "method": method,
                   "time_s": time.perf_counter() - started, **score(found, truth, grid.centre_world)}
            rows.append(row)
            log(f"{dataset.name} case {case} {method}: {row['rotation_deg']:.2f} deg, "
                f"{row['translation_mm']:.2f} mm, {row['time_s']:.1f} s")
    return rows


COLUMNS = ["dataset", "case", "method", "rotation_deg", "translation_mm", "rx_deg", "ry_deg", "rz_deg",
           "tx_mm", "ty_mm", "tz_mm", "success", "time_s"]


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: (f"{value:.4f}" if isinstance(value, float) else value) for key, value in row.items()})
    return buffer.getvalue()


def summary_table(rows: list[dict], dataset: Dataset) -> str:
    """Markdown table: per method mean +- std errors, failure rate, time, per-axis mean errors."""
    lines = [f"### {dataset.name} (sigma_r {dataset.sigma_deg:g} deg, sigma_t {dataset.sigma_mm:g} mm per axis; "
             f"levels {', '.join(f'{s:g}' for s in dataset.levels_mm)} mm)", "",
             "| method | n | rotation (deg) | translation (mm) | failure rate | time (s) | rx / ry / rz (deg) "
             "| tx / ty / tz (mm) |", "|---|---|---|---|---|---|---|---|"]
    methods = list(dict.fromkeys(row["method"] for row in rows))
    for method in methods:
        chosen = [row for row in rows if row["method"] == method]

        def values(key):
            return np.array([row[key] for row in chosen])

        def mean_std(key):
            return f"{values(key).mean():.2f} ± {values(key).std():.2f}"

        per_axis_r = " / ".join(f"{values(f'{a}_deg').mean():.2f}" for a in ("rx", "ry", "rz"))
        per_axis_t = " / ".join(f"{values(f'{a}_mm').mean():.2f}" for a in ("tx", "ty", "tz"))
        failure = 1.0 - values("success").mean()
        time_s = "–" if method == "initial" else f"{values('time_s').mean():.1f}"
        lines.append(f"| {method} | {len(chosen)} | {mean_std('rotation_deg')} | {mean_std('translation_mm')} | "
                     f"{failure:.0%} | {time_s} | {per_axis_r} | {per_axis_t} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder: cases.csv, summary.md")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--n", type=int, default=10, help="cases per dataset")
    parser.add_argument("--seed", type=int, default=0, help="seed of the true poses")
    parser.add_argument("--methods", nargs="+", default=sorted(METHODS),
                        choices=[*sorted(METHODS), "sopi", "sopi+opt"])
    parser.add_argument("--rtpi", type=Path, help="SOPI RTPI checkpoint (methods sopi, sopi+opt)")
    parser.add_argument("--fine", type=Path, help="SOPI fine checkpoint (methods sopi, sopi+opt)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    checkpoints = SopiCheckpoints(args.rtpi, args.fine) if args.rtpi and args.fine else None

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    rows, tables = [], []
    for name in args.datasets:
        dataset_rows = run_dataset(DATASETS[name], args.n, args.seed, args.methods, checkpoints, log)
        rows += dataset_rows
        tables.append(summary_table(dataset_rows, DATASETS[name]))
        atomic_write_text(args.out / "cases.csv", to_csv(rows))
    header = (f"## Pose estimation ({args.n} cases per dataset, seed {args.seed}, torch "
              f"{torch.__version__}, {torch.get_num_threads()} thread(s))\n\n"
              f"Command: `python benchmarks/pose_eval.py {' '.join(sys.argv[1:])}`. Failure: rotation ≥ "
              f"{SUCCESS_DEG:g} deg or translation ≥ {SUCCESS_MM:g} mm. Errors: mean ± std over the cases.\n")
    markdown = header + "\n" + "\n\n".join(tables) + "\n"
    atomic_write_text(args.out / "summary.md", markdown)
    print(markdown)


if __name__ == "__main__":
    main()
