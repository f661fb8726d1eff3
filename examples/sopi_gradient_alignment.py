"""How well ``-dL_N/dtheta`` points at the true pose, for the fine network's starting choices and a checkpoint.

On the validation pairs of a SOPI config (starts offset by its fine sigmas), prints the mean cosine
between the descent direction of a distance and the geodesic direction to the truth, rotation and
translation parts (1: straight at the truth; 0: chance), for:

- ``intensity MSE``: ``L_N`` on the DRR and X-ray themselves (no network);
- ``independent init``: two encoders initialised independently (the fixed one re-drawn);
- ``copied init, eval BN`` and ``copied init, train BN``: the shipped initialisation (the fixed
  encoder a copy of the moving one), batch norm frozen as in training, or on batch statistics
  (pairs of two training samples, as a training step sees them);
- ``--checkpoint``: a trained fine network (eval mode), when given.

The numbers of docs/pose.md section 8 and the bundled model's README::

    python examples/sopi_gradient_alignment.py --config sopi_lite \\
        --checkpoint src/biplanar/resources/models/sopi_lite/fine.pt
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

from biplanar.models.sopi import build_network, load_sopi_config
from biplanar.models.sopi.encoder import CompositeEncoder
from biplanar.pose.sopi import load_sopi_network
from biplanar.training.pose_data import TRAIN_STREAM, VALIDATION_STREAM, PosePairSimulator
from biplanar.training.pose_trainer import fine_forward


class IntensityDistance(nn.Module):
    """``L_N`` on the images themselves: one level of features, the image."""

    def forward(self, drr: Tensor, radiograph: Tensor) -> tuple[tuple[Tensor], tuple[Tensor]]:
        return (drr,), (radiograph,)


def mean_cosines(
    network: nn.Module, simulator: PosePairSimulator, stream: int, batches: int, batch_size: int
) -> tuple[float, float]:
    """Mean rotation and translation cosines over ``batches`` batches of a stream."""
    rotation = translation = 0.0
    for index in range(batches):
        parts = fine_forward(network, simulator, simulator.sample(stream, index, batch_size), create_graph=False)
        rotation += float(parts["cos_rotation"])
        translation += float(parts["cos_translation"])
    return rotation / batches, translation / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="sopi_lite", help="SOPI config YAML or preset")
    parser.add_argument("--checkpoint", default=None, help="a trained fine network (biplanar train-pose)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed of the initialisations (training: 0)")
    args = parser.parse_args()
    config = load_sopi_config(args.config)
    simulator = PosePairSimulator(config)
    pairs = config.data.validation_samples
    torch.manual_seed(args.seed)
    copied = build_network(config, "fine")
    independent = build_network(config, "fine")
    independent.moving.load_state_dict(copied.moving.state_dict())
    independent.fixed = CompositeEncoder(config.fine)  # a fresh draw, unlike the shipped copy
    # name, network, batch norm on batch statistics (train mode), stream, batches, batch size
    rows = [
        ("intensity MSE", IntensityDistance(), False, VALIDATION_STREAM, pairs, 1),
        ("independent init", independent, False, VALIDATION_STREAM, pairs, 1),
        ("copied init, eval BN", copied, False, VALIDATION_STREAM, pairs, 1),
        ("copied init, eval BN (training pairs)", copied, False, TRAIN_STREAM, pairs // 2, 2),
        ("copied init, train BN (training pairs)", copied, True, TRAIN_STREAM, pairs // 2, 2),
    ]
    if args.checkpoint is not None:
        rows.append(
            (
                f"trained: {args.checkpoint}",
                load_sopi_network(args.checkpoint, "fine").network,
                False,
                VALIDATION_STREAM,
                pairs,
                1,
            )
        )
    print(f"{config.name}: mean cos(-dL_N/dtheta, geodesic direction), rotation / translation")
    for name, network, batch_statistics, stream, batches, batch_size in rows:
        network.train(batch_statistics)
        rotation, translation = mean_cosines(network, simulator, stream, batches, batch_size)
        print(f"{name:45s} {rotation:6.2f} / {translation:5.2f}")


if __name__ == "__main__":
    main()
