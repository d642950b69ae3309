"""``distrib.notebook_launch``: run a function on N local workers from inside a Jupyter kernel.

In a cell::

    def train(epochs):
        ctx = distrib.init()
        ...
        distrib.shutdown()
        return losses

    results = distrib.notebook_launch(train, 3, nproc=2)  # {rank: train(3)}

The same elastic agent, loopback rendezvous and failure report as `distrib.launch.local`, with
what a kernel needs on top:

- Workers are FORKED, always. A function defined in a notebook lives in the kernel's
  ``__main__``, which a spawned interpreter cannot import; fork needs no pickling. Always, not
  only for ``__main__`` functions, so a function behaves the same wherever it was defined.
- A fork copies the kernel, so state that does not survive a fork is refused in one line before
  anything starts: an initialised CUDA (a forked child cannot use it), a process group, and an
  OpenMP thread pool torch already started (GNU OpenMP keeps the pool but not its threads: a
  forked worker's first multi-threaded op waits forever).
- Each worker starts and ends as a spawned one would (`distrib.launch.fork.forked`): the signal
  handlers of a fresh interpreter (not the agent's, which it installs before forking),
  OMP_NUM_THREADS threads (cores / nproc unless the kernel's environment sets it), and at its
  end its own atexit hooks and open files flushed. It leaves through ``os._exit``
  (multiprocessing's fork), so the kernel's zmq sockets and atexit hooks are never touched; its
  prints reach the cell through ipykernel's fork-aware stdout.
- Interrupting the cell (the kernel's SIGINT) stops every worker -- the signal, then SIGKILL
  after ``signal_grace_s`` -- before `KeyboardInterrupt` is raised in the cell. torch's agent
  leaves its own signal handlers installed; the kernel's are put back.
- A worker's error is raised in the cell as ``RuntimeError("rank 1 failed: ValueError: boom")``
  with that worker's traceback attached as a note.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from distrib.launch.agent import Interrupted, WorkerFailed
from distrib.launch.fork import _SIGNALS, threads_of, unforkable
from distrib.launch.local import launch
from distrib.launch.topology import Topology, _cores

__all__ = ["notebook_launch"]

CUDA_INITIALISED = (
    "CUDA is already initialised in this kernel, and forked workers cannot use CUDA after that: "
    "restart the kernel and call distrib.notebook_launch before any CUDA use in the kernel "
    "(no .cuda(), torch.cuda.* or distrib.init() outside the launched function)"
)
GROUP_INITIALISED = (
    "a process group already exists in this kernel (torch.distributed.init_process_group), and "
    "forked workers would inherit it: call torch.distributed.destroy_process_group() or restart "
    "the kernel, and let the launched function call distrib.init()"
)
OPENMP_STARTED = (
    "torch already ran a multi-threaded op in this kernel, and forked workers using {threads} "
    "threads each would hang in OpenMP: restart the kernel and call torch.set_num_threads(1) "
    "before any torch op in the kernel (the workers still get cores / nproc threads)"
)
_REFUSALS = {"cuda": CUDA_INITIALISED, "process group": GROUP_INITIALISED, "openmp": OPENMP_STARTED}


def notebook_launch(
    fn: Callable[..., Any],
    *args: Any,
    nproc: int = 2,
    max_restarts: int = 0,
    failure_grace_s: float = 3.0,
    signal_grace_s: float = 5.0,
) -> dict[int, Any]:
    """Run ``fn(*args)`` on ``nproc`` forked local workers; return ``{rank: return value}``.

    ``fn`` calls ``distrib.init()`` itself, as any worker does. Raises `RuntimeError` naming
    the rank that failed first, or `KeyboardInterrupt` once an interrupt stopped every worker.
    ``signal_grace_s``: after an interrupt, how long workers get before SIGKILL.
    """
    topology = Topology(
        nproc_per_node=nproc,
        max_restarts=max_restarts,
        failure_grace_s=failure_grace_s,
        signal_grace_s=signal_grace_s,
    )
    # what each worker gets: OMP_NUM_THREADS where the kernel has it, else cores / nproc
    threads = threads_of(os.environ.get("OMP_NUM_THREADS"), max(1, _cores() // nproc))
    refuse_unforkable_state(threads)
    saved = _signal_handlers()
    try:
        return launch(fn, args, topology=topology, start_method="fork")
    except WorkerFailed as failure:
        raise cell_error(failure) from None
    except Interrupted as interrupted:
        if interrupted.signum != signal.SIGINT:
            raise
        raise KeyboardInterrupt(f"interrupted; the {nproc} workers were stopped") from None
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def refuse_unforkable_state(threads: int) -> None:
    """Raise `RuntimeError` with the fix if this process holds state a forked worker cannot use."""
    why = unforkable(threads, probe_timeout_s=5.0)  # a refusal is final: give the probe time
    if why == "platform":
        raise RuntimeError(f"notebook_launch forks its workers: Linux only, not {sys.platform}")
    if why:
        raise RuntimeError(_REFUSALS[why].format(threads=threads))


def _signal_handlers() -> dict[signal.Signals, Any]:
    """The handlers torch's agent replaces (and never restores); only the main thread may."""
    if threading.current_thread() is not threading.main_thread():
        return {}  # the agent registers none off the main thread either
    saved = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    return {sig: handler for sig, handler in saved.items() if handler is not None}


def cell_error(failure: WorkerFailed) -> RuntimeError:
    """``rank N failed: <its last traceback line>``, with the worker's whole traceback as a note."""
    lines = [line.strip() for line in failure.traceback.strip().splitlines() if line.strip()]
    error = RuntimeError(f"rank {failure.rank} failed: {lines[-1]}" if lines else str(failure))
    if lines:
        note = f"rank {failure.rank}'s traceback:\n{failure.traceback.rstrip()}"
        if hasattr(error, "add_note"):  # Python 3.11+
            error.add_note(note)
        else:
            error.args = (f"{error.args[0]}\n{note}",)
    return error
