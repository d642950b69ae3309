"""Local parquet or JSON Lines files read through Hugging Face ``datasets`` (the
``hf-datasets`` extra), one file a shard.

Each shard is read as a streaming ``datasets.IterableDataset`` (``load_dataset(...,
streaming=True)``) in Arrow batches: rows between a worker's own are skipped in Arrow, never
turned into Python. Row counts come from parquet footers (no data read) or from counting the
lines of a JSON Lines file. A sample is the listed ``columns`` as tensors: one column gives the
tensor itself (``columns=[tokens]`` for ``task=lm``), several a tuple (``[x, y]``).

What is *not* used, and why: ``split_dataset_by_node`` gives each rank whole files when their
number divides the world size (uneven files then give ranks unequal steps, and a rank that ends
first hangs the others in an all_reduce; the order depends on the world size), else every rank
reads everything and keeps 1 row in world_size. Its ``state_dict`` records (shard, row) for
one split and one worker count, so it cannot re-split, and its resume skips rows by reading
them, as this reader does. distrib splits by global position instead (`distrib.data.order`).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distrib.datasets.shards import PathArg, ShardFiles, expand
from distrib.errors import ConfigError

SUFFIXES = (".parquet", ".jsonl", ".json")


@dataclass
class _Cursor:
    """Where this process stands in one shard: the Arrow batch holding rows ``start...``."""

    shard: int
    batches: Iterator[Any]
    table: Any = None
    start: int = 0


class HFShards(ShardFiles):
    """Rows of local parquet / JSON Lines files as tensors, through Hugging Face ``datasets``.

    Example: ``HFShards("data/*.parquet", columns=["tokens"])``; ``data=hf data.path=...``.
    """

    batch_rows = 1024
    """Rows per Arrow batch read (what is decoded at a time)."""

    def __init__(self, path: PathArg, columns: Sequence[str] | str = ("tokens",)) -> None:
        self.columns = _columns(columns)
        self.files = expand(path, SUFFIXES)
        _require_datasets()
        import datasets  # noqa: F401  here, once: forked loader workers inherit the module

        self._sizes = [_rows(f, self.columns) for f in self.files]
        self._cursor: _Cursor | None = None

    @staticmethod
    def preflight(path: PathArg, columns: Sequence[str] | str = ("tokens",)) -> None:
        """Footers and line counts only (pyarrow, not datasets): cheap before any worker."""
        _require_datasets()
        for f in expand(path, SUFFIXES):
            _rows(f, _columns(columns))

    def shard_sizes(self) -> list[int]:
        return self._sizes

    def _batches(self, shard: int) -> Iterator[Any]:
        import datasets

        f = self.files[shard]
        builder = "parquet" if f.suffix == ".parquet" else "json"
        ds = datasets.load_dataset(builder, data_files=[str(f)], split="train", streaming=True)
        return iter(ds.select_columns(self.columns).with_format("arrow").iter(self.batch_rows))

    def read(self, shard: int, offsets: Sequence[int]) -> Iterator[Any]:
        c = self._cursor
        if c is None or c.shard != shard or (len(offsets) and offsets[0] < c.start):
            c = self._cursor = _Cursor(shard, self._batches(shard))
        for want in offsets:
            while c.table is None or want >= c.start + c.table.num_rows:
                if c.table is not None:
                    c.start += c.table.num_rows
                c.table = next(c.batches, None)
                if c.table is None:  # fewer rows than counted: the loader names the file
                    self._cursor = None
                    return
            yield self._sample(c.table.slice(want - c.start, 1).to_pylist()[0])

    def _sample(self, row: dict[str, Any]) -> Any:
        values = [row[c] if isinstance(row[c], str) else torch.tensor(row[c]) for c in self.columns]
        return values[0] if len(values) == 1 else tuple(values)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cursor": None}  # an open file stream does not pickle


def _columns(columns: Sequence[str] | str) -> list[str]:
    return [columns] if isinstance(columns, str) else list(columns)


def _require_datasets() -> None:
    if importlib.util.find_spec("datasets") is None:
        raise ConfigError(
            "_target_",
            message="distrib.datasets.HFShards needs Hugging Face datasets: "
            "pip install 'distrib[hf-datasets]'",
        )


def _rows(path: Path, columns: list[str]) -> int:
    """Rows of one shard, and its columns checked: from the parquet footer, or by lines."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # pyarrow's ArrowInvalid: no footer, a cut file
            raise ConfigError(
                str(path), message=f"{path}: not a readable parquet file (truncated?): {e}"
            ) from None
        _has_columns(path, pf.schema_arrow.names, columns)
        return int(pf.metadata.num_rows)
    n, first, last = 0, "", ""
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                n, last = n + 1, line.decode()
                first = first or last
    try:
        names = list(json.loads(first)) if first else []
        json.loads(last or "{}")
    except json.JSONDecodeError:
        raise ConfigError(
            str(path), message=f"{path}: its first or last line is not a JSON object (truncated?)"
        ) from None
    if n:
        _has_columns(path, names, columns)
    return n


def _has_columns(path: Path, names: list[str], columns: list[str]) -> None:
    missing = [c for c in columns if c not in names]
    if missing:
        raise ConfigError(
            "columns",
            message=f"columns={columns}: {path} has no {', '.join(missing)} "
            f"(it has {', '.join(names)})",
        )
