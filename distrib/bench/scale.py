"""What a rendezvous and a restart cost as the job grows: torch's real c10d code, simulated nodes.

    python -m distrib.bench scale [--nodes 8,64] [--timeout-s 60] [--ckpt-mb 20]

Each of N threads is one node's agent: it builds the very handler ``distrib-c10d`` builds
(`distrib.launch.rendezvous.c10d_handler`: torch's ``DynamicRendezvousHandler`` over a
``C10dRendezvousBackend``) on its own TCPStore client of one TCPStore server, here on
loopback, as every agent of a job connects to the endpoint's store. The client is wrapped in
a ``Store`` that counts the operations and the bytes they carry. All N join a round with
min = max = N nodes (the launch), then all join the next one (a restart: each agent of an
elastic job calls ``next_rendezvous`` again). Timed: from the release of all N to the last
one's rank. The store's memory is the size of the rendezvous state at the end: torch keeps
the whole state (every node, its heartbeat) in one key that each node rewrites with
``compare_set``, so that value is what the server holds and what every op moves.

The server runs in this process: its I/O loop is C++ and does not hold the GIL, while the
N agents' Python does, so the times are an upper bound of what N real machines take (they
run their agents in parallel) and the op counts, which do not depend on the machine, are
the figures to extrapolate from. An N too large for this machine stops at ``--timeout-s``.

The restart's other parts are measured once each, on this machine: a process launch
(interpreter and ``import torch, distrib.trainer``), loading a ``--ckpt-mb`` checkpoint
(model and AdamW state, through distrib's ``Checkpointer.load``: sha256, then
``torch.load``) and the first training step after it (one CPU process, no collective).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from distrib.checkpoint import Checkpointer
from distrib.launch.rendezvous import C10D_BACKEND, LOOPBACK, c10d_handler, loopback_store

HEADER = "| N nodes | rendezvous s | re-join s | store ops | re-join ops | MB moved | state KB |"


class CountingStore(dist.Store):
    """A TCPStore client that counts its operations and the bytes they send and receive;
    one per agent, sharing one `Counter`."""

    def __init__(self, inner: Any, counter: Counter) -> None:
        super().__init__()
        self.inner, self.counter = inner, counter

    def set(self, key: str, value: bytes) -> None:
        self.counter.add(len(key) + len(value))
        self.inner.set(key, value)

    def get(self, key: str) -> bytes:
        value = self.inner.get(key)
        self.counter.add(len(key) + len(value))
        return value

    def compare_set(self, key: str, expected: bytes, desired: bytes) -> bytes:
        value = self.inner.compare_set(key, expected, desired)
        self.counter.add(len(key) + len(expected) + len(desired) + len(value))
        return value

    def add(self, key: str, amount: int) -> int:
        self.counter.add(len(key) + 8)
        return self.inner.add(key, amount)

    def check(self, keys: list[str]) -> bool:
        self.counter.add(sum(map(len, keys)))
        return self.inner.check(keys)

    def wait(self, keys: list[str], *timeout: Any) -> None:
        self.counter.add(sum(map(len, keys)))
        self.inner.wait(keys, *timeout)

    def multi_get(self, keys: list[str]) -> list[bytes]:
        values = self.inner.multi_get(keys)
        self.counter.add(sum(map(len, keys)) + sum(map(len, values)))
        return values


class Counter:
    def __init__(self) -> None:
        self.ops = self.bytes = 0
        self._lock = threading.Lock()

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.ops += 1
            self.bytes += nbytes

    def take(self) -> tuple[int, int]:
        """(ops, bytes) since the last take."""
        with self._lock:
            out = (self.ops, self.bytes)
            self.ops = self.bytes = 0
        return out


def rendezvous(n: int, timeout_s: float) -> dict[str, Any] | None:
    """N simulated agents join one round and then the next; None if not within ``timeout_s``."""
    from torch.distributed.elastic.rendezvous.api import RendezvousParameters

    store_s = max(timeout_s, 60.0)  # one store op may wait that long; the deadline is below
    server = loopback_store(store_s)
    run_id = f"scale{n}"
    counter = Counter()
    params = RendezvousParameters(
        backend=C10D_BACKEND, endpoint=f"{LOOPBACK}:{server.port}", run_id=run_id,
        min_nodes=n, max_nodes=n, local_addr=LOOPBACK, join_timeout=str(int(timeout_s) + 1),
    )  # fmt: skip
    handlers = []
    for _ in range(n):
        client = dist.TCPStore(LOOPBACK, server.port, is_master=False, multi_tenant=True,
                               timeout=timedelta(seconds=store_s))  # fmt: skip
        serve = lambda addr, port: loopback_store(store_s)  # noqa: E731 (rank 0's round store)
        handlers.append(c10d_handler(CountingStore(client, counter), params, serve))
    counter.take()  # building the handlers (one compare_set each) is not the rendezvous
    rounds: list[list[Any]] = [[None] * n, [None] * n]
    gates = [threading.Barrier(n + 1) for _ in range(4)]  # start, done, start, done

    def agent(i: int) -> None:
        try:
            for r in range(2):
                gates[2 * r].wait()
                info = handlers[i].next_rendezvous()
                rounds[r][i] = (info.rank, info.world_size)
                gates[2 * r + 1].wait()
        except threading.BrokenBarrierError:
            pass
        except Exception as e:  # a failed agent: its round never completes, which is reported
            rounds[0][i] = rounds[0][i] or e

    threads = [threading.Thread(target=agent, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout_s
    out: dict[str, Any] = {"n": n}
    for r, name in enumerate(("rendezvous", "rejoin")):
        gates[2 * r].wait()
        t0 = time.perf_counter()
        try:
            gates[2 * r + 1].wait(timeout=max(0.0, deadline - time.monotonic()))
        except threading.BrokenBarrierError:
            for gate in gates:
                gate.abort()
            for t in threads:  # each gives up at its join timeout; the server lives until then
                t.join(timeout=max(0.0, deadline + 3 - time.monotonic()))
            return None
        out[f"{name}_s"] = time.perf_counter() - t0
        out[f"{name}_ops"], out[f"{name}_bytes"] = counter.take()
        out[f"{name}_ranks"] = rounds[r]
    for h in handlers:
        h._stop_heartbeats()  # torch's keep-alive timers: every node, every 5 s, from now on
    out["state_bytes"] = len(server.get(f"torch.rendezvous.{run_id}"))
    return out


def restart_parts(ckpt_mb: float) -> dict[str, float]:
    """Seconds of a restart's other parts on this machine, each measured once."""
    from distrib.models import MLP

    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    code = "import torch, distrib.trainer"
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    launch_s = time.perf_counter() - t0
    width = max(8, int((ckpt_mb * 2**20 / 4 / 3 / 4) ** 0.5))  # params + 2 AdamW moments
    torch.manual_seed(0)
    model = MLP(width, width, 3, num_classes=width)
    optimizer = torch.optim.AdamW(model.parameters())
    x = torch.randn(32, width)
    model(x).sum().backward()
    optimizer.step()
    with tempfile.TemporaryDirectory() as d:
        ckpt = Checkpointer(Path(d), keep_last=1)
        ckpt.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, step=1,
                  epoch=0)  # fmt: skip
        path = Path(d) / str(ckpt.head)
        mb = path.stat().st_size / 2**20
        t0 = time.perf_counter()
        state = Checkpointer(Path(d), keep_last=1).load(path)  # sha256 checked, then torch.load
        load_s = time.perf_counter() - t0
    model = MLP(width, width, 3, num_classes=width)
    optimizer = torch.optim.AdamW(model.parameters())
    t0 = time.perf_counter()
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    model(x).sum().backward()
    optimizer.step()
    step_s = time.perf_counter() - t0
    return {"launch_s": launch_s, "load_s": load_s, "step_s": step_s, "ckpt_mb": mb}


