"""Data parallel (``trainer.strategy=ddp``): every worker holds the whole model; DDP averages
the gradients with all-reduces that overlap the backward pass.

`wrap_ddp` applies, in this fixed order: convert BatchNorm to SyncBatchNorm (optional; before
DDP so DDP sees the synced modules), wrap in DDP. `distrib.parallel.strategy.wrap` moves the
model to the device first and gives a world of one the bare model: no hooks, no buckets.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from distrib.distributed.process_group import Context
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


def wrap_ddp(model: nn.Module, ctx: Context, ddp: DDPConfig) -> nn.Module:
    """``model`` (on the worker's device, a world of more than one) wrapped in DDP."""
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
