"""Run one node's workers under torch's elastic agent, and report how they ended.

This is torchrun's engine (`LocalElasticAgent` + a rendezvous handler) with six changes torchrun
users work around by hand:

- a failed job names the rank that failed FIRST, with its traceback: a peer that died of the
  broken connection afterwards is not the cause, even when its exit was seen in the same second;
- when a worker fails, the others get ``failure_grace_s`` (a few seconds) between SIGTERM and
  SIGKILL, not 30 s: a rank hung in a collective or in user code cannot hold the job;
- a worker that exits with the requeue code (75: "checkpoint written, requeue me") ends the job
  with 75 instead of being restarted as if it had crashed;
- when restarts are exhausted the error says so, with the restart count;
- workers die with the agent (``PR_SET_PDEATHSIG``), so a launcher killed by SIGKILL leaves
  none behind.
- the handler's reads of the rendezvous store are given deadlines (`store_watch.watched`), so
  a node cut off from node 0 by a network partition still sees its workers end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from distrib.bounded import call_within
from distrib.launch.rendezvous_errors import (
    Captured,
    captured_stderr,
    describe,
    is_rendezvous_error,
)
from distrib.launch.store_watch import watched

REQUEUE_EXIT_CODE = 75  # the worker side's preemption.REQUEUE_EXIT_CODE (no import: other side)
INTERRUPT_EXIT_CODE = 130  # ... and its INTERRUPT_EXIT_CODE: Ctrl-C, checkpoint written
SAVED_EXIT_CODES = (REQUEUE_EXIT_CODE, INTERRUPT_EXIT_CODE)

# Words in a worker's error that say it died because a PEER went away, not of its own fault.
_COLLATERAL = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "pair closure",
    "Socket closed",
    "DistNetworkError",
    "ECONNRESET",
    "EPIPE",
)


@dataclass(frozen=True)
class WorkerFailed(RuntimeError):
    """A worker raised or died; ``rank`` is the first one to fail (its root cause)."""

    rank: int
    exitcode: int
    traceback: str
    restarts: int = 0
    max_restarts: int = 0

    def __str__(self) -> str:
        lines = [ln for ln in self.traceback.strip().splitlines() if ln.strip()]
        if self.exitcode < 0:
            try:
                name = signal.Signals(-self.exitcode).name
            except ValueError:
                name = f"signal {-self.exitcode}"
            # A Python error first, then a signal (gloo aborting at exit): the error is the news.
            how = f"failed ({name} after an error)" if lines else f"was killed by {name}"
        elif lines:
            how = f"failed (exit code {self.exitcode})"
        else:
            how = f"exited with code {self.exitcode} without a Python traceback"
        last = f": {lines[-1].strip()}" if lines else ""
        tail = ""
        if self.max_restarts:
            tail = f" after {self.restarts} of {self.max_restarts} restart(s); no restarts left"
        return f"worker rank {self.rank} {how}{last}{tail}"


class RendezvousFailed(RuntimeError):
    """The nodes never met: wrong or unreachable endpoint, a node missing, a timeout."""


@dataclass(frozen=True)
class Interrupted(RuntimeError):
    """The launcher was signalled; the agent passed the signal on to the workers and waited
    for them (``signal_grace_s``) before returning. ``exit_codes``: how each local worker ended
    (None: still running when it was killed)."""

    signum: int
    exit_codes: dict[int, int | None] = field(default_factory=dict)

    @property
    def requeue(self) -> bool:
        """Every local worker exited with 75: they agreed to stop and the checkpoint is written."""
        codes = list(self.exit_codes.values())
        return bool(codes) and all(c == REQUEUE_EXIT_CODE for c in codes)

    @property
    def saved(self) -> bool:
        """Every local worker stopped after writing the checkpoint (75 or, for Ctrl-C, 130)."""
        codes = list(self.exit_codes.values())
        return bool(codes) and all(c in SAVED_EXIT_CODES for c in codes)

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        if self.requeue:
            return f"{name}: the workers saved a checkpoint and exited for a requeue"
        return f"interrupted by {name}; the workers got the same signal"


def _make_agent_class() -> type:
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent

    class Agent(LocalElasticAgent):
        """torch's agent, with the changes listed in the module docstring."""

        def __init__(self, *args: Any, failure_grace_s: float, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.failure_grace_s = failure_grace_s
            self.exit_codes: dict[int, int | None] = {}
            self.ended_first: list[Any] = []  # failures seen before anything was torn down
            self.captured = Captured()  # what the last rendezvous printed to fd 2

        @property
        def restarts_done(self) -> int:
            return self._worker_group.spec.max_restarts - self._remaining_restarts

        def _start_workers(self, worker_group: Any) -> dict[int, Any]:
            ids = super()._start_workers(worker_group)
            self.ended_first = []
            self._watch_close(self._pcontext)
            return ids

        def _watch_close(self, pcontext: Any) -> None:
            """torch tears the other workers down itself as soon as one fails (SIGTERM, 30 s,
            SIGKILL): from the context's poll (a script) or from ``torch.multiprocessing``'s
            join (a function). Before that teardown, note which workers had ALREADY ended:
            only those can be the cause; the rest are its victims. And use a short grace:
            after a failure nobody is saving anything worth waiting for."""
            grace = max(1, int(self.failure_grace_s))
            close = pcontext.close

            def watched_close(death_sig: Any = None, timeout: int = 30) -> None:
                if not self.ended_first:
                    self.ended_first = _failed(pcontext, _exit_codes(pcontext))
                close(death_sig, grace if death_sig is None else timeout)

            pcontext.close = watched_close
            pc = getattr(pcontext, "_pc", None)  # torch.multiprocessing's ProcessContext
            if pc is None:
                return
            join = pc.join

            def watched_join(timeout: Any = None, grace_period: Any = None) -> Any:
                before = _exit_codes(pcontext)
                try:
                    return join(timeout, grace if grace_period is None else grace_period)
                except Exception as e:  # ProcessRaisedException / ProcessExitedException
                    index = getattr(e, "error_index", None)
                    if index is not None:
                        before[index] = pc.processes[index].exitcode
                    self.ended_first = _failed(pcontext, before)
                    raise

            pc.join = watched_join

        def _monitor_workers(self, worker_group: Any) -> Any:
            result = super()._monitor_workers(worker_group)
            self._last_result = result
            codes = [f.exitcode for f in [*result.failures.values(), *self.ended_first]]
            if result.is_failed() and any(c in SAVED_EXIT_CODES for c in codes):
                self._remaining_restarts = 0  # saved and stopped on purpose: not a crash to retry
            return result

        def _rendezvous(self, worker_group: Any) -> None:
            with captured_stderr() as self.captured:  # the nodes meet: C++ warnings, quieted
                super()._rendezvous(worker_group)
            sys.stderr.write(self.captured.without_frames())

        def _restart_workers(self, worker_group: Any) -> None:
            """One line per restart, on the launcher's stderr: which rank ended how, and which
            restart this is (torch logs it at INFO only; the run seemed to just go on)."""
            result = getattr(self, "_last_result", None)
            if result is not None and result.is_failed():
                failure = self.first_failure(result)
                cause = str(dataclasses.replace(failure, max_restarts=0))  # no "no restarts left"
                print(
                    f"distrib: {cause.removeprefix('worker ')}; restart {self.restarts_done} of "
                    f"{self._worker_group.spec.max_restarts}: the workers start again",
                    file=sys.stderr,
                    flush=True,
                )
            super()._restart_workers(worker_group)

        def _stop_workers(self, worker_group: Any) -> None:
            self._shutdown(timeout=max(1, int(self.failure_grace_s)))

        def _shutdown(self, death_sig: signal.Signals = signal.SIGTERM, timeout: int = 30) -> None:
            pcontext = self._pcontext
            super()._shutdown(death_sig, timeout)
            if pcontext is not None:
                self.exit_codes = _exit_codes(pcontext)

        def first_failure(self, result: Any) -> WorkerFailed:
            global_rank = {w.local_rank: w.global_rank for w in self._worker_group.workers}
            candidates = self.ended_first or list(result.failures.values())
            failure = root_cause(candidates)
            return WorkerFailed(
                rank=int(global_rank.get(failure.local_rank, failure.local_rank)),
                exitcode=int(failure.exitcode),
                traceback=_traceback(failure),
                restarts=self.restarts_done,
                max_restarts=self._worker_group.spec.max_restarts,
            )

    return Agent


def _failed(pcontext: Any, codes: dict[int, int | None]) -> list[Any]:
    """`ProcessFailure` of each worker in ``codes`` that exited non-zero (error file read now)."""
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    pids = pcontext.pids()
    return [
        ProcessFailure(
            local_rank=rank,
            pid=pids.get(rank, -1),
            exitcode=code,
            error_file=pcontext.error_files[rank],
        )
        for rank, code in codes.items()
        if code is not None and code != 0
    ]


def _when(failure: Any) -> float:
    """When it failed, as precisely as its error file says (our script runner: sub-second)."""
    data = getattr(failure, "error_file_data", None) or {}
    message = data.get("message") if isinstance(data, dict) else None
    if isinstance(message, dict):
        extra = message.get("extraInfo", {})
        with contextlib.suppress(TypeError, ValueError):
            return float(extra.get("time") or extra.get("timestamp"))
    return float("inf")  # no error file (a signal, os._exit): order by the other keys


def _exit_codes(pcontext: Any) -> dict[int, int | None]:
    """How each local worker ended (None: still running), for either kind of context."""
    codes: dict[int, int | None] = {}
    pc = getattr(pcontext, "_pc", None)  # MultiprocessContext: a function entry point
    if pc is not None:
        for i, proc in enumerate(pc.processes):
            codes[i] = proc.exitcode
    for i, handler in getattr(pcontext, "subprocess_handlers", {}).items():  # a binary
        codes[i] = handler.proc.poll()
    return codes


def _traceback(failure: Any) -> str:
    data = getattr(failure, "error_file_data", None) or {}
    message = data.get("message", {}) if isinstance(data, dict) else {}
    trace = ""
    if isinstance(message, dict):
        trace = message.get("extraInfo", {}).get("py_callstack", "") or message.get("message", "")
    elif isinstance(message, str):
        trace = message
    if trace in ("<NONE>", "<N/A>") or "To enable traceback" in trace:
        return ""  # torch's placeholders when the worker wrote no error file
    return trace


def _is_collateral(failure: Any) -> bool:
    """Died of a peer's death: its own error says the connection broke. (A worker killed by
    a signal with no error of its own -- the OOM killer, a user, a scheduler -- is a cause;
    one that reported a broken connection and then aborted in gloo's teardown is not.)"""
    return any(word in _traceback(failure) for word in _COLLATERAL)


def root_cause(failures: list[Any]) -> Any:
    """The failure that caused the others: a real failure before a worker that stopped on
    purpose (75/130: "saved, requeue me" is a checkpoint only when every worker stopped so;
    beside a crash it is not), not collateral, then the earliest, then the lowest rank."""
    return min(
        failures,
        key=lambda f: (f.exitcode in SAVED_EXIT_CODES, _is_collateral(f), _when(f), f.local_rank),
    )


def _guarded(fn: Callable[..., Any], *args: Any) -> Any:
    """A function worker's entry: die with the agent, then run ``fn``."""
    from distrib.launch.script import die_with_parent

    die_with_parent()
    return fn(*args)


def run(
    config: Any,
    entrypoint: Callable[..., Any] | str,
    args: tuple = (),
    *,
    failure_grace_s: float = 3.0,
    signal_grace_s: float = 30.0,
    extra_env: dict[str, str] | None = None,
) -> dict[int, Any]:
    """Run ``entrypoint(*args)`` (a function, or a binary such as ``sys.executable``) on this
    node's workers as ``config`` (a torch `LaunchConfig`) describes; ``{rank: return value}``.

    Raises `WorkerFailed` (first failed rank, its traceback) or `Interrupted` (a signal).
    """
    from torch.distributed.elastic.agent.server.api import WorkerSpec
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.rendezvous import registry
    from torch.distributed.elastic.rendezvous.api import RendezvousParameters

    params = RendezvousParameters(
        backend=config.rdzv_backend,
        endpoint=config.rdzv_endpoint,
        run_id=config.run_id,
        min_nodes=config.min_nodes,
        max_nodes=config.max_nodes,
        local_addr=config.local_addr,
        **config.rdzv_configs,
    )
    master_addr = master_port = None
    if config.rdzv_backend == "static":  # static: the workers' master is the endpoint itself
        host, _, port = config.rdzv_endpoint.rpartition(":")
        master_addr, master_port = host, int(port)
    saved_env = dict(os.environ)
    os.environ.update(extra_env or {})  # workers inherit the agent's environment
    os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = config.signals_to_handle
    quiet = _quiet_torch_logs()
    agent: Any = None
    handler: Any = None
    captured = Captured()
    try:
        with captured_stderr() as captured:  # the store connects: its C++ warnings are loud
            handler = _answered_within(
                _store_wait_s(config), config.rdzv_endpoint, registry.get_rendezvous_handler, params
            )
        sys.stderr.write(captured.without_frames())
        handler = watched(handler, config.rdzv_endpoint)  # a partition cannot hold this node
        if callable(entrypoint):  # a script goes through distrib.launch.script, which guards
            entrypoint, args = _guarded, (entrypoint, *args)
        spec = WorkerSpec(
            role="default",
            local_world_size=config.nproc_per_node,
            entrypoint=entrypoint,
            args=tuple(args),
            rdzv_handler=handler,
            max_restarts=config.max_restarts,
            monitor_interval=config.monitor_interval,
            master_addr=master_addr,
            master_port=master_port,
            local_addr=config.local_addr,
        )
        agent = _make_agent_class()(
            spec=spec,
            logs_specs=DefaultLogsSpecs(),
            start_method=config.start_method,
            shutdown_timeout=int(signal_grace_s),
            failure_grace_s=failure_grace_s,
        )
        result = agent.run()
        if result.is_failed():
            raise agent.first_failure(result)
        return result.return_values
    except SignalException as e:
        handler = None  # as torchrun: a signalled agent's rendezvous stays open for a restart
        codes = dict(agent.exit_codes) if agent is not None else {}
        raise Interrupted(int(e.sigval), codes) from None
    except (WorkerFailed, Interrupted):
        raise
    except Exception as e:
        if not is_rendezvous_error(e):
            raise
        said = agent.captured if agent is not None and agent.captured.text else captured
        message = describe(e, said, handler, config)
        handler = None
        raise RendezvousFailed(message) from None
    finally:
        if handler is not None:
            with contextlib.suppress(Exception):
                handler.shutdown()
        quiet()
        os.environ.clear()
        os.environ.update(saved_env)


STORE_GRACE_S = 5.0
"""Beyond the rendezvous timeout, how long the endpoint may take to answer its first request
before we give up on it (torch's own connect timeout, at the rendezvous timeout, says why
first when nothing listens)."""


def _store_wait_s(config: Any) -> float:
    timeout = float(config.rdzv_configs.get("join_timeout", 600))
    return timeout + STORE_GRACE_S


def _answered_within(seconds: float, endpoint: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, or `TimeoutError` after ``seconds``.

    torch's TCPStore client connects, then waits for the server's answer to its first
    request with no timeout at all: an endpoint where something else listens (another
    service, a stale port forward) that accepts and never replies hung the launch for good
    (`distrib.bounded.call_within`: past the deadline the process fails in one line).

    Only an endpoint that accepts a connection is said to be something else: where nothing
    accepts, torch's own connect timeout (at the rendezvous timeout) is still on its way, late
    on a loaded machine, and says why better; it gets ``seconds`` more.
    """
    accepts: list[bool] = []

    def more() -> float:
        accepts.append(_accepts(endpoint))
        return 0.0 if accepts[0] else seconds

    done, value = call_within(seconds, fn, *args, more=more)
    if done:
        return value
    if not accepts[0]:
        raise TimeoutError(f"nothing accepted a connection at {endpoint} within {2 * seconds:g} s")
    raise TimeoutError(
        f"the endpoint accepted the connection but did not answer as a c10d store within "
        f"{seconds:g} s: is another service listening on that port?"
    )


def _accepts(endpoint: str, timeout_s: float = 2.0) -> bool:
    """Whether something at ``host[:port]`` (port 29400 as torch's default) accepts a TCP
    connection within ``timeout_s``."""
    host, _, port = endpoint.rpartition(":") if ":" in endpoint else (endpoint, "", "29400")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def _quiet_torch_logs() -> Callable[[], None]:
    """The agent logs every failed worker's whole traceback and each restart at length; we
    raise the failure once, with its rank. Returns the function that restores the levels."""
    names = (
        "torch.distributed.elastic.multiprocessing.api",
        "torch.distributed.elastic.agent.server.api",
        "torch.distributed.elastic.agent.server.local_elastic_agent",
        "torch.distributed.elastic.rendezvous.dynamic_rendezvous",
    )
    saved = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL)

    def restore() -> None:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)

    return restore
