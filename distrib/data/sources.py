"""What the streaming loader reads: a sharded source, or any IterableDataset as one.

A *sharded source* is an ``IterableDataset`` with two methods (distrib's readers in
`distrib.datasets` have them; so can yours)::

    def shard_sizes(self) -> Sequence[int]: ...        # samples per shard, fixed order
    def read(self, shard: int, offsets: Sequence[int]) -> Iterator[Any]: ...
        # the samples at these ascending offsets of the shard, in that order

With them every sample of an epoch is read by exactly one loader worker of one rank. Within an
epoch a worker asks each shard for ascending offsets, so a reader that can only go forward
(a file stream) may keep its place between calls.

Any other ``IterableDataset`` is read as one sequential shard (`Sequential`): its length is its
``__len__``, or is counted with one pass at the start, and every rank and loader worker
iterates it whole, keeping only the samples at its own positions -- world x workers times the
reading, each sample still trained on once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from torch.utils.data import IterableDataset

from distrib.errors import ConfigError

log = logging.getLogger("distrib.data.streaming")


@runtime_checkable
class ShardedSource(Protocol):
    """A stream of shards of known sizes that can read given offsets of one shard."""

    def shard_sizes(self) -> Sequence[int]: ...

    def read(self, shard: int, offsets: Sequence[int]) -> Iterator[Any]: ...


class Sequential:
    """A plain IterableDataset as a one-shard source, read forwards (restarted if need be)."""

    def __init__(self, dataset: IterableDataset, *, key: str = "data.train") -> None:
        self.dataset, self.key = dataset, key
        self.n = self._length()
        self._it: Iterator[Any] | None = None
        self._pos = 0

    def _length(self) -> int:
        try:
            return len(self.dataset)  # type: ignore[arg-type]
        except TypeError:
            pass
        t = time.perf_counter()
        n = sum(1 for _ in self.dataset)
        log.info(
            "%s: counted %d samples of %s in %.1f s (one pass; a __len__ would skip it)",
            self.key,
            n,
            type(self.dataset).__name__,
            time.perf_counter() - t,
        )
        return n

    def shard_sizes(self) -> list[int]:
        return [self.n]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_it": None, "_pos": 0}  # an open iterator does not pickle

    def read(self, shard: int, offsets: Sequence[int]) -> Iterator[Any]:
        if not len(offsets):
            return
        if self._it is None or offsets[0] < self._pos:
            self._it, self._pos = iter(self.dataset), 0
        for want in offsets:
            while True:
                try:
                    sample = next(self._it)
                except StopIteration:
                    self._it = None
                    raise ConfigError(self.key, message=self._short()) from None
                self._pos += 1
                if self._pos - 1 == want:
                    yield sample
                    break

    def _short(self) -> str:
        return (
            f"{self.key}: {type(self.dataset).__name__} ended after {self._pos} samples in a "
            f"loader worker, not the {self.n} it has in the main process: it splits itself "
            "(get_worker_info() or the rank?); distrib splits streams itself: let it yield all"
        )


def as_source(dataset: Any, key: str = "data.train") -> ShardedSource:
    """The dataset itself when it is a sharded source, else the dataset read as `Sequential`."""
    if isinstance(dataset, ShardedSource):
        return dataset
    return Sequential(dataset, key=key)
