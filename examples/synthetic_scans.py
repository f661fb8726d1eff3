"""Write a folder of synthetic hip CTs with TotalSegmentator-v2 femur labels (stand-ins for real scans).

Each scan is a shape-model subject's body scene on 0.8 x 0.8 x 1.0 mm voxels
(:mod:`biplanar.data.synthetic_ct`), saved as ``scan_<i>.nii.gz`` + ``scan_<i>_labels.nii.gz``:
the input ``biplanar simulate --from-ct`` expects. Usage (docs/own_data.md)::

    python examples/synthetic_scans.py --n 40 --seed 2024 --out data/scans

Re-running it keeps the pairs already written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from biplanar.data.synthetic_ct import write_synthetic_scans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, required=True, help="number of scans")
    parser.add_argument("--seed", type=int, required=True, help="scan i is subject subject_seed(seed, i)")
    parser.add_argument("--shapes", choices=("ssm", "phantom"), default="ssm", help="the femurs")
    parser.add_argument("--out", type=Path, required=True, help="the folder of scans")
    arguments = parser.parse_args()
    if arguments.n < 1 or arguments.seed < 0:
        parser.error("--n >= 1 and --seed >= 0 expected")
    paths = write_synthetic_scans(arguments.out, arguments.n, arguments.seed, arguments.shapes)
    print(f"{len(paths)} scans in {arguments.out}")


if __name__ == "__main__":
    main()
