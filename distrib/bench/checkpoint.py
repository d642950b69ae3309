"""How long a checkpoint blocks training: async vs sync save, and sync save vs a bare torch.save.

    python -m distrib.bench checkpoint [--mb 100] [--repeats 5] [--strategy fsdp --workers 2]

Our sync save blocks while it serialises (a ``torch.save`` into a temporary file); its writer
thread then fsyncs and hashes the file, renames it and updates the manifest -- the checkpoint
counts from then on ("until committed"). A bare ``torch.save`` returns once the bytes are in
the page cache; ``torch.save`` + ``fsync`` is the floor for a save that survives a power cut.

The state is a model-like dict of float32 tensors of about ``--mb`` MB plus an optimizer-like
copy; each variant is timed ``--repeats`` times on the same state, alternating, and the median
is reported. "Blocked" is the time ``save()`` takes to return: for async that is the copy to
CPU memory; the background write is waited for (untimed) before the next round.

``--strategy fsdp`` saves a sharded model of about ``--mb`` MB (parameters plus AdamW state)
from ``--workers`` workers instead: each writes its own shards (DCP), and async blocks only
for DCP's staging; the figures are rank 0's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from distrib.checkpoint import Checkpointer


def make_state(mb: float) -> dict:
    n = int(mb * 2**20 / 4 / 8)  # 8 tensors of float32
    g = torch.Generator().manual_seed(0)
    return {"model": {f"layer{i}.weight": torch.randn(n, generator=g) for i in range(8)}, "step": 1}


def _save_fsync(state: dict, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def run(mb: float, repeats: int) -> dict[str, float]:
    state = make_state(mb)
    size = sum(t.numel() * 4 for t in state["model"].values()) / 2**20
    times: dict[str, list[float]] = {
        "bare": [],
        "bare_fsync": [],
        "sync": [],
        "sync_total": [],
        "async_blocked": [],
        "async_total": [],
    }
    with tempfile.TemporaryDirectory(dir=".") as d:
        root = Path(d)
        sync = Checkpointer(root / "sync", keep_last=1)
        asyn = Checkpointer(root / "async", keep_last=1, async_save=True)
        for r in range(repeats):
            t0 = time.perf_counter()
            torch.save(state, root / "bare.pt")
            times["bare"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _save_fsync(state, root / "bare_fsync.pt")
            times["bare_fsync"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            sync.save(state, step=r, epoch=0, wait=False)  # serialised
            times["sync"].append(time.perf_counter() - t0)
            sync.wait()  # committed and the old one deleted: where the trainer's saves return
            times["sync_total"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            asyn.save(state, step=r, epoch=0)
            times["async_blocked"].append(time.perf_counter() - t0)
            asyn.wait()
            times["async_total"].append(time.perf_counter() - t0)
        asyn.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"checkpoint benchmark: state {size:.0f} MB, median of {repeats} (same machine, same run)"
    )
    print(f"  bare torch.save            {med['bare'] * 1e3:8.1f} ms   (page cache only)")
    print(f"  bare torch.save + fsync    {med['bare_fsync'] * 1e3:8.1f} ms   (on disk)")
    print(f"  distrib sync save          {med['sync'] * 1e3:8.1f} ms   (serialise: training waits)")
    print(f"  distrib sync, committed    {med['sync_total'] * 1e3:8.1f} ms   (+ fsync, sha256)")
    print(
        f"  distrib async, blocked     {med['async_blocked'] * 1e3:8.1f} ms   (copy to CPU memory)"
    )
    print(f"  distrib async, until done  {med['async_total'] * 1e3:8.1f} ms")
    ratio = med["async_blocked"] / med["sync_total"]
    print(f"  async blocked / sync committed = {ratio:.3f}   (target < 0.20)")
    durable = med["sync_total"] / med["bare_fsync"]
    print(f"  sync committed / (bare + fsync) = {durable:.3f}   (target <= 1.2: both durable)")
    print(f"  sync serialise / bare torch.save = {med['sync'] / med['bare']:.3f}   (page cache)")
    return med


def sharded_worker(mb: float, repeats: int, out: str) -> dict[str, float]:
    """Every worker: a sharded MLP with AdamW state, saved sync and async, alternating."""
    import distrib
    from distrib.models import MLP
    from distrib.trainer.state import sharded_state

    ctx = distrib.init()
    width = int((mb * 2**20 / 4 / 3 / 4) ** 0.5)  # params + 2 AdamW moments, 4 layers
    model = distrib.wrap(MLP(width, width, 3, num_classes=width), strategy="fsdp")
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, width)).sum().backward()
    optimizer.step()
    root = Path(out)
    sync = Checkpointer(root / "sync", keep_last=1, enabled=ctx.is_main)
    asyn = Checkpointer(root / "async", keep_last=1, async_save=True, enabled=ctx.is_main)
    times: dict[str, list[float]] = {"sync": [], "async_blocked": [], "async_total": []}
    for r in range(repeats):
        state = sharded_state(model, optimizer)
        t0 = time.perf_counter()
        sync.save({"step": r}, step=r, epoch=0, sharded=state, wait=False)
        times["sync"].append(time.perf_counter() - t0)
        sync.wait()
        t0 = time.perf_counter()
        asyn.save({"step": r}, step=r, epoch=0, sharded=state)
        times["async_blocked"].append(time.perf_counter() - t0)
        asyn.wait()
        distrib.barrier()
        times["async_total"].append(time.perf_counter() - t0)
    asyn.close()
    size = sum(p.stat().st_size for p in (root / "sync").rglob("*.distcp")) / 2**20
    return {"mb": size, **{k: statistics.median(v) for k, v in times.items()}}


def run_sharded(mb: float, repeats: int, workers: int) -> dict[str, float]:
    from distrib.launch.local import launch

    with tempfile.TemporaryDirectory(dir=".") as d:
        med = launch(sharded_worker, (mb, repeats, d), nproc=workers, start_method="spawn")[0]
    print(
        f"checkpoint benchmark, fsdp on {workers} workers: sharded state {med['mb']:.0f} MB "
        f"(model + AdamW), median of {repeats}, rank 0's figures"
    )
    print(f"  distrib sync save          {med['sync'] * 1e3:8.1f} ms   (DCP + fsync + sha256)")
    print(f"  distrib async, blocked     {med['async_blocked'] * 1e3:8.1f} ms   (DCP staging)")
    print(f"  distrib async, until done  {med['async_total'] * 1e3:8.1f} ms")
    ratio = med["async_blocked"] / med["sync"]
    print(f"  async blocked / sync     = {ratio:.3f}   (target <= 0.20)")
    return med


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m distrib.bench checkpoint")
    p.add_argument("--mb", type=float, default=100.0, help="size of the model state in MB")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--strategy", choices=("ddp", "fsdp"), default="ddp")
    p.add_argument("--workers", type=int, default=2, help="with --strategy fsdp")
    ns = p.parse_args(argv)
    if ns.strategy == "fsdp":
        run_sharded(ns.mb, ns.repeats, ns.workers)
    else:
        run(ns.mb, ns.repeats)
