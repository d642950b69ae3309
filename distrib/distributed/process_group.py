"""The process group's life: device, backend, threads, init with a timeout, teardown always.

`init` is what a worker calls first (directly, or through `session`); it reads `WorkerEnv`,
picks ``cuda:<local_rank>`` or the CPU, nccl or gloo, gives the worker its share of the CPU
cores, and creates the default process group when the world has more than one worker. A world
of one creates no group at all, so a lone script pays nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from distrib.bounded import call_within
from distrib.env import WorkerEnv, read_env
from distrib.errors import ConfigError, add_explainer

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "gloo", "nccl")


@dataclass(frozen=True)
class Context:
    """What a worker knows about itself once `init` has run."""

    env: WorkerEnv
    device: torch.device
    backend: str
    timeout_s: float = 600.0
    """How long a collective waits for the slowest rank (`DEFAULT_TIMEOUT_S`)."""

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def is_main(self) -> bool:
        return self.env.is_main

    @property
    def is_distributed(self) -> bool:
        return self.env.world_size > 1


_current: Context | None = None
_BARRIER_TIMEOUT_S = 60.0
DEFAULT_TIMEOUT_S = 600.0
"""How long a rank waits in a collective for a peer before the job fails. torch's 30 minutes
means a hung job sits for half an hour; 10 minutes still covers a slow first step, a large
synchronous checkpoint or an evaluation on rank 0 while the others wait. Set
``trainer.timeout_s=30`` (or ``init(timeout_s=30)``) while debugging a hang."""
_TIMEOUT_WORDS = ("Timed out", "timed out", "Timeout", "timeout")
FR_BUFFER_SIZE = 2000
"""Collectives torch's flight recorder keeps per rank (a ring buffer; torchtitan keeps 20,000),
unless ``TORCH_FR_BUFFER_SIZE`` / ``TORCH_NCCL_TRACE_BUFFER_SIZE`` say otherwise (0: off)."""
FR_DIR = "flight_recorder"


class CollectiveTimeout(RuntimeError):
    """A collective waited ``timeout_s`` for peers that never arrived; names them."""


def current() -> Context:
    """The `Context` of this process; a lone-process default when `init` was never called."""
    return _current if _current is not None else _lone_context()


def _lone_context() -> Context:
    return Context(env=WorkerEnv(), device=torch.device("cpu"), backend="gloo")


def pick_device(device: str, local_rank: int) -> torch.device:
    if device not in DEVICES:
        raise ConfigError("trainer.device", device, " or ".join(DEVICES))
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise ConfigError("trainer.device", device, "cpu or auto: no CUDA device is visible here")
    if device == "cpu" or not cuda:
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def pick_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ConfigError("trainer.backend", backend, " or ".join(BACKENDS))
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError("trainer.backend", backend, "gloo or auto on CPU (nccl needs CUDA)")
    return backend


def check_devices(device: str, backend: str, local_workers: int) -> None:
    """One GPU per worker, checked before any worker starts: more workers on a node than
    visible GPUs would end in NCCL's "Duplicate GPU detected" abort after startup."""
    cuda = torch.cuda.is_available()
    if backend == "nccl" and (device == "cpu" or not cuda):
        where = "trainer.device=cpu" if device == "cpu" else "no CUDA device is visible here"
        raise ConfigError("trainer.backend", backend, f"gloo or auto ({where}; nccl needs CUDA)")
    if device == "cpu" or not cuda:
        return
    count = torch.cuda.device_count()
    if local_workers > count:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        shown = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
        raise ConfigError(
            "launcher.nproc",
            message=f"launcher.nproc={local_workers}: one GPU per worker, but {count} GPU(s) "
            f"visible{shown}; use launcher.nproc<={count}, trainer.device=cpu, or make more "
            "GPUs visible with CUDA_VISIBLE_DEVICES",
        )


def threads_per_worker(local_world_size: int, environ: Mapping[str, str] | None = None) -> int:
    """Cores / local workers, at least one: more threads than cores makes workers fight.

    In a SLURM step, the cores SLURM gave the task (``SLURM_CPUS_PER_TASK``): a node shared
    with other jobs is not ours to divide, even where SLURM does not pin the cores.
    """
    environ = os.environ if environ is None else environ
    if "SLURM_STEP_ID" in environ and environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return max(1, int(environ["SLURM_CPUS_PER_TASK"]))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, local_world_size))


