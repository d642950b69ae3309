"""Start this node's workers: a function (the trainer) or a user's script, on one node or many.

The elastic agent is what torchrun runs; using it (not a home-made process manager) gives the
same worker environment, rendezvous, restarts and teardown. `Topology` says where the workers
are (one node on loopback by default); `distrib.launch.agent` runs them and names the rank
that failed first.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

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
    start_method: str = "spawn",
) -> dict[int, Any]:
    """Run ``fn(*args)`` in this node's workers; return ``{rank: return value}``.

    ``fn`` must be importable by name (workers are spawned, not forked), unless
    ``start_method="fork"`` (see `distrib.launch.notebook`). ``nproc`` and ``max_restarts`` are
    shorthands for a one-node `Topology`.
    """
    topo = topology or Topology(nproc_per_node=nproc or 1, max_restarts=max_restarts or 0)
    return run(
        launch_config(topo, run_id=run_id, start_method=start_method),
        fn,
        args,
        failure_grace_s=topo.failure_grace_s,
        signal_grace_s=topo.signal_grace_s,
        extra_env=worker_env(topo),
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
