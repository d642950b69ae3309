"""Loaders over streamed (iterable) data: each rank's share of every global batch, read by its
loader workers in turn, resumable at any world size and worker count.

The order and the split are `distrib.data.order`'s; what is read is `distrib.data.sources`'s.
Each epoch builds a DataLoader over a `_RankStream` (``batch_size=None``: each worker yields
whole micro-batches) and the loop sees the same interface as for map-style data:
``loader.sampler.set_position(epoch, consumed)``, ``len(loader)``, ``epoch_samples()``.

Why not torchdata's ``StatefulDataLoader``: its state is one dict per loader worker, so it
cannot re-split a stream for another world size and refuses another worker count (an
AssertionError), and it is unmaintained since mid-2025. Here a rank's and a worker's place is a
function of the global position that every checkpoint already holds (``consumed``); the
checkpoint adds what that position is counted in (`StreamLoader.state_dict`) so a resume over
other data is refused instead of silently reading other samples.
"""

from __future__ import annotations

import itertools
import logging
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from distrib.data.order import Plan, StreamSampler
from distrib.data.sources import Sequential, ShardedSource, as_source
from distrib.distributed.process_group import Context
from distrib.errors import ConfigError
from distrib.rng import seed_loader_worker

log = logging.getLogger("distrib.data.streaming")

STATE_FORMAT = 1


