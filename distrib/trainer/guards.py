"""What stops a run that went wrong instead of letting it report success.

A NaN/Inf loss (`NonFiniteLoss`, or skipped steps with ``trainer.nonfinite=skip``), an epoch
of zero optimizer steps (a training set smaller than one global batch), samples the trainer
cannot read, and ranks that built different datasets (gloo would abort mid-epoch).
"""

from __future__ import annotations

from typing import Any

import torch

from distrib.errors import ConfigError
from distrib.secrets import redact


class NonFiniteLoss(RuntimeError):
    """Training produced NaN/Inf (``trainer.nonfinite=stop``); nothing of it was saved."""


def check_steps(train_dl: Any, global_batch: int, world: int) -> None:
    """An epoch of zero optimizer steps would "train" nothing and report success."""
    if train_dl.sampler.epoch_samples() == 0:
        n = len(train_dl.sampler.dataset)
        raise ConfigError(
            "data.train",
            message=f"data.train: {n} samples make 0 optimizer steps at "
            f"trainer.global_batch_size={global_batch} on {world} worker(s): every epoch drops "
            "its tail shorter than one global batch (use a smaller global batch or more data)",
        )


def same_length_everywhere(dataset: Any, ctx: Any) -> None:
    """One collective at setup: ranks whose datasets differ would deadlock or abort later."""
    if not ctx.is_distributed:
        return
    import torch.distributed as dist

    mine = torch.tensor([len(dataset)], dtype=torch.int64, device=ctx.device)
    every = [torch.zeros_like(mine) for _ in range(ctx.world_size)]
    dist.all_gather(every, mine)
    lengths = torch.cat(every).tolist()
    if len(set(lengths)) > 1:
        each = ", ".join(f"rank {r}: {n}" for r, n in enumerate(lengths))
        raise ConfigError(
            "data.train",
            message=f"data.train: the ranks built training sets of different lengths "
            f"({each}); every rank must build the same dataset "
            "(distrib shards it: do not split by rank in the dataset)",
        )


class BuildFailed(RuntimeError):
    """A user's class or function raised while being built; names the key and its arguments."""


def build_named(key: str, node: dict) -> Any:
    """`build`, with a failure naming the config key and the arguments it was called with --
    the path a dataset could not open is usually one of them, even when its error omits it."""
    from distrib.config.targets import build

    try:
        return build(node, key=key)
    except ConfigError:
        raise  # a refused target: already one line naming the key
    except Exception as e:
        cause = e.__cause__ or e  # hydra wraps the user's exception in InstantiationException
        args = ", ".join(
            f"{k}={v!r}" for k, v in redact(node).items() if not str(k).startswith("_")
        )
        raise BuildFailed(
            f"{key}: {node.get('_target_')}({args}) raised {type(cause).__name__}: {cause}"
        ) from e
