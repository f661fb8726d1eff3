"""Where tensors run: the default device and the barrier that makes wall-clock timings honest."""

from __future__ import annotations

import torch


def synchronise(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall-clock reading covers it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
