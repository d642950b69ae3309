"""What each worker holds, DDP vs FSDP: the figure a strategy is picked by.

    python -m distrib.bench memory [--workers 2] [--hidden 1024] [--depth 4] [--out DIR]

For each strategy at 1 and N workers it trains a few AdamW steps of an MLP (``--hidden`` wide,
``--depth`` deep) and reports, per rank: the bytes of parameters, gradients and optimizer state
this rank holds (its shards under FSDP), and the peak memory (CUDA max allocated on a GPU, the
process's peak RSS on a CPU -- which includes torch itself, so read it as a difference). The
table goes to stdout; ``memory.json`` to ``--out`` (default ``bench_runs/<time>/``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
from pathlib import Path
from typing import Any

import torch


def _local_bytes(tensors: Any) -> int:
    total = 0
    for t in tensors:
        if isinstance(t, torch.Tensor):
            local = t.to_local() if hasattr(t, "to_local") else t
            total += local.numel() * local.element_size()
    return total


def measure(strategy: str, hidden: int, depth: int, steps: int = 3) -> dict[str, Any]:
    """One worker's figures (every worker of the job calls this)."""
    import distrib
    from distrib.models import MLP

    ctx = distrib.init()
    distrib.seed_all(0)
    model = distrib.wrap(MLP(hidden, hidden, depth), strategy=strategy)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    for _ in range(steps):
        x = torch.randn(64, hidden, device=ctx.device)
        y = torch.randint(0, 10, (64,), device=ctx.device)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    grads = _local_bytes(p.grad for p in model.parameters())
    optimizer.zero_grad(set_to_none=True)
    states = [v for s in optimizer.state.values() for v in s.values()]
    if ctx.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(ctx.device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {
        "strategy": strategy,
        "workers": ctx.world_size,
        "rank": ctx.rank,
        "params_bytes": _local_bytes(model.parameters()),
        "grads_bytes": grads,
        "optim_bytes": _local_bytes(states),
        "peak_bytes": peak,
        "peak_kind": "cuda_max_allocated" if ctx.device.type == "cuda" else "rss",
    }


def run(workers: int, hidden: int, depth: int) -> list[dict[str, Any]]:
    from distrib.launch.local import launch

    rows = []
    for strategy in ("ddp", "fsdp"):
        for n in sorted({1, workers}):
            out = launch(measure, (strategy, hidden, depth), nproc=n, start_method="spawn")
            rows.append(max(out.values(), key=lambda r: r["params_bytes"]))  # the fullest rank
    return rows


def _mb(n: int) -> str:
    return f"{n / 2**20:9.2f}"


def report(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| strategy | workers | params MB | grads MB | optim MB | p+g+o MB | peak MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pgo = r["params_bytes"] + r["grads_bytes"] + r["optim_bytes"]
        lines.append(
            f"| {r['strategy']} | {r['workers']} | {_mb(r['params_bytes'])} | "
            f"{_mb(r['grads_bytes'])} | {_mb(r['optim_bytes'])} | {_mb(pgo)} | "
            f"{_mb(r['peak_bytes'])} |"
        )
    by = {(r["strategy"], r["workers"]): r for r in rows}
    n = max(r["workers"] for r in rows)
    if ("ddp", n) in by and ("fsdp", n) in by and n > 1:

        def pgo(r: dict[str, Any]) -> int:
            return r["params_bytes"] + r["grads_bytes"] + r["optim_bytes"]

        ratio = pgo(by[("fsdp", n)]) / pgo(by[("ddp", n)])
        lines.append(f"\nper-rank params+grads+optim, fsdp / ddp at {n} workers = {ratio:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distrib.bench memory")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--out", type=Path)
    ns = p.parse_args(argv)
    rows = run(ns.workers, ns.hidden, ns.depth)
    text = report(rows)
    print(f"memory benchmark: MLP {ns.hidden} x {ns.depth}, AdamW, per rank (the fullest one)")
    print(text)
    out = ns.out or Path("bench_runs") / datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"written: {out / 'memory.json'}")
    return 0
