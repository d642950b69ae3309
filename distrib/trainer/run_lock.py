"""One job per run directory: a lock held for the life of the job.

Two trainings started 3 s apart with one ``hydra.run.dir`` both exited 0: the second resumed
from the first's step 16, ``metrics.jsonl`` mixed both, and the final checkpoints were the
second's. Rank 0 of a job now holds an ``fcntl`` lock on ``<run dir>/.lock`` from before it
writes anything until the job ends; a second job is refused in one line naming the holder.
The kernel drops the lock when its process dies, so a crash leaves nothing stale, and the same
job comes back in: an elastic restart or a SLURM requeue starts a new rank 0 only after the old
one is gone. The file itself says who holds it (pid, host, since when) for the message.
(On a network filesystem, ``flock`` is as reliable as that filesystem makes it: NFS v4 and
Lustre's ``flock`` mount option honour it.)
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import socket
from pathlib import Path
from typing import IO

from distrib.errors import ConfigError

LOCK = ".lock"
_held: dict[Path, IO[str]] = {}


def holder(run_dir: Path) -> str | None:
    """Who holds the lock on ``run_dir`` now ("pid 42 on node07 since 07:10:03"), or None."""
    path = Path(run_dir) / LOCK
    if not path.exists() or Path(run_dir).resolve() in _held:
        return None
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return f.read().strip() or "another process"
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def acquire(run_dir: Path) -> None:
    """Hold the lock on ``run_dir`` until `release` (or this process ends); a held one is a
    one-line `ConfigError` naming its holder."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _held:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    f = open(run_dir / LOCK, "a+")  # noqa: SIM115 - held open for the life of the job
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        who = f.read().strip() or "another process"
        f.close()
        raise ConfigError("hydra.run.dir", message=refusal(run_dir, who)) from None
    f.seek(0)
    f.truncate()
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since {now}\n")
    f.flush()
    _held[run_dir] = f


def release(run_dir: Path) -> None:
    f = _held.pop(Path(run_dir).resolve(), None)
    if f is not None:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def refusal(run_dir: Path, who: str) -> str:
    return (
        f"run directory {run_dir} is in use by another job ({who}): wait for it to end, or "
        "give this run its own hydra.run.dir"
    )
