"""Shard files: finding them from a ``path`` argument, and the base of the readers over them.

A reader is a sharded source (`distrib.data.sources`): ``shard_sizes()`` and ``read(shard,
offsets)``; the streaming loader splits it over ranks and loader workers. Its ``preflight``
runs in the launching process before any worker starts (`distrib.config.targets`), so a
missing, truncated or empty shard list is one line there, not a traceback from every worker.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import IterableDataset

from distrib.errors import ConfigError

PathArg = str | Sequence[str]


def expand(path: PathArg, suffixes: tuple[str, ...]) -> list[Path]:
    """Shard files of ``path``: a file, a directory (its files with these suffixes, sorted), a
    glob, or a list of those -- in that order. Missing files and empty lists are errors."""
    items = [path] if isinstance(path, str | Path) else list(path)
    if not items:
        raise ConfigError("path", message=f"path={list(items)!r}: an empty list of shard files")
    files: list[Path] = []
    for item in map(str, items):
        p = Path(item)
        if any(c in item for c in "*?["):
            found = sorted(Path(f) for f in glob.glob(item) if Path(f).suffix in suffixes)
        elif p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix in suffixes)
        elif p.is_file():
            found = [p]
        else:
            raise ConfigError("path", message=f"{item}: no such shard file or directory")
        if not found:
            kinds = ", ".join(suffixes)
            raise ConfigError("path", message=f"path={item!r}: no shard files ({kinds}) in it")
        files += found
    return files


class ShardFiles(IterableDataset):
    """Base of distrib's readers: one file a shard. Iterated directly (without distrib's loader)
    it yields every sample in file order."""

    files: list[Path]

    def shard_sizes(self) -> list[int]:
        raise NotImplementedError

    def read(self, shard: int, offsets: Sequence[int]) -> Iterator[Any]:
        raise NotImplementedError

    def __len__(self) -> int:
        return sum(self.shard_sizes())

    def __iter__(self) -> Iterator[Any]:
        for shard, n in enumerate(self.shard_sizes()):
            yield from self.read(shard, range(n))
