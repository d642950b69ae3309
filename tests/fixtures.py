"""User-side classes the end-to-end tests plug in through ``_target_`` (workers import them)."""

from __future__ import annotations

import os

from torch import nn

from distrib.models import SmallCNN


def model_failing_on_rank(fail_rank: int = 1) -> nn.Module:
    """A user model whose construction raises on one rank, as a buggy user class would."""
    if int(os.environ.get("RANK", "0")) == fail_rank:
        raise RuntimeError(f"boom on rank {fail_rank}")
    return SmallCNN()


def model_recording_pid(pid_dir: str, fail_rank: int = 1) -> nn.Module:
    """Record this worker's pid, then fail on ``fail_rank``: the test checks no worker survives."""
    rank = int(os.environ.get("RANK", "0"))
    with open(os.path.join(pid_dir, f"rank{rank}.pid"), "w") as f:
        f.write(str(os.getpid()))
    return model_failing_on_rank(fail_rank)
