"""Data-parallel set-up: one process per device under ``torchrun``, or a single process.

``torchrun --nproc_per_node=N`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; without them the
run is a single process. The backend is ``nccl`` on CUDA and ``gloo`` on CPU; each process uses
``cuda:LOCAL_RANK`` when CUDA is available, else the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the run.

    Attributes:
        world_size: number of processes.
        rank: this process's index, ``0 <= rank < world_size``.
        local_rank: its index on this machine (picks the CUDA device).
        device: the device its model and data live on.
        owns_group: whether :func:`setup_distributed` created the process group (and so tears it down).
    """

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def setup_distributed() -> DistributedContext:
    """Read the ``torchrun`` environment, pick the device and join the process group if ``WORLD_SIZE > 1``."""
    world_size, rank, local_rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    owns_group = world_size > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(world_size, rank, local_rank, device, owns_group)


def teardown_distributed(context: DistributedContext, wait_for_peers: bool = False) -> None:
    """Leave the process group if :func:`setup_distributed` joined it.

    Args:
        context: what :func:`setup_distributed` returned.
        wait_for_peers: first wait at a barrier until every rank is done (rank 0 writes the last
            checkpoint after the others' last collective): a gloo rank whose peer tears its
            connections down first can abort (``terminate called without an active exception``).
            Only after a run that finished on this rank: after an error, the peers may never come.
    """
    if context.owns_group and dist.is_initialized():
        if wait_for_peers:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(values: Tensor, context: DistributedContext) -> Tensor:
    """Element-wise sum of ``values`` over all processes (``values`` itself in a single process)."""
    if context.distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values
