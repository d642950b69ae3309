"""What stops a run that went wrong instead of letting it report success.

A NaN/Inf loss (`NonFiniteLoss`, or skipped steps with ``trainer.nonfinite=skip``) and an
epoch of zero optimizer steps (a training set smaller than one global batch).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distrib.errors import ConfigError


class NonFiniteLoss(RuntimeError):
    """Training produced NaN/Inf (``trainer.nonfinite=stop``); nothing of it was saved."""


def grads_finite(model: nn.Module) -> bool:
    """One device-side reduction and one read-back: the cost of ``trainer.nonfinite=skip``."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return True
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


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
