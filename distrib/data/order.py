"""The epoch's global order of streamed data, and who reads which part of it.

A stream is a list of shards of known sizes. Its epoch order does not depend on the world size
or the number of loader workers: the shards are taken in a permutation seeded by (seed, epoch)
and concatenated; the result is cut into windows of ``window`` samples and each window is
permuted (seeded by (seed, epoch, window)): a shuffle buffer whose memory is bounded (about
one window over the whole job) and whose outcome is a pure function of the position. Global
step ``k`` takes output positions ``[start + k*B, start + (k+1)*B)``, as `ShardedSampler` does
for map-style data, so the data position is just "global samples consumed" and a resume on any
world size or worker count continues at the exact next sample.

Within a step, micro-batch ``a*W + r`` (``b = B / (W*accum)`` consecutive positions) is rank
``r``'s ``a``-th micro-step, and a rank's micro-batch ``i`` is read by its loader worker
``i % K``: the DataLoader takes batches from its workers in turn, so the rank sees them in
order. Every sample of an epoch is read by exactly one worker of one rank. `StreamSampler` is
where one rank stands in that order (what the training loop moves).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, kw_only=True)
class Plan:
    """One stream's epoch order: what a checkpoint's data position is counted in."""

    sizes: tuple[int, ...]
    """Samples in each shard, in the shards' fixed (listed) order."""
    seed: int = 0
    """Seeds the shard order and the window permutations (with the epoch)."""
    shuffle: bool = True
    """False: shards in their order, samples in theirs (evaluation)."""
    window: int = 4096
    """The bounded shuffle: samples move only within windows of this many consecutive ones."""

    @property
    def samples(self) -> int:
        return int(sum(self.sizes))

    def __len__(self) -> int:
        return self.samples

    def epoch_samples(self, global_batch: int, drop_last: bool = True) -> int:
        """Positions an epoch serves: the tail short of a global batch is dropped, or (without
        ``drop_last``) the last batch is filled by wrapping around to the epoch's start."""
        n = self.samples
        return n - n % global_batch if drop_last else -(-n // global_batch) * global_batch

    def shard_order(self, epoch: int) -> np.ndarray:
        n = len(self.sizes)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch, 0]).permutation(n)

    def stream_positions(self, epoch: int, positions: np.ndarray) -> np.ndarray:
        """Output positions of ``epoch`` -> positions in the concatenated (shard-ordered) stream."""
        q = np.asarray(positions, dtype=np.int64) % max(self.samples, 1)  # wrap: the padding
        if not self.shuffle:
            return q
        out = np.empty_like(q)
        windows = q // self.window
        for w in np.unique(windows):
            lo = int(w) * self.window
            length = min(self.window, self.samples - lo)
            perm = np.random.default_rng([self.seed, epoch, 1, int(w)]).permutation(length)
            mask = windows == w
            out[mask] = lo + perm[q[mask] - lo]
        return out

    def locate(self, epoch: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Output positions -> (shard index, offset in that shard)."""
        order = self.shard_order(epoch)
        sizes = np.asarray(self.sizes, dtype=np.int64)[order]
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        q = self.stream_positions(epoch, positions)
        # side=right, then -1: the last shard starting at or before q (skips empty shards)
        k = np.searchsorted(starts, q, side="right") - 1
        return order[k], q - starts[k]


def train_batches(
    *, start: int, steps: int, global_batch: int, world: int, rank: int, accum: int
) -> Iterator[tuple[int, int]]:
    """Rank ``rank``'s micro-batches ``[p0, p1)`` for ``steps`` global steps from ``start``."""
    micro = global_batch // (world * accum)
    for k in range(steps):
        for a in range(accum):
            p0 = start + k * global_batch + (a * world + rank) * micro
            yield p0, p0 + micro


def eval_batches(*, samples: int, world: int, rank: int, batch: int) -> Iterator[tuple[int, int]]:
    """Rank ``rank``'s evaluation batches: a contiguous 1/world of the samples, no padding."""
    lo, hi = rank * samples // world, (rank + 1) * samples // world
    for p0 in range(lo, hi, batch):
        yield p0, min(p0 + batch, hi)


@dataclass(kw_only=True)
class StreamSampler:
    """Where a rank stands in a stream: the part of `ShardedSampler`'s interface the loop uses."""

    plan: Plan
    global_batch: int
    world: int
    rank: int
    accum: int = 1
    drop_last: bool = True
    eval_batch: int = 0
    """> 0: evaluation: every sample once over all ranks, in order, batches of this per rank."""
    epoch: int = 0
    start: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.start = epoch, 0

    def set_position(self, epoch: int, consumed: int = 0) -> None:
        """Begin ``epoch`` after ``consumed`` global samples of it (0 = from the start)."""
        self.epoch, self.start = epoch, consumed

    @property
    def dataset(self) -> Plan:
        return self.plan  # sized: what check_steps and the ranks' length check count

    def epoch_samples(self) -> int:
        if self.eval_batch:
            return self.plan.samples
        return self.plan.epoch_samples(self.global_batch, self.drop_last)

    def steps(self) -> int:
        """Whole global steps left in the epoch (equal on every rank)."""
        return max(0, self.epoch_samples() - self.start) // self.global_batch

    def batches(self) -> Iterator[tuple[int, int]]:
        """This rank's micro-batches as output positions ``[p0, p1)``, in order."""
        if self.eval_batch:
            n = self.plan.samples
            return eval_batches(samples=n, world=self.world, rank=self.rank, batch=self.eval_batch)
        return train_batches(
            start=self.start,
            steps=self.steps(),
            global_batch=self.global_batch,
            world=self.world,
            rank=self.rank,
            accum=self.accum,
        )

    def num_batches(self) -> int:
        if not self.eval_batch:
            return self.steps() * self.accum
        n, w, r = self.plan.samples, self.world, self.rank
        return -(-((r + 1) * n // w - r * n // w) // self.eval_batch)

    def __len__(self) -> int:
        return sum(p1 - p0 for p0, p1 in self.batches())
