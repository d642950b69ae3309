"""Start this node's workers: a function (the trainer) or a user's script, on one node or many.

The elastic agent is what torchrun runs; using it (not a home-made process manager) gives the
same worker environment, rendezvous, restarts and teardown. `Topology` says where the workers
are (one node on loopback by default); `distrib.launch.agent` runs them and names the rank
that failed first.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from distrib.launch import fork
from distrib.launch.agent import Interrupted, WorkerFailed, run
from distrib.launch.topology import LOOPBACK, Topology, launch_config, worker_env

__all__ = ["LOOPBACK", "Interrupted", "Topology", "WorkerFailed", "launch", "launch_script"]


def launch(
    fn: Callable[..., Any] | str,
    args: tuple = (),
    *,
    nproc: int | None = None,
    topology: Topology | None = None,
    run_id: str | None = None,
    max_restarts: int | None = None,
    start_method: str | None = None,
) -> dict[int, Any]:
    """Run ``fn(*args)`` in this node's workers; return ``{rank: return value}``.

    The workers are forked from this process where that is safe, else spawned
    (`distrib.launch.fork`; the topology's ``start_method`` says which, or ``start_method``
    here). A spawned worker imports ``fn`` by name. ``nproc`` and ``max_restarts`` are
    shorthands for a one-node `Topology`.
    """
    topo = topology or Topology(nproc_per_node=nproc or 1, max_restarts=max_restarts or 0)
    env = worker_env(topo)
    method = start_method or topo.start_method
    if method == "auto":
        threads = fork.threads_of(env.get("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS")), 1)
        method = fork.start_method(fn, threads)
    if method == "fork":
        fn, args = fork.forked, (fn, *args)
    return run(
        launch_config(topo, run_id=run_id, start_method=method),
        fn,
        args,
        failure_grace_s=topo.failure_grace_s,
        signal_grace_s=topo.signal_grace_s,
        extra_env=env,
    )


def launch_script(
    target: str, script_args: list[str], *, module: bool, topology: Topology
) -> dict[int, Any]:
    """Run a user's script (or ``-m module``) on every worker, as torchrun would.

    Each worker runs it through `distrib.launch.script`, which records an uncaught exception
    (with its traceback) where the agent reads it, so the failed rank is reported right even
    for scripts that never import distrib.
    """
    runner = ("-u", "-m", "distrib.launch.script", "-m" if module else "--", target)
    return launch(sys.executable, (*runner, *script_args), topology=topology)
