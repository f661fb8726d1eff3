"""SOPI (Chen et al. 2023): rigid CT-to-X-ray pose by an initialisation network (RTPI) and a learned
iterative fine registration on embedded features (two composite-connection encoders)."""

from __future__ import annotations

from torch import nn

from biplanar.models.sopi.config import SopiConfig, load_sopi_config
from biplanar.models.sopi.encoder import CompositeEncoder, FineRegistrationNet
from biplanar.models.sopi.rtpi import RTPINet, standardise

NETWORKS = ("rtpi", "fine")


def build_network(config: SopiConfig, network: str) -> nn.Module:
    """The untrained ``rtpi`` (:class:`RTPINet`) or ``fine`` (:class:`FineRegistrationNet`) network."""
    if network == "rtpi":
        return RTPINet(config)
    if network == "fine":
        return FineRegistrationNet(config)
    raise ValueError(f"network: expected one of {', '.join(NETWORKS)}, got {network!r}")


__all__ = [
    "NETWORKS",
    "CompositeEncoder",
    "FineRegistrationNet",
    "RTPINet",
    "SopiConfig",
    "build_network",
    "load_sopi_config",
    "standardise",
]
