"""The parallel strategy behind one small interface, so the loop never branches on it.

``trainer.strategy=ddp`` (`distrib.parallel.ddp`) keeps a whole model per worker;
``trainer.strategy=fsdp`` (`distrib.parallel.fsdp`) shards it. Everything after `wrap` asks
the wrapped model what it is: `accumulate` skips the gradient reduce on non-final micro-steps
(DDP's ``no_sync``, FSDP's ``set_requires_gradient_sync``), `clip_grad` clips the global norm
(over every shard), `grads_finite`/`params_finite` agree on every rank, `unwrap` is the user's
module, `full_state_dict` its plain weights, and `is_sharded` says whether a checkpoint must be
written by every rank (`distrib.checkpoint.sharded`) or by rank 0 alone.

A world of one gets the bare model under either strategy: there is nothing to shard or reduce.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from distrib.distributed.process_group import Context, current
from distrib.errors import check
from distrib.parallel.blocks import checkpoint_blocks, find_blocks
from distrib.parallel.compile import CompileConfig, compile_in_place
from distrib.parallel.ddp import DDPConfig, wrap_ddp
from distrib.parallel.fsdp import FSDPConfig, wrap_fsdp
from distrib.parallel.precision import autocast as _autocast

STRATEGIES = ("ddp", "fsdp")


def wrap(
    model: nn.Module,
    ctx: Context | None = None,
    ddp: DDPConfig | None = None,
    *,
    strategy: str = "ddp",
    fsdp: FSDPConfig | None = None,
    blocks: list[str] | None = None,
    precision: str = "fp32",
    activation_checkpointing: bool = False,
    compile: CompileConfig | None = None,
) -> nn.Module:
    """Return ``model`` on this worker's device, wrapped for the world: DDP or FSDP when it has
    more than one worker, the bare model in a world of one. Build the optimizer afterwards.
    ``compile``: torch.compile in place (`distrib.parallel.compile`: per block under fsdp,
    the DDP-wrapped model under ddp).

    Example::

        model = distrib.wrap(MyNet(), ddp=distrib.DDPConfig(static_graph=True))
        model = distrib.wrap(MyGPT(), strategy="fsdp", blocks=["Block"], precision="bf16")
    """
    check(strategy in STRATEGIES, "trainer.strategy", strategy, " or ".join(STRATEGIES))
    ctx = ctx or current()
    model = model.to(ctx.device)
    if strategy == "fsdp" and ctx.is_distributed:
        return wrap_fsdp(
            model,
            ctx,
            fsdp or FSDPConfig(),
            blocks=blocks,
            precision=precision,
            activation_checkpointing=activation_checkpointing,
            compile=compile,
        )
    if activation_checkpointing:
        checkpoint_blocks(model, find_blocks(model, blocks or []))
    if ctx.is_distributed:
        model = wrap_ddp(model, ctx, ddp or DDPConfig())
    compile_in_place(model, compile or CompileConfig())  # DDP's: its optimizer splits the graph
    return model


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model``'s parameters are spread over the workers (FSDP)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside any DDP wrapper (FSDP shards the module in place)."""
    return model.module if isinstance(model, DDP) else model


@contextlib.contextmanager
def accumulate(model: nn.Module, *, sync: bool) -> Iterator[None]:
    """Run a micro-step's backward; skip the gradient reduce unless ``sync`` (the last one).

    Example::

        for i, batch in enumerate(micro_batches):
            with distrib.accumulate(model, sync=i == len(micro_batches) - 1):
                (loss_fn(model(batch)) / len(micro_batches)).backward()
    """
    if isinstance(model, DDP) and not sync:
        with model.no_sync():
            yield
    elif is_sharded(model):
        model.set_requires_gradient_sync(sync)  # type: ignore[operator]
        yield
    else:
        yield


def autocast(model: nn.Module, device: torch.device, precision: str) -> Any:
    """The forward's precision: autocast, or nothing where FSDP's mixed-precision policy
    already computes in bf16 (parameters gathered in bf16, gradients reduced in fp32)."""
    if is_sharded(model):
        return contextlib.nullcontext()
    return _autocast(device, precision)


def clip_grad(model: nn.Module, max_norm: float) -> torch.Tensor | None:
    """Clip the global gradient norm (after the reduce, so every rank clips alike; under FSDP
    torch computes the norm over every shard)."""
    if max_norm <= 0:
        return None
    return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)


def _all_finite(tensors: list[torch.Tensor], model: nn.Module) -> bool:
    local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
    ok = torch.stack([torch.isfinite(t).all() for t in local]).all() if local else None
    if not is_sharded(model):  # DDP: every rank holds the same reduced values
        return True if ok is None else bool(ok)
    flag = torch.ones((), device=local[0].device if local else "cpu")
    if ok is not None:
        flag = flag * ok
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)  # each rank sees its shards only: agree
    return bool(flag)


def grads_finite(model: nn.Module) -> bool:
    """Whether every gradient is finite, the same answer on every rank (the cost of
    ``trainer.nonfinite=skip``: one reduction and one read-back; under FSDP one all_reduce)."""
    return _all_finite([p.grad for p in model.parameters() if p.grad is not None], model)


def params_finite(model: nn.Module) -> bool:
    """Whether every parameter is finite, the same answer on every rank."""
    return _all_finite([p.detach() for p in model.parameters()], model)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The user's module's plain weights on the CPU, whatever the strategy (a collective under
    FSDP: every rank must call it)."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=options)
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