def fit_power(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(a, k) of y = a * x**k, least squares in log-log; k = 2 when there is one point."""
    if len(xs) < 2:
        return ys[0] / xs[0] ** 2, 2.0
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    k = sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True))
    k /= sum((a - mx) ** 2 for a in lx)
    return math.exp(my - k * mx), k


def _row(r: dict[str, Any]) -> str:
    moved = (r["rendezvous_bytes"] + r["rejoin_bytes"]) / 2**20
    return (
        f"| {r['n']:,} | {r['rendezvous_s']:.2f} | {r['rejoin_s']:.2f} | "
        f"{r['rendezvous_ops']:,} | {r['rejoin_ops']:,} | {moved:.2f} | "
        f"{r['state_bytes'] / 1024:.1f} |"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distrib.bench scale")
    p.add_argument("--nodes", default="8,64", help="comma-separated N, smallest first")
    p.add_argument("--timeout-s", type=float, default=60.0, help="per N; then stop there")
    p.add_argument("--ckpt-mb", type=float, default=20.0, help="checkpoint size (model + AdamW)")
    p.add_argument("--no-restart", action="store_true", help="the rendezvous table only")
    ns = p.parse_args(argv)
    sizes = [int(n) for n in ns.nodes.split(",")]
    results = []
    grows = "yes: store ops grow with N"
    print(f"## Rendezvous: torch {torch.__version__} c10d, N agents as threads, {os.cpu_count()} "
          "cores, one TCPStore server on loopback")  # fmt: skip
    print(f"\n{HEADER}\n|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    for n in sizes:
        r = rendezvous(n, ns.timeout_s)
        if r is None:
            print(f"N={n}: did not finish within {ns.timeout_s:g} s on this machine", flush=True)
            break
        for name in ("rendezvous", "rejoin"):
            got = r[f"{name}_ranks"]
            if sorted(g[0] for g in got) != list(range(n)) or {g[1] for g in got} != {n}:
                print(f"N={n}: the {name} round gave ranks {got}", file=sys.stderr)
                return 1
        results.append(r)
        print(_row(r), flush=True)
    if results:
        last = results[-2:]  # the growth where it was measured largest
        ns_ = [float(r["n"]) for r in last]
        a, k = fit_power(ns_, [float(r["rejoin_ops"]) for r in last])
        ba, bk = fit_power(ns_, [float(r["rejoin_bytes"]) for r in last])
        grows = f"yes: store ops ~ N^{k:.1f}, bytes ~ N^{bk:.1f} (fitted)"
        print(
            f"\nre-join ops ~ N^{k:.2f}, bytes ~ N^{bk:.2f} (fitted at N = "
            f"{', '.join(str(r['n']) for r in last)}; measured up to N={results[-1]['n']})"
        )
        for gpus in (1_000, 16_000):
            nodes = gpus // 8
            print(
                f"extrapolated, {gpus:,} GPUs = {nodes:,} nodes (8 GPUs each): re-join "
                f"~{a * nodes**k:,.0f} ops, ~{ba * nodes**bk / 2**20:,.0f} MB moved"
            )
    if not ns.no_restart:
        parts = restart_parts(ns.ckpt_mb)
        rdzv = next((r["rejoin_s"] for r in results if r["n"] <= 8), float("nan"))
        print(f"\n## Restart parts on this machine (checkpoint {parts['ckpt_mb']:.0f} MB)")
        print("\n| part | seconds | grows with N nodes? |\n|---|---:|---|")
        print(f"| launch (python, import torch + distrib) | {parts['launch_s']:.2f} | no |")
        print(f"| rendezvous (re-join, N={sizes[0]}) | {rdzv:.2f} | {grows} |")
        print(f"| checkpoint load (sha256 + torch.load) | {parts['load_s']:.2f} | "
              "per rank no; every rank reads it all |")  # fmt: skip
        print(f"| first step (CPU, no collective) | {parts['step_s']:.2f} | no |")
    return 0
