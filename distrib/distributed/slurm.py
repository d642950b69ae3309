"""Inside a SLURM job: agree on a rendezvous no other job can join, then run a task.

SLURM tells every task its rank, world and nodes, but no port. A port derived from the job id
(our first rule: ``20000 + id % 10000``) is shared by jobs 10000 ids apart, or by an array task
and the next job; on one node the later job's ranks then join the earlier job's store and hang.
Here nothing is derived: rank 0 binds a *free* port, tags its store with this job's key (job,
array task, step, requeue count) and publishes ``host:port`` in a file named after that key in a
directory every task shares (the run directory). The other ranks read the file and check the tag
before joining, so a stale file or a reused port is retried, never joined.

`join` then exports the environment torchrun would give a worker (``RANK`` ... ``MASTER_PORT``,
with ``TORCHELASTIC_USE_AGENT_STORE`` so torch's own ``init_process_group`` connects to rank 0's
store instead of binding another), which makes any torchrun-style program run unchanged.
What ``launcher=slurm`` submits for each task (meet, then train or run a script) is
`distrib.cli.slurm_tasks`: it sits above the trainer, this module below the process group.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from distrib.env import is_slurm_step, read_env

log = logging.getLogger(__name__)

_TAG = "distrib/job"
_kept: list[Any] = []  # rank 0's store: the job's rendezvous lives as long as this process


class RendezvousError(RuntimeError):
    """The tasks of one job could not meet; the message names the file and what was seen."""


def job_key(environ: Mapping[str, str]) -> str:
    """Unique to one run of one job step: two jobs, or two allocations of one requeued job,
    never share it (the job id alone is reused by a requeue)."""
    array = environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array}_{environ.get('SLURM_ARRAY_TASK_ID', '0')}" if array else environ["SLURM_JOB_ID"]
    step = environ.get("SLURM_STEP_ID", "0")
    restart = environ.get("SLURM_RESTART_COUNT", "0")
    return f"{job}.{step}.{restart}"


def default_directory(environ: Mapping[str, str]) -> Path:
    """Where tasks meet when no run directory is given: ``$DISTRIB_RENDEZVOUS_DIR``, else
    ``.distrib`` in the directory the job was submitted from (shared on a cluster)."""
    if environ.get("DISTRIB_RENDEZVOUS_DIR"):
        return Path(environ["DISTRIB_RENDEZVOUS_DIR"])
    return Path(environ.get("SLURM_SUBMIT_DIR") or os.getcwd()) / ".distrib"


def join(
    directory: Path | None = None,
    *,
    timeout_s: float = 300.0,
    environ: MutableMapping[str, str] | None = None,
) -> Any:
    """Turn this SLURM task into a torchrun-style worker (see the module docstring); return
    the job's store (prefixed with the job key), or None when there is nothing to join.

    A no-op outside a SLURM step, in a world of one, or when ``MASTER_PORT`` is already set
    (the user's sbatch script chose one). Raises `RendezvousError` after ``timeout_s``.
    """
    from torch.distributed import PrefixStore

    env_map = os.environ if environ is None else environ
    if not is_slurm_step(env_map) or "MASTER_PORT" in env_map or "RANK" in env_map:
        return None
    env = read_env(env_map)
    store = None
    if env.world_size > 1:
        key = job_key(env_map)
        directory = directory or default_directory(env_map)
        tcp = _meet(directory / f"rendezvous-{key}", key, env.rank, env.world_size, timeout_s)
        env_map["MASTER_ADDR"], env_map["MASTER_PORT"] = tcp.host, str(tcp.port)
        env_map["TORCHELASTIC_USE_AGENT_STORE"] = "True"
        store = PrefixStore(f"distrib/{key}/", tcp)
    restart = env_map.get("SLURM_RESTART_COUNT", "0")
    env_map.update(
        RANK=str(env.rank),
        WORLD_SIZE=str(env.world_size),
        LOCAL_RANK=str(env.local_rank),
        LOCAL_WORLD_SIZE=str(env.local_world_size),
        GROUP_RANK=str(env.node_rank),
        ROLE_RANK=str(env.rank),
        ROLE_WORLD_SIZE=str(env.world_size),
        TORCHELASTIC_RUN_ID="slurm-" + job_key(env_map).rsplit(".", 2)[0],
        TORCHELASTIC_RESTART_COUNT=restart,
        TORCHELASTIC_MAX_RESTARTS="0",
    )
    env_map.setdefault("MASTER_ADDR", "127.0.0.1")
    env_map.setdefault("MASTER_PORT", "0")
    env_map.setdefault("OMP_NUM_THREADS", env_map.get("SLURM_CPUS_PER_TASK", "1"))
    return store


def _meet(path: Path, key: str, rank: int, world: int, timeout_s: float) -> Any:
    from torch.distributed import TCPStore

    if rank == 0:
        host = socket.gethostname()
        store = TCPStore(host, 0, world, True, timedelta(seconds=timeout_s), wait_for_workers=False)
        store.set(_TAG, key)
        _kept.append(store)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(f"{host}:{store.port}\n")
        os.replace(tmp, path)  # a reader sees no file or a whole one
        return store
    deadline = time.monotonic() + timeout_s
    seen = "no file yet"
    while time.monotonic() < deadline:
        try:
            host, _, port = path.read_text().strip().rpartition(":")
        except OSError:
            time.sleep(0.2)
            continue
        try:
            client = TCPStore(host, int(port), world, False, timedelta(seconds=5))
            tag = client.get(_TAG).decode()
        except Exception as e:  # a dead port from an earlier run: wait for rank 0's file
            seen = f"{host}:{port} unreachable ({str(e).splitlines()[0][:120]})"
            time.sleep(0.5)
            continue
        if tag == key:
            client.set_timeout(timedelta(seconds=timeout_s))
            _kept.append(client)
            return client
        seen = f"{host}:{port} is the store of another job ({tag}, not {key})"
        time.sleep(0.5)
    raise RendezvousError(
        f"rank {rank}: no rendezvous with rank 0 of job {key} within {timeout_s:g} s "
        f"through {path}: {seen}"
    )
