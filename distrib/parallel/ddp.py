"""Data parallel: DDP with the knobs users need, accumulation without a reduce, clipping.

`wrap` applies, in this fixed order: move to the worker's device, convert BatchNorm to
SyncBatchNorm (optional; before DDP so DDP sees the synced modules), wrap in DDP. A world of one
gets the bare model back: no hooks, no buckets, nothing to pay for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from distrib.distributed.process_group import Context, current
from distrib.errors import check


@dataclass(kw_only=True)
class DDPConfig:
    """DistributedDataParallel's knobs (``trainer.ddp.*``)."""

    bucket_cap_mb: float = 25.0
    """Gradient bucket size; larger buckets mean fewer, bigger all-reduces."""
    find_unused_parameters: bool = False
    """Only for models whose forward skips parameters; it costs a graph walk every step."""
    static_graph: bool = False
    """Promise the graph never changes between steps, letting DDP skip per-step checks."""
    gradient_as_bucket_view: bool = True
    """Gradients alias the communication buckets: saves one gradient-sized copy of memory."""
    sync_batchnorm: bool = False
    """Convert BatchNorm layers so statistics are computed over the global batch."""

    def __post_init__(self) -> None:
        check(
            self.bucket_cap_mb > 0, "trainer.ddp.bucket_cap_mb", self.bucket_cap_mb, "a number > 0"
        )


def wrap(model: nn.Module, ctx: Context | None = None, ddp: DDPConfig | None = None) -> nn.Module:
    """Return ``model`` on this worker's device, wrapped in DDP when the world has >1 worker.

    Example::

        model = distrib.wrap(MyNet(), ddp=distrib.DDPConfig(static_graph=True))
    """
    ctx = ctx or current()
    ddp = ddp or DDPConfig()
    model = model.to(ctx.device)
    if not ctx.is_distributed:
        return model
    if ddp.sync_batchnorm:
        check(
            ctx.device.type == "cuda",
            "trainer.ddp.sync_batchnorm",
            True,
            "false on CPU (torch's SyncBatchNorm runs on CUDA devices only)",
        )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DDP(
        model,
        device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
        bucket_cap_mb=ddp.bucket_cap_mb,
        find_unused_parameters=ddp.find_unused_parameters,
        static_graph=ddp.static_graph,
        gradient_as_bucket_view=ddp.gradient_as_bucket_view,
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside any DDP wrapper: what checkpoints and evaluation use."""
    return model.module if isinstance(model, DDP) else model


@contextlib.contextmanager
def accumulate(model: nn.Module, *, sync: bool) -> Iterator[None]:
    """Run a micro-step's backward; skip DDP's all-reduce unless ``sync`` (the last micro-step).

    Example::

        for i, batch in enumerate(micro_batches):
            with distrib.accumulate(model, sync=i == len(micro_batches) - 1):
                (loss_fn(model(batch)) / len(micro_batches)).backward()
    """
    if isinstance(model, DDP) and not sync:
        with model.no_sync():
            yield
    else:
        yield


def clip_grad(model: nn.Module, max_norm: float) -> torch.Tensor | None:
    """Clip the global gradient norm (after the all-reduce, so every rank clips alike)."""
    if max_norm <= 0:
        return None
    return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
