"""Evaluation of registrations: segmentation overlap, surface distances in mm, image similarity; rigid pose
accuracy (:mod:`biplanar.evaluation.pose_accuracy`)."""

from biplanar.evaluation.metrics import (
    assd_mm,
    dice,
    hd95_mm,
    image_ssim,
    jaccard,
    jaccard_from_dice,
    segmentation_metrics,
)

__all__ = [
    "assd_mm",
    "dice",
    "hd95_mm",
    "image_ssim",
    "jaccard",
    "jaccard_from_dice",
    "segmentation_metrics",
]