def init(
    *,
    device: str = "auto",
    backend: str = "auto",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    threads: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> Context:
    """Join the job this process belongs to and return its `Context`.

    Example::

        ctx = distrib.init()
        if ctx.is_main:
            print(f"training on {ctx.world_size} workers")

    Calling it again returns the same context. The group is destroyed at exit (or by
    `shutdown`), so a crashed script does not leave peers hanging on a half-open group.
    """
    global _current
    if _current is not None:
        return _current
    env = read_env(environ)
    store = None
    if env.source == "slurm" and env.is_distributed and env.master_port == 0:
        from distrib.distributed.slurm import join  # no port chosen by the job script: agree on one

        environ = os.environ if environ is None else dict(environ)
        store = join(timeout_s=timeout_s, environ=environ)
        env = read_env(environ)
    dev = pick_device(device, env.local_rank)
    backend = pick_backend(backend, dev)
    torch.set_num_threads(threads or threads_per_worker(env.local_world_size, environ))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if env.world_size > 1 and not dist.is_initialized():
        _bind_loopback_when_local(env.master_addr)
        _record_flight(backend)
        dist.init_process_group(
            backend=backend,
            init_method=None if store else f"tcp://{env.master_addr}:{env.master_port}",
            store=store,
            rank=env.rank,
            world_size=env.world_size,
            timeout=timedelta(seconds=timeout_s),
            device_id=dev if dev.type == "cuda" else None,
        )
        log.debug("rank %d/%d joined %s group", env.rank, env.world_size, backend)
    _current = Context(env=env, device=dev, backend=backend, timeout_s=timeout_s)
    atexit.register(_shutdown_at_exit)
    add_explainer(explain_timeout)  # a script's uncaught timeout names the missing rank
    return _current


def _record_flight(backend: str) -> None:
    """Turn torch's flight recorder on before the group exists (it reads the environment then):
    the last `FR_BUFFER_SIZE` collectives of each rank, with their call stacks, dumped where
    ``TORCH_FR_DUMP_TEMP_FILE`` says (``<prefix><rank>``; default ``./flight_recorder/rank_``,
    the trainer's ``<run dir>/flight_recorder/rank_``) when a collective times out: by NCCL's
    watchdog on GPUs, by `explain_timeout` for gloo (torch records gloo's collectives too)."""
    if (
        "TORCH_FR_BUFFER_SIZE" not in os.environ
        and "TORCH_NCCL_TRACE_BUFFER_SIZE" not in os.environ
    ):
        os.environ["TORCH_FR_BUFFER_SIZE"] = str(FR_BUFFER_SIZE)
    prefix = os.environ.setdefault(
        "TORCH_FR_DUMP_TEMP_FILE", os.path.join(os.path.abspath(FR_DIR), "rank_")
    )
    if backend == "nccl":
        os.environ.setdefault("TORCH_NCCL_DUMP_ON_TIMEOUT", "1")
        with contextlib.suppress(OSError):  # the watchdog writes there; it does not create it
            os.makedirs(os.path.dirname(prefix), exist_ok=True)


def dump_flight_record(rank: int) -> str | None:
    """Write this rank's flight record where `_record_flight` said; its path, or None (off,
    or a torch without it). torchfrtrace reads a directory of them (docs/guide/scale.md)."""
    prefix = os.environ.get("TORCH_FR_DUMP_TEMP_FILE")
    size = os.environ.get("TORCH_FR_BUFFER_SIZE", os.environ.get("TORCH_NCCL_TRACE_BUFFER_SIZE"))
    if not prefix or size in (None, "0"):
        return None
    try:
        from torch._C._distributed_c10d import _dump_fr_trace

        data = _named_groups(_dump_fr_trace(True, True, False))  # all, with stack traces
        path = f"{prefix}{rank}"
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    except (ImportError, OSError, RuntimeError) as e:
        log.debug("no flight record: %s", e)
        return None
    return path


def _named_groups(dump: bytes) -> bytes:
    """torch 2.13's gloo records its groups' config under an empty name while the entries
    name the group ("0"): torchfrtrace then fails with ``KeyError: ('0', 0)``. Name them."""
    import pickle

    data = pickle.loads(dump)
    config = data.get("pg_config", {})
    if set(config) != {""}:
        return dump
    ranks = config[""].get("ranks", "[]")
    for entry in data.get("entries", []):
        uid, desc = entry["process_group"]
        config.setdefault(uid, {"name": uid, "desc": desc, "ranks": ranks})
    del config[""]
    return pickle.dumps(data)


def _bind_loopback_when_local(master_addr: str) -> None:
    """A job whose master is on loopback is one machine (torchrun --standalone, our launcher):
    gloo then binds loopback too, not the address the hostname resolves to -- else a
    single-node job listens on the network. A ``GLOO_SOCKET_IFNAME`` already set wins."""
    import socket

    if "GLOO_SOCKET_IFNAME" in os.environ or master_addr not in ("127.0.0.1", "localhost", "::1"):
        return
    with contextlib.suppress(OSError):
        if "lo" in {name for _, name in socket.if_nameindex()}:
            os.environ["GLOO_SOCKET_IFNAME"] = "lo"


def shutdown(*, barrier: bool = True) -> None:
    """Destroy the process group if there is one; safe to call twice.

    With ``barrier`` (a normal end) every rank first waits for the others, so no rank tears
    down its gloo connections while a peer still uses them (that aborts the peer); a bounded
    wait on gloo, so a dead peer cannot hang the exit. Error paths skip it.
    """
    global _current
    ctx, _current = _current, None
    if not (dist.is_available() and dist.is_initialized()):
        return
    if barrier:
        try:
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=timedelta(seconds=_BARRIER_TIMEOUT_S))
            else:
                dist.barrier(
                    device_ids=[ctx.device.index] if ctx and ctx.device.type == "cuda" else None
                )
        except RuntimeError as e:  # a peer is gone: tear down anyway
            log.warning("shutdown barrier failed (%s); destroying the process group", e)
    dist.destroy_process_group()


