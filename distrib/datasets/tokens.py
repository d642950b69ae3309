"""Token shards on disk: flat arrays of token ids (nanoGPT's ``train.bin``), read by memmap.

Each file is one shard: a raw ``.bin`` array of ``dtype`` (uint16 for vocabularies up to
65,536, else uint32) or a ``.npy`` array (its own dtype). Sample ``i`` of a shard is the window
of ``seq_len + 1`` tokens starting at ``i * seq_len`` (input and shifted target, for
``task=lm``), so a shard of ``n`` tokens holds ``(n - 1) // seq_len`` samples. The files are
memory-mapped, never read whole: a batch copies its own windows and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distrib.datasets.shards import PathArg, ShardFiles, expand
from distrib.errors import ConfigError

SUFFIXES = (".bin", ".npy")
DTYPES = ("uint16", "uint32")


class TokenShards(ShardFiles):
    """Windows of ``seq_len + 1`` token ids from memory-mapped shard files.

    Example: ``TokenShards("data/train.bin", seq_len=1024)``, or a directory of shards, a glob
    (``"data/shard_*.npy"``) or a list; ``data=tokens data.path=...`` in the trainer's config.
    """

    def __init__(self, path: PathArg, seq_len: int = 64, dtype: str = "uint16") -> None:
        if seq_len < 1:
            raise ConfigError("seq_len", seq_len, "an integer >= 1")
        if dtype not in DTYPES:
            raise ConfigError("dtype", dtype, " or ".join(DTYPES))
        self.files, self.seq_len, self.dtype = expand(path, SUFFIXES), seq_len, dtype
        self._arrays: dict[int, np.ndarray] = {}
        self._sizes = [self._windows(i) for i in range(len(self.files))]

    @classmethod
    def preflight(cls, path: PathArg, seq_len: int = 64, dtype: str = "uint16") -> None:
        """Opening every shard's memmap is cheap (a header, a size): the check is building it."""
        cls(path, seq_len, dtype)

    def _array(self, shard: int) -> np.ndarray:
        if shard not in self._arrays:
            self._arrays[shard] = _open(self.files[shard], self.dtype)
        return self._arrays[shard]

    def _windows(self, shard: int) -> int:
        n = len(self._array(shard))
        if n < self.seq_len + 1:
            raise ConfigError(
                str(self.files[shard]),
                message=f"{self.files[shard]}: {n} tokens, fewer than seq_len + 1 = "
                f"{self.seq_len + 1}: no sample in it (truncated?)",
            )
        return (n - 1) // self.seq_len

    def shard_sizes(self) -> list[int]:
        return self._sizes

    def read(self, shard: int, offsets: Sequence[int]) -> Iterator[torch.Tensor]:
        tokens = self._array(shard)
        starts = np.asarray(offsets, dtype=np.int64)[:, None] * self.seq_len
        windows = tokens[starts + np.arange(self.seq_len + 1)]  # copies these windows only
        yield from torch.from_numpy(windows.astype(np.int64))

    def __getstate__(self) -> dict[str, Any]:
        # A pickled memmap carries its whole array: a spawned worker maps the files itself.
        return {**self.__dict__, "_arrays": {}}


def _open(path: Path, dtype: str) -> np.ndarray:
    """The file's tokens as a read-only memmap; a size or header that does not fit, one line."""
    if path.suffix == ".npy":
        try:
            tokens = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as e:
            raise ConfigError(
                str(path), message=f"{path}: not a readable .npy array (truncated?): {e}"
            ) from None
        if tokens.ndim != 1 or tokens.dtype.kind not in "ui":
            raise ConfigError(
                str(path),
                message=f"{path}: a {tokens.ndim}-D {tokens.dtype} array; token shards are "
                "1-D integer arrays",
            )
        return tokens
    size, item = path.stat().st_size, np.dtype(dtype).itemsize
    if size % item:
        raise ConfigError(
            str(path),
            message=f"{path}: {size} bytes is not a whole number of {dtype} tokens ({item} bytes "
            "each): truncated? (or another dtype: data.dtype)",
        )
    if size == 0:
        return np.zeros(0, dtype=dtype)  # mmap cannot map an empty file; _windows says why
    return np.memmap(path, dtype=dtype, mode="r")
