"""Who am I: rank, world and rendezvous address of this worker, read from its environment.

One pure function, `read_env`, maps an environment (``os.environ`` by default, any mapping in
tests) to a frozen `WorkerEnv`. Sources, in order:

1. torchrun / torch elastic (and our local launcher, which is torch elastic): ``RANK``,
   ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``, ``MASTER_ADDR/PORT``.
2. A SLURM job step (``srun``): ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``,
   ``SLURM_NODEID``, ``SLURM_TASKS_PER_NODE``; the master is the first host of
   ``SLURM_JOB_NODELIST`` (compressed forms such as ``node[01-04,7]`` are expanded by submitit's
   parser); ``MASTER_PORT`` when the job script sets one, else 0: not agreed yet, which
   `distrib.distributed.slurm.join` settles (rank 0 binds a free port and publishes it to the
   others).
3. Otherwise a lone process: rank 0 of 1.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

_TORCHRUN_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class WorkerEnv:
    """A read-only view of this worker's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    source: str = "single"
    """Where the values came from: ``torchrun``, ``slurm`` or ``single``."""

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and logs; the others stay quiet."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def is_torchrun_worker(environ: Mapping[str, str]) -> bool:
    return all(k in environ for k in _TORCHRUN_KEYS)


def is_slurm_step(environ: Mapping[str, str]) -> bool:
    """True inside an ``srun`` step; the batch script itself (no step id) is not a worker."""
    return "SLURM_PROCID" in environ and "SLURM_NTASKS" in environ and "SLURM_STEP_ID" in environ


def is_worker(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process was started as one worker of a job (so it must not launch again)."""
    environ = os.environ if environ is None else environ
    if is_torchrun_worker(environ):
        return True
    return is_slurm_step(environ) and int(environ["SLURM_NTASKS"]) > 1


def read_env(environ: Mapping[str, str] | None = None) -> WorkerEnv:
    """Read this worker's `WorkerEnv` from ``environ`` (default ``os.environ``)."""
    environ = os.environ if environ is None else environ
    if is_torchrun_worker(environ):
        return _from_torchrun(environ)
    if is_slurm_step(environ):
        return _from_slurm(environ)
    return WorkerEnv(
        master_addr=environ.get("MASTER_ADDR", "127.0.0.1"),
        master_port=int(environ.get("MASTER_PORT", 29500)),
    )


def _from_torchrun(environ: Mapping[str, str]) -> WorkerEnv:
    world = int(environ["WORLD_SIZE"])
    local_world = int(environ.get("LOCAL_WORLD_SIZE", world))
    rank = int(environ["RANK"])
    return WorkerEnv(
        rank=rank,
        world_size=world,
        local_rank=int(environ["LOCAL_RANK"]),
        local_world_size=local_world,
        node_rank=int(environ.get("GROUP_RANK", rank // max(local_world, 1))),
        master_addr=environ.get("MASTER_ADDR", "127.0.0.1"),
        master_port=int(environ.get("MASTER_PORT", 29500)),
        source="torchrun",
    )


def _from_slurm(environ: Mapping[str, str]) -> WorkerEnv:
    node_rank = int(environ.get("SLURM_NODEID", 0))
    per_node = expand_tasks_per_node(environ.get("SLURM_TASKS_PER_NODE", ""))
    world = int(environ["SLURM_NTASKS"])
    local_world = per_node[node_rank] if node_rank < len(per_node) else world
    hosts = expand_nodelist(environ.get("SLURM_JOB_NODELIST", environ.get("SLURM_NODELIST", "")))
    return WorkerEnv(
        rank=int(environ["SLURM_PROCID"]),
        world_size=world,
        local_rank=int(environ.get("SLURM_LOCALID", 0)),
        local_world_size=local_world,
        node_rank=node_rank,
        master_addr=environ.get("MASTER_ADDR", hosts[0] if hosts else "127.0.0.1"),
        master_port=int(environ.get("MASTER_PORT", 0)),
        source="slurm",
    )


def expand_nodelist(nodelist: str) -> list[str]:
    """``node[01-02,7],gpu1`` -> ``['node01', 'node02', 'node7', 'gpu1']`` (submitit's parser)."""
    if not nodelist:
        return []
    from submitit.slurm.slurm import _parse_node_list

    return list(_parse_node_list(nodelist))


def expand_tasks_per_node(spec: str) -> list[int]:
    """``2(x3),1`` -> ``[2, 2, 2, 1]``: SLURM's run-length form of tasks on each node."""
    counts: list[int] = []
    for part in filter(None, spec.split(",")):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if m is None:
            raise ValueError(f"SLURM_TASKS_PER_NODE={spec!r}: cannot parse {part!r}")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts
