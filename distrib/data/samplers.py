"""Sharded data: a DistributedSampler whose global order does not depend on the world size.

The *global* batch ``B`` is what the user sets; each of ``W`` ranks loads ``B / W`` samples per
step (``B / (W * accum)`` per micro-step). `ShardedSampler` deals the epoch's permutation out
round-robin, so global step ``k`` consumes exactly positions ``[k*B, (k+1)*B)`` of the
permutation on any ``W``: 2 workers at batch B see the same samples per step as 1 worker at B,
and a resume at a different world size continues at the same place.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from torch.utils.data import DistributedSampler, Sampler

from distrib.errors import ConfigError


def per_rank_batch(global_batch: int, world_size: int, accum: int = 1) -> int:
    """``global_batch / (world_size * accum)``, or a one-line error naming the key."""
    parts = world_size * accum
    if global_batch <= 0 or global_batch % parts:
        raise ConfigError(
            "trainer.global_batch_size",
            global_batch,
            f"a positive multiple of world_size*grad_accum = {world_size}*{accum} = {parts}",
        )
    return global_batch // parts


class ShardedSampler(DistributedSampler):
    """DistributedSampler with whole-global-batch epochs and a resumable position.

    ``drop_last`` drops the epoch's tail that does not fill a whole *global* batch (so every step
    averages the same number of samples on every rank, and W workers equal one). Without it the
    tail is padded like DistributedSampler does. `set_position` starts an epoch after
    ``consumed`` global samples: a resumed run sees the exact next sample of the permutation.
    """

    def __init__(
        self,
        dataset: Sized,
        *,
        num_replicas: int,
        rank: int,
        global_batch: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
    ) -> None:
        super().__init__(
            dataset,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self.global_batch = global_batch
        self.start = 0

    def set_position(self, epoch: int, consumed: int = 0) -> None:
        """Begin ``epoch`` after ``consumed`` global samples of it (0 = from the start)."""
        self.set_epoch(epoch)
        self.start = consumed

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.start = 0

    def global_order(self) -> list[int]:
        """The epoch's sample order over all ranks, before the resume offset."""
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        if self.drop_last:
            return order[: n - n % self.global_batch]
        pad = (-n) % self.num_replicas
        return order + (order * (pad // max(n, 1) + 1))[:pad]

    def epoch_samples(self) -> int:
        return len(self.global_order())

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_order()[self.start :][self.rank :: self.num_replicas])

    def __len__(self) -> int:
        remaining = max(0, self.epoch_samples() - self.start)
        return len(range(self.rank, remaining, self.num_replicas))


class EvalSampler(Sampler[int]):
    """Rank ``r`` takes samples ``r, r+W, ...``: no padding, so metrics count each sample once."""

    def __init__(self, dataset: Sized, *, num_replicas: int, rank: int) -> None:
        self.n, self.num_replicas, self.rank = len(dataset), num_replicas, rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.num_replicas))
