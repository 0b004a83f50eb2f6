"""Process-group facts and the few collectives the loop needs (no-ops on one process).

Under ``torchrun`` the harness joins the process group itself (gloo on CPU, nccl on GPU) unless
the caller already did; DDP runs without the per-forward buffer broadcast (see
:func:`no_forward_buffer_sync`).
"""

from __future__ import annotations

import inspect
import os

import torch
import torch.distributed as dist
from torch import nn


class Dist:
    """World size, rank, device, and ``sum`` / ``barrier`` over the ranks."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        self.device = torch.device(f"cuda:{self.local_rank}" if cuda else "cpu")
        self.owns_group = False
        if self.world > 1 and not dist.is_initialized():
            if cuda:
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend="nccl" if cuda else "gloo")
            self.owns_group = True
        if dist.is_initialized():
            self.world, self.rank = dist.get_world_size(), dist.get_rank()

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return t
        buf = t.to(self.device)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return buf

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()


def no_forward_buffer_sync() -> dict[str, bool]:
    """DDP without a buffer broadcast before every forward (buffers still sync at init).

    The c-sign state is a deterministic function of the weights, which DDP keeps identical on
    every rank, so broadcasting it (``m + 1`` copies of every binary weight, before every
    forward) would only cost time. torch >= 2.14 names this ``forward_sync_buffers=False`` and
    deprecates the older ``broadcast_buffers=False``; use whichever this torch has.
    """
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in params:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}
