"""Local launch: N workers on this machine through torch's elastic launcher.

The elastic agent is what torchrun runs; using it (not a home-made process manager) gives the
same worker environment, failure handling and teardown: when one worker fails, the agent stops
the others and `launch` raises `WorkerFailed` naming the rank, with its traceback.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class WorkerFailed(RuntimeError):
    """A worker raised or died; ``rank`` is the first one to fail."""

    rank: int
    exitcode: int
    traceback: str

    def __str__(self) -> str:
        lines = [ln for ln in self.traceback.strip().splitlines() if ln.strip()]
        last = f": {lines[-1].strip()}" if lines else ""
        return f"worker rank {self.rank} failed (exit code {self.exitcode}){last}"


@dataclass(frozen=True)
class Interrupted(RuntimeError):
    """The launcher was signalled; the agent passed the signal on to the workers and waited
    for them (30 s grace) before returning."""

    signum: int

    def __str__(self) -> str:
        return f"interrupted by signal {self.signum}; the workers got the same signal"


# The agent forwards these to the workers; SIGUSR1 is the cluster's "checkpoint and requeue".
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def launch_config(nproc: int, *, run_id: str | None = None, max_restarts: int = 0) -> Any:
    """The `LaunchConfig` of a single-node job that rendezvous on loopback (port chosen free)."""
    from torch.distributed.launcher.api import LaunchConfig

    from distrib.launch.loopback import register

    return LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=run_id or f"local-{uuid.uuid4().hex[:8]}",
        rdzv_backend=register(),  # c10d, with its stores listening on loopback only
        rdzv_endpoint=f"{LOOPBACK}:0",
        local_addr=LOOPBACK,
        max_restarts=max_restarts,
        monitor_interval=0.1,
        start_method="spawn",
        signals_to_handle=FORWARDED_SIGNALS,
    )


def launch(
    fn: Callable[..., Any],
    args: tuple = (),
    *,
    nproc: int,
    run_id: str | None = None,
    max_restarts: int = 0,
) -> dict[int, Any]:
    """Run ``fn(*args)`` in ``nproc`` workers; return ``{rank: return value}``.

    ``fn`` must be importable by name (workers are spawned, not forked).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    config = launch_config(nproc, run_id=run_id, max_restarts=max_restarts)
    # The agent logs each failed worker's whole traceback; we raise it once, with the rank.
    quiet = logging.getLogger("torch.distributed.elastic.multiprocessing.api")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        return elastic_launch(config, fn)(*args)
    except ChildFailedError as e:
        raise _first_failure(e) from None
    except SignalException as e:
        raise Interrupted(int(e.sigval)) from None
    finally:
        quiet.setLevel(level)


def _first_failure(e: Any) -> WorkerFailed:
    rank, failure = e.get_first_failure()
    trace = ""
    data = getattr(failure, "error_file_data", None) or {}
    message = data.get("message", {}) if isinstance(data, dict) else {}
    if isinstance(message, dict):
        trace = message.get("extraInfo", {}).get("py_callstack", "") or message.get("message", "")
    return WorkerFailed(
        rank=int(rank), exitcode=int(failure.exitcode), traceback=trace or str(failure.message)
    )
