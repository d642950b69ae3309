"""Forked workers: a launched function's workers start as copies of the launcher.

A spawned worker is a fresh interpreter that imports torch, distrib and the user's code again:
1-3 s per worker, and N workers on one node import at once, fighting for its cores. The
launcher has imported all of that already (``python -m distrib.train`` must, to read the
config), so a fork starts a worker in milliseconds. What a fork cannot copy is checked first,
and then the workers are spawned as torchrun's are (`start_method`):

- an initialised CUDA (a forked child cannot use it);
- a process group (the child would inherit its sockets);
- an OpenMP thread pool torch already started (GNU OpenMP keeps the pool but not its threads:
  a forked worker's first multi-threaded op would wait forever);
- a platform other than Linux (macOS's system libraries are not fork-safe).

A forked worker then starts as a spawned one would (`forked`): the signal handlers of a fresh
interpreter, none of the launcher's atexit hooks, ``OMP_NUM_THREADS`` threads; and it ends as
one would: its own atexit hooks run and the files it left open are flushed before the exit.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import io
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from distrib.launch.script import die_with_parent
from distrib.launch.topology import FORWARDED_SIGNALS

_SIGNALS = tuple(getattr(signal, name) for name in FORWARDED_SIGNALS.split(","))
_PROBE_TIMEOUT_S = 5.0
_AUTO_TIMEOUT_S = 1.0
"""A healthy probe takes ~20 ms; where a slow one is cut short, spawning is safe anyway."""


def threads_of(omp_num_threads: str | None, default: int) -> int:
    """A worker's thread count from ``OMP_NUM_THREADS`` ("8", or OpenMP's nested "8,2"),
    ``default`` where it is unset or unreadable."""
    head = (omp_num_threads or "").split(",")[0].strip()
    return int(head) if head.isdigit() and int(head) > 0 else default


def unforkable(threads: int, probe_timeout_s: float = _AUTO_TIMEOUT_S) -> str | None:
    """What in this process a forked worker using ``threads`` threads could not use, or None:
    "platform", "cuda", "process group" or "openmp"."""
    if sys.platform != "linux":
        return "platform"
    import torch

    if torch.cuda.is_initialized():
        return "cuda"
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return "process group"
    if threads > 1 and not openmp_forks_safely(threads, probe_timeout_s):
        return "openmp"  # one thread each never enters an OpenMP region: no probe needed
    return None


def start_method(entrypoint: Callable[..., Any] | str, threads: int) -> str:
    """ "fork" for a function when nothing here forbids it, else "spawn" (a script, a binary)."""
    if not callable(entrypoint) or unforkable(threads):
        return "spawn"
    return "fork"


def openmp_forks_safely(threads: int, timeout_s: float = _PROBE_TIMEOUT_S) -> bool:
    """Whether a forked child of this process can run a ``threads``-wide OpenMP region.

    GNU OpenMP (torch's, on Linux) cannot tell from inside whether its pool survived a fork, and
    neither can we; a throwaway fork that runs one parallel op can. Milliseconds when all is
    well; ``timeout_s`` (then SIGKILL) when the pool is stale.
    """
    pid = os.fork()
    if pid == 0:  # the probe child: never returns
        code = 1
        try:
            import torch

            die_with_parent()
            torch.set_num_threads(threads)
            torch.ones(1 << 17).mul_(2)  # over torch's grain size (32768): one OpenMP region
            code = 0
        finally:
            os._exit(code)
    exited = False
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                exited = True
                return os.waitstatus_to_exitcode(status) == 0
            time.sleep(0.002)
        return False
    finally:
        if not exited:  # hung (the answer), or we were interrupted: never leave it behind
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def forked(fn: Callable[..., Any], *args: Any) -> Any:
    """A forked worker's entry: start as a spawned worker would, run ``fn``, end as one would.

    The agent installed its handlers (they raise in the agent's loop) before forking; a worker
    gets Python's defaults. A forked torch ignores ``OMP_NUM_THREADS`` (read at import), so the
    thread count is set here. multiprocessing ends a forked child with ``os._exit``: no atexit
    and no flush of open files, which a spawned worker's normal exit does; done here, for what
    the worker itself registered and opened (the launcher's are frozen out of sight).
    """
    gc.freeze()  # the launcher's objects: out of the exit flush, and never scanned here
    atexit._clear()  # the launcher's hooks are the launcher's
    for sig in _SIGNALS:
        signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    threads = threads_of(os.environ.get("OMP_NUM_THREADS"), 0)
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        return fn(*args)
    finally:
        atexit._run_exitfuncs()
        for obj in gc.get_objects():  # created by this worker only
            if issubclass(type(obj), io.IOBase):  # type(): some objects warn when asked
                with contextlib.suppress(Exception):
                    if not obj.closed:
                        obj.flush()
