"""Where the workers of a job run and how they find each other: pure values, no torch.

`Topology` carries torchrun's options under torchrun's names (``--nnodes``, ``--node-rank``,
``--rdzv-endpoint``, ``--rdzv-id``, ``--local-addr``) plus the network interface to bind; it is
checked on construction, so a bad value is one line naming the option before any port is bound.
`launch_config` turns it into the `LaunchConfig` torch's elastic agent takes:

- one node (the default): our loopback c10d backend, a free port, nothing reachable from outside;
- several nodes, ``node_rank`` given: torch's ``static`` rendezvous at ``rdzv_endpoint``;
- several nodes, no ``node_rank``: torch's ``c10d`` rendezvous at ``rdzv_endpoint``
  (see `distrib.launch.rendezvous`).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any

from distrib.errors import ConfigError

LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 29400  # torchrun's default rendezvous port
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2"
"""The agent passes these on to the workers; SIGUSR1/2 mean "checkpoint and requeue"."""
START_METHODS = ("auto", "spawn", "fork")


@dataclass(frozen=True, kw_only=True)
class Topology:
    """One job's shape, as every node's launcher is told it (torchrun's names)."""

    nproc_per_node: int = 1
    """Workers on this node (one per GPU on a GPU node)."""
    nnodes: int = 1
    """Nodes in the job; each runs the same command."""
    node_rank: int | None = None
    """This node's rank for a static rendezvous; None: c10d assigns ranks (elastic)."""
    rdzv_endpoint: str = ""
    """``host:port`` of the rendezvous (node 0's address); required when ``nnodes > 1``."""
    rdzv_id: str = ""
    """The job's id, equal on every node (and across restarts of one job)."""
    local_addr: str = ""
    """This node's address as the others reach it (when the hostname does not resolve to it)."""
    ifname: str = ""
    """Network interface the workers' gloo/NCCL sockets bind (``GLOO_SOCKET_IFNAME``...)."""
    max_restarts: int = 0
    """Times the agent restarts the whole worker group after a worker failure."""
    rdzv_timeout_s: int = 300
    """How long a node waits for the others to join before giving up."""
    failure_grace_s: float = 3.0
    """After a worker fails, how long the others get after SIGTERM before SIGKILL."""
    signal_grace_s: float = 30.0
    """After the launcher is signalled, how long workers get to checkpoint before SIGKILL."""
    start_method: str = "auto"
    """How a function's workers start: fork (a copy of the launcher: no second import of
    torch), spawn (a fresh interpreter, as torchrun), or auto: fork where `distrib.launch.fork`
    finds it safe. A script's workers are always new processes."""

    def __post_init__(self) -> None:
        _check(self.nproc_per_node >= 1, "--nproc-per-node", self.nproc_per_node, "an integer >= 1")
        _check(self.nnodes >= 1, "--nnodes", self.nnodes, "an integer >= 1")
        _check(self.max_restarts >= 0, "--max-restarts", self.max_restarts, "an integer >= 0")
        _check(
            self.start_method in START_METHODS,
            "--start-method",
            self.start_method,
            " or ".join(START_METHODS),
        )
        _check(self.rdzv_timeout_s >= 1, "--rdzv-timeout", self.rdzv_timeout_s, "seconds >= 1")
        if self.node_rank is not None:
            _check(
                0 <= self.node_rank < self.nnodes,
                "--node-rank",
                self.node_rank,
                f"an integer in [0, {self.nnodes - 1}] (--nnodes={self.nnodes})",
            )
        if self.nnodes > 1 or self.rdzv_endpoint:
            _check(
                bool(self.rdzv_endpoint),
                "--rdzv-endpoint",
                self.rdzv_endpoint,
                "host:port of node 0 when --nnodes > 1",
            )
            split_endpoint(self.rdzv_endpoint)

    @property
    def single_node(self) -> bool:
        return self.nnodes == 1 and not self.rdzv_endpoint

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node


def _check(ok: bool, option: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(option, value, allowed, message=f"{option}={value!r}: expected {allowed}")


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) -> (host, port); a missing or bad port is one line."""
    host, sep, port = endpoint.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            "--rdzv-endpoint",
            endpoint,
            "host:port with a port in 1..65535, e.g. 10.0.0.1:29400",
            message=f"--rdzv-endpoint={endpoint!r}: expected host:port with a port in 1..65535 "
            f"(e.g. 10.0.0.1:{DEFAULT_PORT})",
        )
    return host, int(port)


def worker_env(topology: Topology, cores: int | None = None) -> dict[str, str]:
    """Variables every worker gets on top of torch elastic's own (what torchrun sets too).

    OMP_NUM_THREADS: cores / local workers (torchrun sets 1), so workers do not fight for cores;
    a value the user set wins. The socket interface, when named, for both gloo and NCCL; on one
    node the loopback interface: gloo otherwise binds the address the hostname resolves to,
    and a single-node job is reachable from the network (seen: 10.99.0.1 besides 127.0.0.1).
    """
    env: dict[str, str] = {}
    if "OMP_NUM_THREADS" not in os.environ:
        cores = cores or _cores()
        env["OMP_NUM_THREADS"] = str(max(1, cores // topology.nproc_per_node))
    ifname = topology.ifname or (loopback_ifname() if topology.nnodes == 1 else None)
    if ifname:
        for key in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
            if topology.ifname or key not in os.environ:
                env[key] = ifname
    return env


def loopback_ifname() -> str | None:
    """This machine's loopback interface (``lo`` on Linux), or None where there is none."""
    import socket

    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return None
    return next((n for n in names if n == "lo" or n.startswith("lo0")), None)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def secret_run_id(name: str, environ: Any = None) -> str:
    """The rendezvous key of a multi-node job: its name, and with ``DISTRIB_RDZV_SECRET`` (the
    same on every node) a part derived from it. The c10d store has no authentication: anyone
    who reaches the port and knows the key can write the rendezvous state, which torch
    unpickles; a key with a secret part cannot be guessed from the command line."""
    import hashlib

    secret = (os.environ if environ is None else environ).get("DISTRIB_RDZV_SECRET", "")
    if not secret:
        return name
    return f"{name}-{hashlib.sha256(f'{secret}/{name}'.encode()).hexdigest()[:16]}"


def launch_config(
    topology: Topology, *, run_id: str | None = None, start_method: str = "spawn"
) -> Any:
    """The `LaunchConfig` of ``topology`` (single node: rendezvous on loopback, a free port).

    ``start_method``: "spawn" (a fresh interpreter per worker, what torchrun does) or "fork"
    (a copy of this process: what a notebook needs, where the function lives in ``__main__``).
    """
    from torch.distributed.launcher.api import LaunchConfig

    if start_method not in ("spawn", "fork"):  # "auto" is decided by distrib.launch.local
        raise ValueError(f"start_method={start_method!r}: expected spawn or fork")

    name = (
        run_id
        or topology.rdzv_id
        or (f"local-{uuid.uuid4().hex[:8]}" if topology.single_node else "none")
    )
    common: dict[str, Any] = {
        "nproc_per_node": topology.nproc_per_node,
        # Every node must name the job alike: torchrun's default id when the user gave none.
        "run_id": name if topology.single_node else secret_run_id(name),
        "max_restarts": topology.max_restarts,
        "monitor_interval": 0.1,
        "start_method": start_method,
        "signals_to_handle": FORWARDED_SIGNALS,
    }
    from distrib.launch.rendezvous import register

    loopback, c10d = register()
    if topology.single_node:
        return LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            rdzv_backend=loopback,  # c10d, with its stores listening on loopback only
            rdzv_endpoint=f"{LOOPBACK}:0",
            local_addr=LOOPBACK,
            **common,
        )
    host, port = split_endpoint(topology.rdzv_endpoint)
    timeout = topology.rdzv_timeout_s
    rdzv_conf: dict[str, Any] = {"join_timeout": timeout, "read_timeout": timeout}
    if topology.node_rank is not None:
        backend = "static"
        rdzv_conf["rank"] = topology.node_rank
    else:
        backend = c10d  # torch's c10d, with a fresh bootstrap store per restart
        if topology.local_addr:
            # The hostname may resolve to 127.0.0.1 (containers, namespaces): say who hosts.
            rdzv_conf["is_host"] = topology.local_addr == host
    return LaunchConfig(
        min_nodes=topology.nnodes,
        max_nodes=topology.nnodes,
        rdzv_backend=backend,
        rdzv_endpoint=f"{host}:{port}",
        rdzv_configs=rdzv_conf,
        local_addr=topology.local_addr or None,
        **common,
    )
