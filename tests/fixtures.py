"""User-side classes the end-to-end tests plug in through ``_target_`` (workers import them)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import torch
from torch import nn

from distrib.datasets import synthetic
from distrib.models import SmallCNN
from distrib.tasks import Classification, TaskOutput


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


class Recorded(torch.utils.data.Dataset):
    """Synthetic data that appends every index it serves to ``<record_dir>/rank<k>.txt`` and can
    sleep per item, so tests can see which samples each run consumed and kill runs mid-way."""

    def __init__(
        self,
        split: str = "train",
        record_dir: str | None = None,
        delay: float = 0.0,
        size: int = 640,
        features: int = 16,
        kill_at: int = 0,
        kill_rank: int = 0,
        kill_attempt: int = -1,
        signal_at: int = 0,
    ) -> None:
        self.data = synthetic(split, size=size, features=features)
        self.record_dir, self.delay, self.kill_at = record_dir, delay, kill_at
        self.kill_rank, self.kill_attempt = kill_rank, kill_attempt
        self.signal_at = signal_at  # SIGUSR1 to this process (rank kill_rank) at that sample
        self.served = 0
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "-")
        if record_dir:  # what the elastic agent told this worker
            rank = os.environ.get("RANK", "0")
            open(os.path.join(record_dir, f"{split}-rank{rank}-attempt{attempt}"), "w").close()
        if kill_attempt >= 0 and attempt != str(kill_attempt):
            self.kill_at = 0  # kill on that attempt only: the restarted group must finish

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.served += 1
        rank = int(os.environ.get("RANK", "0"))
        if self.kill_at and self.served == self.kill_at and rank == self.kill_rank:
            os.kill(os.getpid(), signal.SIGKILL)  # a hard crash: no handler, no cleanup
        if self.signal_at and self.served == self.signal_at and rank == self.kill_rank:
            os.kill(os.getpid(), signal.SIGUSR1)  # a preemption notice to this rank alone
        if self.record_dir:
            with open(os.path.join(self.record_dir, f"rank{rank}.txt"), "a") as f:
                f.write(f"{i}\n")
        if self.delay:
            time.sleep(self.delay)
        return self.data[i]


class SleepyMLP(nn.Module):
    """An MLP whose forward sleeps ``sleep_s`` on rank ``rank`` at call ``at_call``: a rank
    stuck in user code while its peer waits in the gradient all_reduce. Records pids, and
    ``rank<k>.sleeping`` in ``pid_dir`` when the sleep begins (what tests wait for)."""

    def __init__(self, pid_dir: str, rank: int = 1, at_call: int = 3, sleep_s: float = 120.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10))
        self.rank, self.at_call, self.sleep_s, self.calls = rank, at_call, sleep_s, 0
        self.pid_dir = pid_dir
        me = int(os.environ.get("RANK", "0"))
        with open(os.path.join(pid_dir, f"rank{me}.pid"), "w") as f:
            f.write(str(os.getpid()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.training and self.calls == self.at_call and int(os.environ["RANK"]) == self.rank:
            open(os.path.join(self.pid_dir, f"rank{self.rank}.sleeping"), "w").close()
            time.sleep(self.sleep_s)
        return self.net(x)


class PoisonedAt(torch.utils.data.Dataset):
    """Synthetic data whose sample ``at`` (an index) is all NaN: one bad batch, one bad step."""

    def __init__(self, split: str = "train", at: int = 0, size: int = 640, features: int = 16):
        self.data = synthetic(split, size=size, features=features)
        self.at = at

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.data[i]
        return (torch.full_like(x, float("nan")) if i == self.at else x), y


def token_dataset(split: str = "train", hf_token: str | None = None, size: int = 640):
    """A user's dataset factory that takes a secret (as one reading a private hub would)."""
    return synthetic(split, size=size, features=16)


