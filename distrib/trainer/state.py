"""What a checkpoint holds, and putting it back: the training state as plain tensors.

A checkpoint is a dict that a plain ``torch.load(path, weights_only=True)`` opens: ``model`` is
the unwrapped state dict, next to the optimizer, scheduler, position in the data and every
rank's RNG states. It carries a format version and the world size that wrote it, and a resume it
cannot honour is refused with one line (STYLE habit 9).

Under FSDP the model and optimizer go to a sharded checkpoint instead (`sharded_state`: torch's
state-dict API, keys of the unwrapped model, each rank its shards) and the dict holds the rest.
Either kind resumes under either strategy at any world size: `restore` loads a sharded one
through DCP (which reshards) and a ``.pt`` into a sharded model as a full state dict.
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
from distrib.parallel.strategy import is_sharded, unwrap
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
    data: dict[str, Any] | None = None,
    scaler: Any = None,
) -> dict[str, Any]:
    """The checkpoint dict (complete on rank 0); every rank must call it (RNG gather).

    For a sharded model it holds no ``model``/``optimizer``: those are `sharded_state`'s.
    ``data``: a stream's position and what it is counted in (`StreamLoader.state_dict`);
    ``scaler``: fp16's gradient scaler, whose scale and growth count an exact resume needs.
    """
    shards = is_sharded(model)
    return {
        "format_version": FORMAT_VERSION,
        **({} if shards else {"model": unwrap(model).state_dict()}),
        **({} if shards else {"optimizer": optimizer.state_dict()}),
        "strategy": "fsdp" if shards else "ddp",
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        **({"scaler": scaler.state_dict()} if scaler is not None else {}),
        "epoch": state.epoch,
        "step": state.step,
        "consumed": state.consumed,
        "global_batch_size": global_batch,
        "world_size": ctx.world_size,
        **({"data": data} if data is not None else {}),
        "rng": gather_rng(ctx),
        "history": list(state.history),
        "config": redact(config),
        "versions": {"distrib": _version(), "torch": str(torch.__version__)},
    }


def sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``{"model", "optim"}`` as DCP writes and reads them: this rank's shards, keyed by the
    unwrapped model's parameter names (torch strips FSDP's and activation checkpointing's)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optim": optim_sd}


def _load_weights(
    ckpt: dict[str, Any], path: Path, model: nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    if path.suffix == ".dcp":  # any model, any world size: DCP reshards
        from torch.distributed.checkpoint.state_dict import set_state_dict

        from distrib.checkpoint.sharded import load_into

        app = sharded_state(model, optimizer)
        load_into(path, app)
        set_state_dict(
            model, optimizer, model_state_dict=app["model"], optim_state_dict=app["optim"]
        )
        return
    if is_sharded(model):  # a whole-model checkpoint (ddp, or 1 worker) into FSDP's shards
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        wrappers = ("_checkpoint_wrapped_module.", "_orig_mod.")  # not in checkpoint keys
        names = [n for n, _ in unwrap(model).named_parameters()]
        for w in wrappers:
            names = [n.replace(w, "") for n in names]
        osd = ckpt["optimizer"]
        by_name = {  # torch's full optimizer state dict is keyed by parameter name, not index
            "state": {names[i]: s for i, s in osd["state"].items()},
            "param_groups": [
                {**g, "params": [names[i] for i in g["params"]]} for g in osd["param_groups"]
            ],
        }
        set_state_dict(
            model,
            optimizer,
            model_state_dict=ckpt["model"],
            optim_state_dict=by_name,
            options=StateDictOptions(full_state_dict=True),
        )
        return
    unwrap(model).load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])


def restore(
    ckpt: dict[str, Any],
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    ctx: Context,
    seed: int,
    scaler: Any = None,
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
        _load_weights(ckpt, path, model, optimizer)
    except RuntimeError as e:  # torch lists every mismatched tensor over many lines
        first = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e))
        raise ConfigError(
            "model", message=f"{path}: the model does not match it: {first}"
        ) from None
    except (KeyError, ValueError, IndexError) as e:
        raise ConfigError(
            "optim", message=f"{path}: the optimizer does not match it: {e!r}"
        ) from None
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and ckpt.get("scaler"):  # else (an fp32/bf16 checkpoint) it starts anew
        scaler.load_state_dict(ckpt["scaler"])
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
