"""Differentiable layers (no file I/O): ProST, inv-ProST, warping, velocity-field integration."""

from biplanar.layers.inv_prost import InverseProST
from biplanar.layers.prost import ProST, beam_depth_range
from biplanar.layers.velocity import VelocityIntegrator, compose_affine_displacement
from biplanar.layers.warp import SpatialTransformer, affine_displacement, warp_labels

__all__ = [
    "InverseProST",
    "ProST",
    "SpatialTransformer",
    "VelocityIntegrator",
    "affine_displacement",
    "beam_depth_range",
    "compose_affine_displacement",
    "warp_labels",
]
