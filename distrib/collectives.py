"""The few collectives a training script needs, safe in a world of one."""

from __future__ import annotations

import torch
import torch.distributed as dist


def reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over all ranks (a copy; no-op without a process group).

    Pack several numbers into one tensor to pay for one collective::

        correct, total = distrib.reduce_sum(torch.tensor([correct, total], dtype=torch.float64))
    """
    out = values.detach().clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
