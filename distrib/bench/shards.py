"""The streaming half of ``python -m distrib.bench data``: token shards on disk (memory-mapped,
`distrib.datasets.TokenShards`, split by `distrib.data.streaming`) with 0 and 2 loader
workers against the same windows in memory (a TensorDataset served by index).

Windows of 64 + 1 tokens of a 512-token vocabulary in 4 uneven shards (2M tokens, written to a
temporary directory), batch 64; loading alone (a whole epoch, 487 batches) and loading + a
TinyGPT training step (``steps`` batches). Each repeat starts an epoch, so the loader workers'
start is part of what is measured; interleaved, the median of the repeats.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from distrib.data import loader
from distrib.datasets import TokenShards
from distrib.distributed.process_group import Context
from distrib.env import WorkerEnv
from distrib.models import TinyGPT
from distrib.tasks import NextToken

SEQ, VOCAB, BATCH = 64, 512, 64
SHARD_TOKENS = (700_000, 300_000, 550_000, 450_000)


def _write(d: Path) -> np.ndarray:
    tokens = np.random.default_rng(0).integers(0, VOCAB, sum(SHARD_TOKENS), dtype=np.uint16)
    start = 0
    for i, n in enumerate(SHARD_TOKENS):
        tokens[start : start + n].tofile(d / f"shard-{i}.bin")
        start += n
    return tokens


def _rate(dl: object, steps: int, train: bool) -> float:
    """Samples per second through ``steps`` batches of a fresh epoch."""
    torch.manual_seed(0)
    model, task = TinyGPT(vocab_size=VOCAB, context=SEQ), NextToken()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    dl.sampler.set_epoch(0)  # type: ignore[attr-defined]
    start = time.perf_counter()
    for done, batch in enumerate(dl, start=1):  # type: ignore[call-overload]
        if train:
            loss = task(model=model, batch=batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if done == steps:
            break
    return steps * BATCH / (time.perf_counter() - start)


def run(steps: int = 60, repeats: int = 3) -> dict[str, float]:
    """Median samples/s of each way, loading alone (``load: ...``) and with a step."""
    ctx = Context(env=WorkerEnv(), device=torch.device("cpu"), backend="gloo")
    with tempfile.TemporaryDirectory() as tmp:
        tokens = _write(Path(tmp))
        disk = TokenShards(tmp, seq_len=SEQ)
        # the same windows in memory, shard by shard, as TokenShards cuts them
        windows, start = [], 0
        for n in SHARD_TOKENS:
            count = (n - 1) // SEQ
            idx = start + np.arange(count)[:, None] * SEQ + np.arange(SEQ + 1)
            windows.append(torch.from_numpy(tokens[idx].astype(np.int64)))
            start += n
        memory = TensorDataset(torch.cat(windows))
        ways = {
            "in memory, by index": loader(memory, batch_size=BATCH, ctx=ctx),
            "on disk, 0 workers": loader(disk, batch_size=BATCH, ctx=ctx, num_workers=0),
            "on disk, 2 workers": loader(disk, batch_size=BATCH, ctx=ctx, num_workers=2),
        }
        for dl in ways.values():  # warm-up
            _rate(dl, 3, True)
        rates: dict[str, list[float]] = {}
        for _ in range(repeats):
            for name, dl in ways.items():
                for what, train in (("load", False), ("train", True)):
                    n = steps if train else len(dl)  # type: ignore[arg-type]
                    rates.setdefault(f"{what}: {name}", []).append(_rate(dl, n, train))
    return {name: statistics.median(r) for name, r in rates.items()}


def table(out: dict[str, float], steps: int, repeats: int) -> list[str]:
    names = ("in memory, by index", "on disk, 0 workers", "on disk, 2 workers")
    lines = [
        f"| samples/s (token windows of {SEQ + 1}, batch {BATCH}, TinyGPT) | "
        + " | ".join(names)
        + " |",
        "|---|---|---|---|",
    ]
    rows = (("load", "loading alone (an epoch)"), ("train", f"loading + training step ({steps})"))
    for what, label in rows:
        lines.append(f"| {label} | " + " | ".join(f"{out[f'{what}: {n}']:,.0f}" for n in names))
        lines[-1] += " |"
    lines.append(f"(median of {repeats} interleaved repeats, each from a fresh epoch)")
    return lines
