"""Validation metrics of SOPI checkpoints on a config's validation pairs (what ``metrics.csv`` logs).

Scores networks that were not trained on a config's pairs, e.g. the ``sopi_lite`` networks before
their fine-tuning on clinic-processed X-rays, on the pairs that fine-tuning validated on. RTPI:
the validation loss and the mean rotation (deg) and translation (mm) errors of its pose; fine: the
loss and the mean cosines between the descent direction and the direction to the truth. The
numbers of the bundled ``sopi_lite`` README (step 0 of the clinical fine-tuning)::

    git show 3078076:src/biplanar/resources/models/sopi_lite/rtpi.pt > /tmp/rtpi_before.pt
    git show 3078076:src/biplanar/resources/models/sopi_lite/fine.pt > /tmp/fine_before.pt
    python examples/sopi_validation.py --config sopi_lite_clinical --rtpi /tmp/rtpi_before.pt --fine /tmp/fine_before.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from biplanar.training.pose_trainer import validate_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="SOPI config YAML or preset name")
    parser.add_argument("--rtpi", type=Path, help="an RTPI checkpoint")
    parser.add_argument("--fine", type=Path, help="a fine-registration checkpoint")
    args = parser.parse_args()
    for network, checkpoint in (("rtpi", args.rtpi), ("fine", args.fine)):
        if checkpoint is not None:
            metrics = validate_checkpoint(args.config, network, checkpoint)
            print(f"{network} {checkpoint}: " + ", ".join(f"{name} {value:.4f}" for name, value in metrics.items()))


if __name__ == "__main__":
    main()
