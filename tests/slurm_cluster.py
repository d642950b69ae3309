"""The local SLURM cluster the SLURM tests submit to (``tests/slurm/cluster.sh``).

One configuration serves every test: two nodes ``n1``/``n2`` on this host (8 CPUs declared
each, so three 2-task jobs fit on one node of a 2-core machine), a default partition ``debug``
that is never preempted, and ``low``/``high`` partitions where ``high`` preempts ``low`` with
REQUEUE. `start` is idempotent (seconds when it already runs); ``make test`` stops it after.
Under ``CI=true`` a cluster that cannot start fails the run instead of skipping it.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import time

from helpers import ROOT

SCRIPT = ROOT / "tests" / "slurm" / "cluster.sh"
START = ("--nodes", "2", "--preempt", "--cpus", "8")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def skip_reason() -> str | None:
    """Why no cluster can run here (not root, no apt-get and no SLURM), or None."""
    reason = None
    if os.geteuid() != 0:
        reason = "the local SLURM cluster needs root"
    elif shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        reason = "SLURM is not installed and there is no apt-get to install it"
    if reason and _in_ci():
        raise RuntimeError(f"CI=true but {reason}")
    return reason


@functools.cache
def start() -> dict[str, str]:
    """Start (or reuse) the cluster; the environment variables that point at it."""
    done = subprocess.run(
        ["bash", str(SCRIPT), "start", *START],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise RuntimeError(f"cluster.sh start failed:\n{done.stderr[-3000:]}")
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("export SLURM_CONF="))
    conf = line.split("=", 1)[1]
    os.environ["SLURM_CONF"] = conf  # for the squeue/sacct calls the tests make themselves
    return {"SLURM_CONF": conf}


def squeue(*args: str) -> list[str]:
    """``squeue -h`` lines (jobs still queued or running)."""
    out = subprocess.run(["squeue", "-h", *args], capture_output=True, text=True, timeout=30)
    return [ln for ln in out.stdout.splitlines() if ln.strip()]


def cancel_all(timeout: float = 60) -> None:
    """Cancel every job of the cluster and wait until none is left: a test that failed half
    way must not leave a job holding a node (or its rendezvous) for the next test."""
    if "SLURM_CONF" not in os.environ or not squeue():
        return
    subprocess.run(["scancel", "--user", str(os.getuid())], capture_output=True, timeout=30)
    if not wait_until(lambda: not squeue(), timeout=timeout, every=0.5):
        raise RuntimeError(f"jobs still queued {timeout:g} s after scancel: {squeue()}")


def wait_until(predicate, timeout: float, every: float = 1.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False
