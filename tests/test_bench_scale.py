"""The rendezvous-at-scale benchmark (distrib/bench/scale.py) at tiny N: torch's real c10d
handler, as distrib-c10d builds it, gives every simulated node its own rank in one world, and
the store operations it counts are real and grow with N. Timings are never asserted: they are
the benchmark's output, and this machine is shared."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import torch.distributed as dist

from distrib.bench import scale
from distrib.launch.rendezvous import LOOPBACK, loopback_store


def test_every_operation_of_the_wrapped_store_is_counted_with_its_bytes():
    server = loopback_store(10)
    client = dist.TCPStore(LOOPBACK, server.port, is_master=False, timeout=timedelta(seconds=10))
    counter = scale.Counter()
    store = scale.CountingStore(client, counter)
    store.set("k", b"abc")
    assert store.get("k") == b"abc"
    assert store.compare_set("k", b"abc", b"de") == b"de"
    assert store.add("n", 2) == 2
    assert store.check(["k"])
    store.wait(["k"])
    assert store.multi_get(["k"]) == [b"de"]
    # key + value(s) each: set 4, get 4, compare_set 1+3+2+2, add 1+8, check 1, wait 1, multi 3
    assert counter.take() == (7, 4 + 4 + 8 + 9 + 1 + 1 + 3)
    assert dist.PrefixStore("p", store).add("m", 1) == 1  # through C++, as torch's handler calls
    assert counter.take() == (1, len("p/m") + 8)


def test_every_simulated_node_gets_its_own_rank_of_one_world_and_ops_grow_with_n():
    ops = {}
    for n in (2, 4):
        r = scale.rendezvous(n, timeout_s=30)
        assert r is not None, f"N={n} did not finish"
        for name in ("rendezvous", "rejoin"):  # the launch's round, then a restart's
            assert sorted(rank for rank, _ in r[f"{name}_ranks"]) == list(range(n))
            assert {world for _, world in r[f"{name}_ranks"]} == {n}
            assert r[f"{name}_ops"] >= 2 * n  # each node reads the state and writes its join
        assert r["state_bytes"] > 0
        assert scale._row(r).startswith(f"| {n} | ")  # the CLI's table row
        ops[n] = r["rendezvous_ops"] + r["rejoin_ops"]
    assert ops[4] > ops[2], ops


def test_an_n_too_large_for_the_timeout_stops_with_one_line_under_the_header():
    # 64 nodes cannot meet within half a second (torch staggers first joins by up to 0.3 s);
    # in a process of its own: the agents it gave up on die with it, not in this one later
    res = subprocess.run(
        [sys.executable, "-m", "distrib.bench", "scale", "--nodes", "64", "--timeout-s", "0.5",
         "--no-restart"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert scale.HEADER in res.stdout
    assert res.stdout.endswith("|\nN=64: did not finish within 0.5 s on this machine\n")