def missing_file_dataset(split: str = "train", path: str = "/nonexistent/data.bin"):
    """A user's dataset whose file is missing, raising as some readers do: without the path."""
    raise FileNotFoundError(2, "No such file or directory")


class DictSamples(torch.utils.data.Dataset):
    """Samples as dicts (``{"image": x, "label": y}``), as many vision datasets return them."""

    def __init__(self, split: str = "train", size: int = 640):
        self.data = synthetic(split, size=size, features=16)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x, y = self.data[i]
        return {"image": x, "label": y}


def per_rank_dataset(split: str = "train", size: int = 640):
    """A dataset that comes out a different size on each rank (a per-rank split gone wrong)."""
    return synthetic(split, size=size + 64 * int(os.environ.get("RANK", "0")), features=16)


class SelfLossClassifier(nn.Module):
    """A model that computes its own loss from a dict batch and returns it Hugging Face style
    (``{"loss": ..., "logits": ...}``), for ``task=model_loss``."""

    def __init__(self, in_features: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, 32), nn.ReLU(), nn.Linear(32, num_classes))

    def forward(self, image: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.net(image)
        return {"loss": nn.functional.cross_entropy(logits, label), "logits": logits}


class RecordedShards(torch.utils.data.IterableDataset):
    """A user's own sharded stream (``shard_sizes`` and ``read``, distrib's source protocol):
    ``sizes`` shards of synthetic (x, y) samples, sample id = its place in the listed shards.
    Appends each id it yields to ``<record_dir>/<split>-rank<k>-<pid>.txt``, and SIGKILLs its
    rank (from a loader worker: the rank's process) at the ``kill_at``-th sample a process of
    rank ``kill_rank`` yields."""

    def __init__(
        self,
        split: str = "train",
        sizes: tuple[int, ...] = (40, 13, 27, 61, 8, 35, 22),
        features: int = 16,
        record_dir: str | None = None,
        kill_at: int = 0,
        kill_rank: int = 0,
    ) -> None:
        self.sizes, self.split = list(sizes), split
        self.base = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        self.x = torch.randn(sum(self.sizes), features, generator=g)
        self.y = (self.x @ torch.randn(features, 10, generator=g)).argmax(dim=1)
        self.record_dir, self.kill_at, self.kill_rank = record_dir, kill_at, kill_rank
        self.served = 0

    def shard_sizes(self) -> list[int]:
        return self.sizes

    def read(self, shard: int, offsets):  # type: ignore[no-untyped-def]
        rank = int(os.environ.get("RANK", "0"))
        for offset in offsets:
            i = self.base[shard] + offset
            self.served += 1
            if self.kill_at and self.served == self.kill_at and rank == self.kill_rank:
                worker = torch.utils.data.get_worker_info() is not None
                os.kill(os.getppid() if worker else os.getpid(), signal.SIGKILL)
            if self.record_dir:
                name = f"{self.split}-rank{rank}-{os.getpid()}.txt"
                with open(os.path.join(self.record_dir, name), "a") as f:
                    f.write(f"{i}\n")
            yield self.x[i], self.y[i]

    def __iter__(self):  # type: ignore[no-untyped-def]
        for shard, n in enumerate(self.sizes):
            yield from self.read(shard, range(n))


def leaky_dataset(split: str = "train", hf_token: str = "", size: int = 640):
    """A user's dataset that fails with its secret in the message (as a URL with a token)."""
    raise PermissionError(f"403 for https://hub.example/data?token={hf_token}")


class SlowOnRank(Classification):
    """Classification whose training steps sleep ``sleep_s`` on ``rank``: a straggler."""

    def __init__(self, rank: int = 1, sleep_s: float = 0.0) -> None:
        self.rank, self.sleep_s = rank, sleep_s

    def __call__(self, *, model: nn.Module, batch: Any) -> TaskOutput:
        if model.training and self.sleep_s and int(os.environ.get("RANK", "0")) == self.rank:
            time.sleep(self.sleep_s)
        return super().__call__(model=model, batch=batch)