def _shutdown_at_exit() -> None:
    shutdown(barrier=False)


@contextlib.contextmanager
def session(**kwargs: object) -> Iterator[Context]:
    """``with session() as ctx:`` -- `init` on entry, `shutdown` on any exit."""
    ctx = init(**kwargs)  # type: ignore[arg-type]
    try:
        yield ctx
    except SystemExit:  # a coordinated exit (every rank agreed to stop, e.g. preemption)
        shutdown()
        raise
    except BaseException as e:
        timed_out = _is_timeout(e) and ctx.is_distributed
        message = _diagnose_timeout(ctx) if timed_out else ""
        shutdown(barrier=False)
        if message:
            raise CollectiveTimeout(message) from e
        raise
    shutdown()


def explain_timeout(error: BaseException) -> CollectiveTimeout | None:
    """A `CollectiveTimeout` naming the ranks that never arrived, when ``error`` is a
    collective's timeout in this process's job; else None. A collective every rank calls:
    the ranks that timed out compare notes through the store (`_diagnose_timeout`)."""
    ctx = _current
    if ctx is None or not ctx.is_distributed or not _is_timeout(error):
        return None
    if not (dist.is_available() and dist.is_initialized()):
        return None
    explained = CollectiveTimeout(_diagnose_timeout(ctx))
    explained.__cause__ = error
    return explained


def _absent_ranks(ctx: Context, window_s: float) -> list[int]:
    """Leave this rank's mark in the store; the ranks still without one after ``window_s``."""
    import time

    store = dist.distributed_c10d._get_default_store()
    store.set(f"distrib/timed_out/{ctx.rank}", "1")
    keys = [f"distrib/timed_out/{r}" for r in range(ctx.world_size)]
    deadline = time.monotonic() + window_s
    absent = list(range(ctx.world_size))
    while absent and time.monotonic() < deadline:
        absent = [r for r, k in enumerate(keys) if not store.check([k])]
        time.sleep(0.2)
    return absent


def _store_address() -> str:
    """Where the job's store listens, as the launcher told the workers (torch's agent store
    under ``distrib.launch`` and torchrun); empty when it did not."""
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    return f"{addr}:{port}" if addr and port else ""


def _is_timeout(error: BaseException) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (TimeoutError, CollectiveTimeout)) or (
            isinstance(seen, RuntimeError) and any(w in str(seen) for w in _TIMEOUT_WORDS)
        ):
            return not isinstance(seen, CollectiveTimeout)
        seen = seen.__cause__ or seen.__context__
    return False


def _diagnose_timeout(ctx: Context, window_s: float = 3.0, store_grace_s: float = 5.0) -> str:
    """Which ranks never reached the collective this rank gave up on.

    A timed-out gloo group is unusable (even ``monitored_barrier`` fails on its closed pairs),
    so the ranks compare notes through the job's store instead: every rank that timed out
    leaves a mark; the ranks still without one after ``window_s`` were elsewhere -- hung in
    user code, or stuck in another collective. Costs nothing until a timeout happens. A store
    cut off by a network partition never answers (its client has no timeout then): past
    ``window_s + store_grace_s`` this rank says it lost the node that hosts the store.
    """
    bound = window_s + store_grace_s
    try:
        done, absent = call_within(bound, _absent_ranks, ctx, window_s)
    except Exception as e:  # the store is gone too: say what we know
        log.debug("timeout diagnosis failed: %s", e)
        done, absent = True, []
    if not done:
        store = _store_address()
        who = (
            f"the job's store{f' at {store}' if store else ''} did not answer within {bound:g} s "
            "either: this rank lost contact with the node that hosts it (a network partition, "
            "or that node is gone)"
        )
    elif absent:
        who = (
            f"rank(s) {', '.join(map(str, absent))} never arrived (hung, or stuck outside the "
            "collective: see their logs)"
        )
    else:
        who = "every rank timed out waiting (a network problem, or ranks in different collectives)"
    record = dump_flight_record(ctx.rank) if ctx.backend == "gloo" else None  # NCCL's own
    where = f"; flight record: {record}" if record else ""
    return (
        f"a collective timed out on rank {ctx.rank} after {ctx.timeout_s:g} s: {who}; "
        f"the timeout is trainer.timeout_s (init(timeout_s=...)){where}"
    )
