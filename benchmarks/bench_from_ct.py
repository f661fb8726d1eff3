"""The real-CT route's speed: a scan-size CT folder to a dataset and an atlas.

Usage::

    python benchmarks/bench_from_ct.py [--scans 2] [--workers 1] [--out FILE]

Prints a markdown section (the one in ``docs/own_data.md``, "Time per step") to stdout, or writes
it to ``--out``.

The CTs stand in for clinical hip scans: synthetic scans of shape-model subjects
(:mod:`biplanar.data.synthetic_ct`: the body scene on 0.8 x 0.8 x 1.0 mm voxels, int16 HU, with
TotalSegmentator-v2 labels of both femurs), written as NIfTI.
Timed, wall clock on this machine:

1. ``simulate --from-ct`` on the folder (both femurs of each scan, ``--workers`` processes),
   lite preset, body scene and grid scene, line-integral mode; per femur;
2. ``atlas --from-ct`` of one femur (lite preset).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path

import nibabel as nib
from harness import publish

from biplanar.data.ct_atlas import atlas_from_ct
from biplanar.data.from_ct import simulate_from_ct
from biplanar.data.simulate import SimulationConfig
from biplanar.data.synthetic_ct import SCAN_SPACING_MM, write_synthetic_scans

RIGHT = 76


def read_volume_shape(path: Path) -> nib.Nifti1Image:
    """The NIfTI header's image (its ``shape``), without reading the voxels."""
    return nib.load(str(path))


def timed(function) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def report(scans: int, workers: int) -> str:
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        folder = root / "cts"
        folder.mkdir()
        shapes = [ct.shape for ct in map(read_volume_shape, write_synthetic_scans(folder, scans, 100, progress=False))]
        rows = []
        for scene in ("body", "grid"):
            config = SimulationConfig(preset="lite", scene=scene)
            seconds, summary = timed(
                lambda config=config, scene=scene: simulate_from_ct(
                    folder, root / scene, 1, config, workers=workers, progress=False
                )
            )
            femurs = len(summary.written)
            rows.append(
                f"| `simulate --from-ct --scene {scene}` (lite, {workers} worker(s)) | {femurs} femurs "
                f"({len(summary.skipped)} skipped) | {seconds:.1f} s | {seconds / max(femurs, 1):.1f} s |"
            )
        first = folder / "scan_000"
        seconds, _ = timed(
            lambda: atlas_from_ct(f"{first}.nii.gz", f"{first}_labels.nii.gz", RIGHT, "right", root / "atlas", "lite")
        )
        rows.append(f"| `atlas --from-ct` (lite) | 1 femur | {seconds:.1f} s | {seconds:.1f} s |")
    shape = " x ".join(map(str, shapes[0]))
    return "\n".join(
        [
            f"Measured {datetime.date.today()} on {platform.machine()}, {os.cpu_count()} cores, "
            f"`python benchmarks/bench_from_ct.py --scans {scans} --workers {workers}`: {scans} scan(s) of "
            f"{shape} voxels ({' x '.join(map(str, SCAN_SPACING_MM))} mm, int16 NIfTI).",
            "",
            "| step | work | wall | per femur |",
            "| --- | --- | --- | --- |",
            *rows,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path)
    arguments = parser.parse_args()
    publish(report(arguments.scans, arguments.workers), arguments.out, echo=True)


if __name__ == "__main__":
    main()
