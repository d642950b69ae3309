"""The few collectives a training script needs, safe in a world of one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist


def reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over all ranks (a copy; no-op without a process group).

    Pack several numbers into one tensor to pay for one collective::

        correct, total = distrib.reduce_sum(torch.tensor([correct, total], dtype=torch.float64))

    The result is on the device ``values`` came from; NCCL reduces only CUDA tensors, so a CPU
    tensor travels through this worker's GPU and back.
    """
    out = values.detach().clone()
    if not (dist.is_available() and dist.is_initialized()):
        return out
    device = _collective_device()
    if out.device == device:
        _named(dist.all_reduce, out, op=dist.ReduceOp.SUM)
        return out
    moved = out.to(device)
    _named(dist.all_reduce, moved, op=dist.ReduceOp.SUM)
    return moved.to(values.device)


def _named(collective: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``collective``; its timeout becomes a `CollectiveTimeout` naming the ranks that
    never arrived (a script's raw gloo/NCCL "Timed out waiting 10000ms" names none)."""
    try:
        return collective(*args, **kwargs)
    except RuntimeError as e:
        from distrib.distributed.process_group import explain_timeout

        explained = explain_timeout(e)
        if explained is None:
            raise
        raise explained from e


def _collective_device() -> torch.device:
    """Where this group's backend reduces: this worker's GPU for nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        from distrib.distributed.process_group import current

        ctx = current()
        if ctx.device.type == "cuda":
            return ctx.device
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        _named(dist.barrier)
