"""``python -m distrib.bench data``: whole batches by index against a per-sample DataLoader,
then token shards on disk with 0 and 2 loader workers against memory (`distrib.bench.shards`).

The same small workload (an MLP 64 -> 256 x 2 on synthetic data, batch 256, AdamW) trains
through both loaders of `distrib.loader` -- `TensorBatches` (one gather per batch) and the
DataLoader (fetch and collate per sample, what an in-memory dataset got before) -- interleaved,
after a warm-up, the median of several repeats. Both serve the same batches in the same order.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from distrib.bench import shards
from distrib.data import loader
from distrib.datasets import synthetic
from distrib.distributed.process_group import Context
from distrib.env import WorkerEnv
from distrib.models import MLP


def _samples_per_s(dl: object, steps: int, device: torch.device, train: bool = True) -> float:
    """Samples per second through ``steps`` batches: loading alone, or with a training step."""
    torch.manual_seed(0)
    model = MLP(in_features=64, hidden=256, depth=2).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    done, start = 0, time.perf_counter()
    epoch = 0
    while done < steps:
        dl.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        for x, y in dl:  # type: ignore[attr-defined]
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if train:
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            done += 1
            if done == steps:
                break
        epoch += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * 256 / (time.perf_counter() - start)


def run(steps: int = 60, repeats: int = 5, device: str = "auto") -> dict[str, float]:
    """Median samples/s of each loader and their ratio."""
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu")
    if device not in ("auto", "cpu"):
        dev = torch.device(device)
    ctx = Context(env=WorkerEnv(), device=dev, backend="gloo")
    data = synthetic("train", size=8192, features=64)
    ways = {
        "batches by index": loader(data, batch_size=256, ctx=ctx),
        "DataLoader per sample": loader(data, batch_size=256, ctx=ctx, collate_fn=default_collate),
    }
    for dl in ways.values():  # warm-up
        _samples_per_s(dl, 5, dev)
    rates: dict[str, list[float]] = {}
    for _ in range(repeats):
        for name, dl in ways.items():
            for what, train in (("load", False), ("train", True)):
                rates.setdefault(f"{what}: {name}", []).append(
                    _samples_per_s(dl, steps, dev, train)
                )
    out = {name: statistics.median(r) for name, r in rates.items()}
    for what in ("load", "train"):
        out[f"{what} ratio"] = (
            out[f"{what}: batches by index"] / out[f"{what}: DataLoader per sample"]
        )
    return out


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m distrib.bench data", description=__doc__)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--shard-steps", type=int, default=60, help="batches per repeat, on-disk part")
    p.add_argument("--shard-repeats", type=int, default=3)
    args = p.parse_args(argv)
    out = run(args.steps, args.repeats, args.device)
    print("| samples/s (MLP 64->256x2, batch 256) | by index | DataLoader per sample | ratio |")
    print("|---|---|---|---|")
    for what, label in (("load", "loading alone"), ("train", "loading + training step")):
        fast, slow = out[f"{what}: batches by index"], out[f"{what}: DataLoader per sample"]
        print(f"| {label} | {fast:,.0f} | {slow:,.0f} | {out[f'{what} ratio']:.2f}x |")
    print(f"(median of {args.repeats} interleaved repeats of {args.steps} batches)")
    print()
    streamed = shards.run(args.shard_steps, args.shard_repeats)
    print("\n".join(shards.table(streamed, args.shard_steps, args.shard_repeats)))
