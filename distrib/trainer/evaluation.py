"""Exact evaluation: every sample once, summed on each rank, one all_reduce, then the task's
metrics of the global sums -- the same numbers whatever the world size."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from distrib.distributed.process_group import Context
from distrib.parallel.strategy import is_sharded
from distrib.tasks import Task, to_device


@torch.no_grad()
def evaluate(model: nn.Module, dl: DataLoader, ctx: Context, task: Task) -> dict[str, Any]:
    """``eval_<name>`` for each metric of ``task``; every rank gets the same values."""
    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    seen, last = 0, None
    most = _most_batches(dl, ctx) if is_sharded(model) else 0  # agreed before any forward
    for batch in dl:
        last = to_device(batch, ctx.device)
        out = task(model=model, batch=last)
        seen += 1
        for name, value in out.sums.items():
            value = torch.as_tensor(value, device=ctx.device).detach().double().sum()
            sums[name] = sums[name] + value if name in sums else value
    if seen < most:
        _pad_forwards(model, dl, ctx, task, most - seen, last)
    names = sorted(sums)
    if ctx.is_distributed:
        # A rank whose shard is empty has no names: agree on them first (once per evaluation).
        every: list[list[str]] = [[] for _ in range(ctx.world_size)]
        dist.all_gather_object(every, names)
        names = sorted(set().union(*every))
    zero = torch.zeros((), dtype=torch.float64, device=ctx.device)
    vector = torch.stack([sums.get(n, zero) for n in names]) if names else zero.reshape(1)
    if ctx.is_distributed:
        dist.all_reduce(vector)
    model.train(was_training)
    totals = dict(zip(names, vector.tolist(), strict=False))
    return {f"eval_{k}": v for k, v in task.metrics(totals).items()}


def _most_batches(dl: DataLoader, ctx: Context) -> int:
    """The most eval batches any rank has. Under FSDP a forward is a collective (each block's
    parameters are gathered), so every rank must run that many forwards: see `_pad_forwards`."""
    most = torch.tensor(len(dl), device=ctx.device)
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    return int(most)


def _pad_forwards(
    model: nn.Module, dl: DataLoader, ctx: Context, task: Task, missing: int, last: Any
) -> None:
    """A rank with fewer eval batches repeats one and drops what it computes (shards differ by
    one sample at most, so it is one forward or none)."""
    if last is None:  # an empty shard (fewer samples than ranks): any one sample will do
        from torch.utils.data import default_collate

        tensors = getattr(dl, "tensors", None)  # in-memory batches (TensorBatches)
        one = tuple(t[:1] for t in tensors) if tensors else default_collate([dl.dataset[0]])  # type: ignore[attr-defined]
        last = to_device(one, ctx.device)
    for _ in range(missing):
        task(model=model, batch=last)


def describe(result: dict[str, Any]) -> str:
    """``eval_loss 0.0812  eval_acc 0.9749`` for a log line (counts as integers)."""
    return "  ".join(
        f"{k} {v}" if isinstance(v, int) else f"{k} {v:.4f}" for k, v in result.items()
    )
