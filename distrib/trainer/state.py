"""What a checkpoint holds, and putting it back: the training state as plain tensors.

A checkpoint is a dict that a plain ``torch.load(path, weights_only=True)`` opens: ``model`` is
the unwrapped state dict, next to the optimizer, scheduler, position in the data and every
rank's RNG states. It carries a format version and the world size that wrote it, and a resume it
cannot honour is refused with one line (STYLE habit 9).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from distrib.distributed.process_group import Context
from distrib.errors import ConfigError
from distrib.parallel.ddp import unwrap
from distrib.rng import get_rng_state, seed_all, set_rng_state
from distrib.secrets import redact
from distrib.version import __version__

FORMAT_VERSION = 1


@dataclass
class TrainState:
    """Where training is: what a checkpoint must restore to continue exactly."""

    epoch: int = 0
    """Epochs completed (0-based index of the epoch in progress)."""
    step: int = 0
    """Optimizer steps taken in all."""
    consumed: int = 0
    """Global samples consumed in the current epoch (the data position, any world size)."""
    history: list[dict[str, float]] = field(default_factory=list)
    """One row per logging step and per evaluation (global values)."""

    @property
    def epoch_number(self) -> int:
        """The epoch as people count it, from 1: the one in progress, or the one just done.

        What logs, metric rows and checkpoint manifests say: "epoch 10/10 done", a manifest
        written then says ``epoch: 10``, and so does a mid-epoch save during that epoch.
        """
        return self.epoch + 1 if self.consumed > 0 else self.epoch


def gather_rng(ctx: Context) -> list[dict[str, Any]] | None:
    """Every rank's RNG states on rank 0 (None elsewhere); a collective every rank calls."""
    mine = get_rng_state()
    if not ctx.is_distributed:
        return [mine]
    out: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(mine, out, dst=0)
    return out


def capture(
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainState,
    ctx: Context,
    global_batch: int,
    config: dict[str, Any],
) -> dict[str, Any]:
    """The checkpoint dict (complete on rank 0); every rank must call it (RNG gather)."""
    return {
        "format_version": FORMAT_VERSION,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": state.epoch,
        "step": state.step,
        "consumed": state.consumed,
        "global_batch_size": global_batch,
        "world_size": ctx.world_size,
        "rng": gather_rng(ctx),
        "history": list(state.history),
        "config": redact(config),
        "versions": {"distrib": _version(), "torch": str(torch.__version__)},
    }


def restore(
    ckpt: dict[str, Any],
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    ctx: Context,
    seed: int,
) -> TrainState:
    """Put ``ckpt`` back into the live objects and return where training stands.

    RNG states go back rank by rank when the world size is unchanged (bit-exact resume). On a
    different world size the data position still carries over exactly (it is counted in
    global samples), and each rank's RNG is reseeded from (seed, step, rank) instead.
    """
    version = ckpt.get("format_version")
    if version != FORMAT_VERSION:
        raise ConfigError(str(path), version, f"a checkpoint of format version {FORMAT_VERSION}")
    try:
        unwrap(model).load_state_dict(ckpt["model"])
    except RuntimeError as e:  # torch lists every mismatched tensor over many lines
        first = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e))
        raise ConfigError(
            "model", message=f"{path}: the model does not match it: {first}"
        ) from None
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (KeyError, ValueError) as e:
        raise ConfigError(
            "optim", message=f"{path}: the optimizer does not match it: {e!r}"
        ) from None
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    rng = ckpt.get("rng") or []
    if ckpt["world_size"] == ctx.world_size and len(rng) == ctx.world_size:
        set_rng_state(rng[ctx.rank])
    else:
        seed_all(seed + 1000003 * ckpt["step"] + ctx.rank)
    return TrainState(
        epoch=int(ckpt["epoch"]),
        step=int(ckpt["step"]),
        consumed=int(ckpt["consumed"]),
        history=list(ckpt.get("history", [])),
    )


def _version() -> str:
    return __version__
