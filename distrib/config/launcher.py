"""The ``launcher.*`` schema: how workers are started, locally or through SLURM.

Values only; the launch side turns them into a `Topology` (local) or `SlurmOptions` (SLURM)
and checks them there, so the worker side never imports the launch side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from distrib.errors import check

LAUNCHERS = ("local", "slurm")
START_METHODS = ("auto", "fork", "spawn")


@dataclass(kw_only=True)
class LauncherConfig:
    """How workers are started (``launcher.*``); ignored inside a torchrun or SLURM worker."""

    name: str = "local"
    """local: torch's elastic launcher on this node (each node of a job runs the command);
    slurm: submit the job to SLURM (submitit), one SLURM task per worker."""
    nproc: int = 1
    """Workers per node (one per GPU); 1 on one node without restarts trains in place."""
    max_restarts: int = 0
    """Times the elastic agent restarts the whole worker group after a failure; the restarted
    workers resume from the newest good checkpoint of the run directory."""
    nnodes: int = 1
    """Nodes in the job (torchrun's --nnodes); local: every node runs the same command."""
    node_rank: int | None = None
    """This node's rank for a static rendezvous (--node-rank); null: c10d assigns ranks."""
    rdzv_endpoint: str = ""
    """host:port of the rendezvous on node 0 (--rdzv-endpoint); required when nnodes > 1."""
    rdzv_id: str | None = None
    """The job's id on every node (--rdzv-id); also names the run directory outputs/<id>."""
    rdzv_timeout_s: int = 300
    """Seconds a node waits for the others to join."""
    local_addr: str = ""
    """This node's address as the other nodes reach it (--local-addr)."""
    ifname: str = ""
    """Network interface for gloo/NCCL sockets (sets GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME)."""
    signal_grace_s: float = 30.0
    """After SIGTERM/SIGUSR1 reach the launcher, how long the workers get to checkpoint before
    SIGKILL; keep it under the cluster's own grace (SLURM's GraceTime)."""
    start_method: str = "auto"
    """local: fork (workers are copies of the launcher, which has imported torch and your code
    already: no second import), spawn (fresh interpreters, as torchrun), or auto: fork unless
    CUDA, a process group or a started OpenMP pool in the launcher forbid it."""

    # --- launcher=slurm: what sbatch is asked for (distrib.launch.slurm) ---
    partition: str = ""
    """SLURM partition (empty: the cluster's default)."""
    time_min: int = 60
    """Time limit per allocation in minutes; a longer training requeues itself and goes on."""
    gpus_per_node: int = 0
    """GPUs per node (= launcher.nproc for one GPU per worker)."""
    cpus_per_task: int = 1
    """CPU cores per worker (also its OMP_NUM_THREADS)."""
    mem_gb: float = 0
    """Memory per node in GB (0: the partition's default)."""
    account: str = ""
    """sbatch --account (empty: your default)."""
    qos: str = ""
    """sbatch --qos (empty: the default)."""
    signal_delay_s: int = 120
    """SLURM signals the job this long before its time limit: the workers save and requeue."""
    sbatch: dict[str, Any] = field(default_factory=dict)
    """Any other sbatch option, e.g. {constraint: a100, exclusive: true}."""
    wait: bool = False
    """Follow the submitted job to its end (through requeues) and exit with its status."""

    def __post_init__(self) -> None:
        check(self.name in LAUNCHERS, "launcher.name", self.name, " or ".join(LAUNCHERS))
        check(self.nproc >= 1, "launcher.nproc", self.nproc, "an integer >= 1")
        check(self.max_restarts >= 0, "launcher.max_restarts", self.max_restarts, "an integer >= 0")
        grace = self.signal_grace_s
        check(grace > 0, "launcher.signal_grace_s", grace, "seconds > 0")
        check(self.nnodes >= 1, "launcher.nnodes", self.nnodes, "an integer >= 1")
        method = self.start_method
        check(method in START_METHODS, "launcher.start_method", method, "auto, fork or spawn")
        # Endpoint, node rank and the rest are checked where they become a launch topology
        # (`distrib.cli.train.topology`): the worker side never imports the launch side.

    @property
    def in_place(self) -> bool:
        """One worker on one node, nothing to restart: train in this process, no agent."""
        return (
            self.name == "local" and self.nproc == 1 and self.nnodes == 1 and not self.max_restarts
        )
