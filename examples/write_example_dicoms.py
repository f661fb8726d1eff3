"""Write a worked example of the clinical route: two DICOM radiographs of a held-out phantom.

The files are what a clinic hands over (docs/clinical.md): transmission counts (Pixel Intensity
Relationship LIN, MONOCHROME1) on a 448 x 320 detector at 0.6 mm, the geometry in the tags (View
Position AP and RL, or LL for a left hip; Distance Source to Detector / to Patient; Imager Pixel
Spacing; Patient Orientation; Image Laterality); no geometry file, no masks. The true label map is
written beside them, so the registration can be scored. Usage::

    python examples/write_example_dicoms.py --out clinic_example [--side left] [--seed 7]
    biplanar geometry --from-dicom clinic_example/AP.dcm clinic_example/LAT.dcm --out clinic_example/geometry.json
    biplanar register --ap clinic_example/AP.dcm --lat clinic_example/LAT.dcm --out clinic_example/result \\
        --truth-labels clinic_example/labels.nii.gz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from biplanar.data.clinical import write_clinical_dicoms
from biplanar.data.simulate import SimulationConfig, simulate_case, subject_seed
from biplanar.io.volumes import write_volume

EXAMPLE_DATASET_SEED = 4242  # a dataset seed no training set used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for AP.dcm, LAT.dcm and labels.nii.gz")
    parser.add_argument("--side", choices=("right", "left"), default="right", help="the hip imaged")
    parser.add_argument("--seed", type=int, default=0, help="which held-out phantom (index into the example seed)")
    arguments = parser.parse_args()
    case = simulate_case(subject_seed(EXAMPLE_DATASET_SEED, arguments.seed), SimulationConfig(preset="lite"))
    ct, labels = case.ct_hu, case.labels
    if arguments.side == "left":  # the phantom mirrored through the grid's mid-sagittal plane
        ct, labels = np.ascontiguousarray(ct[::-1]), np.ascontiguousarray(labels[::-1])
    files = write_clinical_dicoms(arguments.out, ct, case.grid, arguments.side)
    write_volume(arguments.out / "labels.nii.gz", labels, case.grid)
    print(f"wrote {files['AP']}, {files['LAT']} and {arguments.out / 'labels.nii.gz'}")


if __name__ == "__main__":
    main()