class _RankStream(IterableDataset):
    """One epoch of one rank, as each loader worker reads it: micro-batch ``i`` is worker
    ``i % K``'s. Samples are read a shuffle window at a time (all of this worker's positions in
    it at once, ascending per shard) and handed out batch by batch."""

    def __init__(
        self, source: ShardedSource, sampler: StreamSampler, collate: Callable, key: str
    ) -> None:
        self.source, self.sampler, self.collate, self.key = source, sampler, collate, key

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        workers, me = (info.num_workers, info.id) if info is not None else (1, 0)
        mine = itertools.islice(self.sampler.batches(), me, None, workers)
        plan, epoch = self.sampler.plan, self.sampler.epoch
        chunk = plan.window if plan.shuffle else 0  # unshuffled: read batch by batch
        ahead: deque[tuple[int, int]] = deque()
        cache: dict[int, Any] = {}
        loaded = 0  # every position of mine below this is in the cache (or handed out)
        more = True
        while True:
            if not ahead:
                nxt = next(mine, None) if more else None
                if nxt is None:
                    return
                ahead.append(nxt)
            if ahead[0][1] > loaded:  # the oldest batch is not all read: read the next window
                lo = max(loaded, ahead[0][0])
                hi = (lo // chunk + 1) * chunk if chunk else ahead[0][1]
                while more and ahead[-1][0] < hi:  # later batches of mine starting in it
                    nxt = next(mine, None)
                    more = nxt is not None
                    if more:
                        ahead.append(nxt)  # type: ignore[arg-type]
                wanted = [np.arange(max(a, lo), min(b, hi)) for a, b in ahead if a < hi and b > lo]
                cache.update(self._read(plan, epoch, np.concatenate(wanted)))
                loaded = hi
            while ahead and ahead[0][1] <= loaded:
                p0, p1 = ahead.popleft()
                yield self.collate([cache.pop(p) for p in range(p0, p1)])

    def _read(self, plan: Plan, epoch: int, positions: np.ndarray) -> dict[int, Any]:
        shards, offsets = plan.locate(epoch, positions)
        rank_of = np.argsort(plan.shard_order(epoch))  # a shard's place in the epoch's order
        out: dict[int, Any] = {}
        for s in sorted(set(shards.tolist()), key=lambda s: rank_of[s]):
            m = shards == s
            offs, inverse = np.unique(offsets[m], return_inverse=True)
            got = list(itertools.islice(self.source.read(s, offs.tolist()), len(offs)))
            if len(got) < len(offs):
                raise ConfigError(self.key, message=self._short(s, offs, len(got)))
            for p, i in zip(positions[m].tolist(), inverse.tolist(), strict=True):
                out[p] = got[i]
        return out

    def _short(self, shard: int, offsets: np.ndarray, got: int) -> str:
        files = getattr(self.source, "files", None)
        name = str(files[shard]) if files is not None else f"shard {shard}"
        size = self.sampler.plan.sizes[shard]
        return (
            f"{self.key}: {name} gave {got} of the {len(offsets)} samples asked for (offsets "
            f"{int(offsets[0])}..{int(offsets[-1])} of the {size} it had at the start): "
            "changed or truncated while training?"
        )


class StreamLoader:
    """A rank's loader over a stream: `loader` and `eval_loader` return it for iterable data."""

    def __init__(
        self,
        source: ShardedSource,
        sampler: StreamSampler,
        *,
        num_workers: int = 0,
        seed: int = 0,
        key: str = "data.train",
        pin_memory: bool = False,
        collate_fn: Callable | None = None,
        **kwargs: Any,
    ) -> None:
        self.source, self.sampler, self.num_workers = source, sampler, num_workers
        self.seed, self.key, self.pin_memory = seed, key, pin_memory
        self.collate = collate_fn or default_collate
        self.kwargs = kwargs

    def __len__(self) -> int:
        return self.sampler.num_batches()

    def __iter__(self) -> Iterator[Any]:
        s = self.sampler
        # A worker's seed depends on the position, so a resumed epoch draws what it would have.
        g = torch.Generator().manual_seed(hash((self.seed, s.rank, s.epoch, s.start)) % 2**62)
        dl = DataLoader(
            _RankStream(self.source, s, self.collate, self.key),
            batch_size=None,
            num_workers=self.num_workers,
            worker_init_fn=seed_loader_worker,
            generator=g,
            pin_memory=self.pin_memory,
            **self.kwargs,
        )
        try:
            yield from dl
        except Exception as e:  # a worker's ConfigError comes back with its traceback in it:
            said = str(e).splitlines()  # keep its one line
            ours = [ln for ln in said if ln.startswith("distrib.errors.ConfigError: ")]
            if said and said[0].startswith("Caught ConfigError") and ours:
                raise ConfigError(self.key, message=ours[-1].split(": ", 1)[1]) from None
            raise

    def state_dict(self, epoch: int, consumed: int) -> dict[str, Any]:
        """What a checkpoint records of the stream: the position and what it is counted in.

        Every rank's and worker's place (shard, offset, shuffle window) follows from these, so
        the same checkpoint resumes on any world size and worker count.
        """
        p = self.sampler.plan
        nxt: dict[str, int] = {}
        if consumed < self.sampler.epoch_samples():
            shard, offset = p.locate(epoch, np.array([consumed]))
            nxt = {"shard": int(shard[0]), "offset": int(offset[0])}
        return {
            "format": STATE_FORMAT,
            **_identity(p, self.sampler.drop_last),
            "epoch": epoch,
            "consumed": consumed,
            "next": nxt,
            "world_size": self.sampler.world,
            "num_workers": self.num_workers,
        }

    def check_resume(self, saved: dict[str, Any] | None, path: Path) -> str:
        """Refuse (one line, both values) a checkpoint whose position means other samples here;
        else say how the rest of the epoch is re-split."""
        if saved is None:
            return ""
        if saved.get("format") != STATE_FORMAT:
            raise ConfigError(
                str(path), saved.get("format"), f"a stream position of format {STATE_FORMAT}"
            )
        now = _identity(self.sampler.plan, self.sampler.drop_last)
        for key, value in now.items():
            if saved.get(key) != value:
                raise ConfigError(
                    self.key,
                    message=f"{self.key}: the stream's {_WHAT[key]} was {saved.get(key)!r} in "
                    f"{path.name}, now {value!r}: its data position would name other samples "
                    "(restore the data and settings, or trainer.resume=never)",
                )
        nxt = saved.get("next") or {}
        return (
            f"{self.key}: stream resumed at global sample {saved['consumed']} of epoch "
            f"{saved['epoch'] + 1} (shard {nxt.get('shard')}, offset {nxt.get('offset')}), "
            f"written by {saved['world_size']} rank(s) x {saved['num_workers']} loader worker(s), "
            f"read by {self.sampler.world} x {self.num_workers}"
        )


_WHAT = {
    "samples": "sample count",
    "shards": "shard count",
    "sizes_crc32": "shard sizes (crc32)",
    "seed": "seed (trainer.seed)",
    "shuffle": "shuffle",
    "window": "shuffle window (trainer.shuffle_buffer)",
    "drop_last": "tail rule (trainer.drop_last)",
}


def _identity(plan: Plan, drop_last: bool) -> dict[str, Any]:
    sizes = np.asarray(plan.sizes, dtype=np.int64).tobytes()
    return {
        "samples": plan.samples,
        "shards": len(plan.sizes),
        "sizes_crc32": zlib.crc32(sizes),
        "seed": plan.seed,
        "shuffle": plan.shuffle,
        "window": plan.window,
        "drop_last": drop_last,
    }


def stream_loader(
    dataset: IterableDataset,
    *,
    batch_size: int,
    ctx: Context,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = True,
    accum: int = 1,
    num_workers: int = 0,
    shuffle_buffer: int = 4096,
    key: str = "data.train",
    **kwargs: Any,
) -> StreamLoader:
    """A training `StreamLoader`; ``batch_size`` is the global batch (see `distrib.loader`)."""
    source = as_source(dataset, key)
    plan = Plan(
        sizes=tuple(int(n) for n in source.shard_sizes()),
        seed=seed,
        shuffle=shuffle,
        window=max(1, shuffle_buffer),
    )
    sampler = StreamSampler(
        plan=plan,
        global_batch=batch_size,
        world=ctx.world_size,
        rank=ctx.rank,
        accum=accum,
        drop_last=drop_last,
    )
    if ctx.is_main:
        log.info("%s", describe(sampler, source, num_workers, key))
    cuda = ctx.device.type == "cuda"
    return StreamLoader(
        source, sampler, num_workers=num_workers, seed=seed, key=key, pin_memory=cuda, **kwargs
    )


def stream_eval_loader(
    dataset: IterableDataset,
    *,
    batch_size: int,
    ctx: Context,
    num_workers: int = 0,
    key: str = "data.eval",
) -> StreamLoader:
    """An evaluation `StreamLoader`: every sample once over all ranks; ``batch_size`` per rank."""
    source = as_source(dataset, key)
    plan = Plan(sizes=tuple(int(n) for n in source.shard_sizes()), shuffle=False)
    sampler = StreamSampler(
        plan=plan,
        global_batch=batch_size * ctx.world_size,
        world=ctx.world_size,
        rank=ctx.rank,
        eval_batch=batch_size,
    )
    cuda = ctx.device.type == "cuda"
    return StreamLoader(source, sampler, num_workers=num_workers, key=key, pin_memory=cuda)


def describe(sampler: StreamSampler, source: ShardedSource, num_workers: int, key: str) -> str:
    """The log line that states the epoch's rule for the tail and who reads what."""
    p, b = sampler.plan, sampler.global_batch
    used = sampler.epoch_samples()
    if sampler.drop_last:
        tail = f"the last {p.samples - used} dropped (trainer.drop_last=true)"
    else:
        tail = f"{used - p.samples} padded by wrapping to its start (trainer.drop_last=false)"
    shuffle = f"shard order + windows of {p.window}" if p.shuffle else "none"
    readers = f"{sampler.world} rank(s) x {max(num_workers, 1)} reader(s)"
    if isinstance(source, Sequential):
        how = (
            f"a plain IterableDataset: each of {readers} reads all of it and keeps its own "
            "(give it shard_sizes() and read() to read each sample once)"
        )
    else:
        how = f"each sample read once by one of {readers}"
    return (
        f"{key}: streaming {len(p.sizes)} shard(s), {p.samples} samples; each epoch "
        f"{used // b} global batches of {b}, {tail}; shuffle: {shuffle}; {how}"
    )
