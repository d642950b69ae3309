"""Fully sharded data parallel (FSDP2, ``torch.distributed.fsdp.fully_shard``): each worker
holds 1/W of the parameters, gradients and optimizer state, and gathers a block's parameters
only while it runs.

`wrap_fsdp` applies, in torchtitan's order: activation checkpointing per block (optional),
torch.compile per block (optional), then ``fully_shard`` on each block, then on the root, so
every block's all-gather overlaps the previous block's compute and the root holds what is
left (embeddings, heads). The optimizer is built afterwards over the sharded parameters. The
blocks are `distrib.parallel.blocks`' (``trainer.blocks=[GPT2Block]``, or found).

FSDP2 on gloo needs torch >= 2.9: torch 2.7 sums the gradients instead of averaging them
(pytorch issue 162338) and 2.6 fails in the forward; `check_available` refuses older ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from distrib.distributed.process_group import Context
from distrib.errors import ConfigError
from distrib.parallel.blocks import checkpoint_blocks, find_blocks
from distrib.parallel.compile import CompileConfig, compile_blocks

MIN_TORCH = (2, 9)


@dataclass(kw_only=True)
class FSDPConfig:
    """Fully sharded data parallel's knobs (``trainer.fsdp.*``; ``trainer.strategy=fsdp``)."""

    reshard_after_forward: bool = True
    """Free each block's gathered parameters after its forward (gather again for backward):
    less memory, one more all-gather per block and step."""
    cpu_offload: bool = False
    """Keep the sharded parameters, gradients and optimizer state in CPU memory (GPU runs)."""


def torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def check_available(version: tuple[int, int] | None = None) -> None:
    """Refuse a torch whose FSDP2 trains wrong or not at all, in one line."""
    version = version or torch_version()
    if version < MIN_TORCH:
        found = ".".join(map(str, version))
        raise ConfigError(
            "trainer.strategy",
            message=f"trainer.strategy=fsdp needs torch >= 2.9 (found {found}: torch 2.7 sums "
            "FSDP2 gradients instead of averaging them, 2.6 fails in the forward); upgrade "
            "torch or use trainer.strategy=ddp",
        )


def wrap_fsdp(
    model: nn.Module,
    ctx: Context,
    fsdp: FSDPConfig,
    *,
    blocks: list[str] | None = None,
    precision: str = "fp32",
    activation_checkpointing: bool = False,
    compile: CompileConfig | None = None,
) -> nn.Module:
    """Shard ``model`` over every worker of ``ctx`` (in place; the module is returned).

    Example::

        model = distrib.wrap(MyTransformer(), strategy="fsdp", blocks=["Block"])
        optimizer = torch.optim.AdamW(model.parameters())   # after wrapping: sharded params
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    check_available()
    model = model.to(ctx.device)
    found = find_blocks(model, blocks or [])
    if activation_checkpointing:
        found = checkpoint_blocks(model, found)
    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
    options: dict = {"mesh": mesh, "reshard_after_forward": fsdp.reshard_after_forward}
    if precision in ("bf16", "fp16"):  # low-precision compute and gathers, fp32 reduction
        options["mp_policy"] = MixedPrecisionPolicy(  # (torchtitan's)
            param_dtype=torch.bfloat16 if precision == "bf16" else torch.float16,
            reduce_dtype=torch.float32,
        )
    if fsdp.cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy()
    found = compile_blocks(model, found, compile or CompileConfig())  # before sharding
    for block in found:
        fully_shard(block, **options)
    fully_shard(model, **options)
    return model
