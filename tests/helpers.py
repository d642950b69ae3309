"""The one helper multi-process tests use: run ``fn`` on N gloo workers, get every result.

Workers start fresh (not forked from the test process, whose torch state they must not share)
with torchrun's variables on loopback, so ``distrib.init()`` inside ``fn`` joins a real gloo
group. A worker that raises fails the calling test with that worker's traceback; a worker that
hangs fails it after ``timeout`` seconds and is killed.

They start from multiprocessing's fork server, a clean interpreter that has imported torch
once, as a spawned worker would after its imports: ~0.1 s a start instead of 2-5 s, some 70
starts in the suite. What a spawned worker got from the test at the moment it started, each
gets here too: the test's environment (``monkeypatch.setenv``) and its stdout/stderr (pytest's
capture of the current test), not the fork server's.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parent.parent

SMALL_RUN = [
    "model=mlp",
    "model.in_features=16",
    "data.train._target_=fixtures.Recorded",
    "data.eval._target_=fixtures.Recorded",
    "trainer.global_batch_size=32",
    "trainer.log_every=4",
    "trainer.epochs=1",
]
"""A one-epoch trainer run of 16 steps (fixtures.Recorded, 512 samples): what the launch tests
compare across launchers (local, several nodes, SLURM)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_env(rank: int, world: int, port: int) -> dict[str, str]:
    """What torchrun gives worker ``rank`` of ``world`` on one node (the default of `spawn`)."""
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(world),
        "GROUP_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def _entry(
    index: int,
    fn: Callable[..., Any],
    world: int,
    port: int,
    out: str,
    args: tuple,
    make_env: Callable[[int, int, int], dict[str, str]],
    parent: tuple[int, dict[str, str]],
) -> None:
    pid, environ = parent
    _adopt_output(pid)
    os.environ.clear()
    os.environ.update(environ)
    os.environ.update(make_env(index, world, port))
    import distrib

    try:
        result = fn(*args)
    finally:
        distrib.shutdown()
    with open(os.path.join(out, f"{index}.pkl"), "wb") as f:
        pickle.dump(result, f)


def _adopt_output(pid: int) -> None:
    """Write to process ``pid``'s stdout and stderr (the test's, now), as a spawned child of
    it would, instead of those the fork server was started with."""
    for fd in (1, 2):
        try:
            theirs = os.open(f"/proc/{pid}/fd/{fd}", os.O_WRONLY | os.O_APPEND)
        except OSError:  # not Linux, or closed: keep the fork server's
            continue
        os.dup2(theirs, fd)
        os.close(theirs)


_METHOD = "forkserver" if sys.platform == "linux" else "spawn"
if _METHOD == "forkserver":
    multiprocessing.set_forkserver_preload(["torch"])


def spawn(
    fn: Callable[..., Any],
    *args: Any,
    world_size: int = 2,
    timeout: float = 180,
    make_env: Callable[[int, int, int], dict[str, str]] = torchrun_env,
) -> list[Any]:
    """Run ``fn(*args)`` on ``world_size`` gloo workers; return their results by rank.

    ``make_env(rank, world, port)`` gives each worker's environment (default: torchrun's);
    it must be importable (a module-level function), as ``fn`` must.
    """
    with tempfile.TemporaryDirectory() as out:
        ctx = mp.start_processes(
            _entry,
            args=(
                fn,
                world_size,
                free_port(),
                out,
                args,
                make_env,
                (os.getpid(), dict(os.environ)),
            ),
            nprocs=world_size,
            join=False,
            start_method=_METHOD,
        )
        deadline = time.monotonic() + timeout
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    if p.is_alive():
                        os.kill(p.pid, signal.SIGKILL)
                raise TimeoutError(f"workers still running after {timeout}s")
        results = []
        for rank in range(world_size):
            with open(os.path.join(out, f"{rank}.pkl"), "rb") as f:
                results.append(pickle.load(f))
        return results


_started: list[subprocess.Popen] = []


def start(argv: list[str], **popen_kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen`` in a session of its own, killed with everything it started (its
    workers share its process group) when the test ends, passed or failed (`kill_started`,
    an autouse fixture): a failing test never leaves a job running into the next one."""
    popen_kwargs.setdefault("start_new_session", True)
    proc = subprocess.Popen(argv, **popen_kwargs)
    _started.append(proc)
    return proc


def kill_started() -> None:
    """SIGKILL the process group of every process `start` started (a no-op for ended ones)."""
    while _started:
        proc = _started.pop()
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def wait_gone(pids: list[int], timeout: float) -> bool:
    """Whether every process in ``pids`` has ended (or is a zombie) within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def run_cli(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run a command with this venv's Python first on PATH, ``tests/`` and this checkout importable.

    On ``timeout`` its whole process group is killed (``subprocess.run`` would kill the
    command alone and leave its workers) and ``TimeoutExpired`` carries what it printed.
    """
    full_env = {
        **os.environ,
        # this checkout's distrib first, whichever one the venv has installed (a git worktree)
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
        "WANDB_MODE": "disabled",
        **(env or {}),
    }
    full_env["PATH"] = f"{Path(sys.executable).parent}:{full_env.get('PATH', '')}"
    proc = start(
        list(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=cwd or ROOT,
        stdin=subprocess.DEVNULL,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_started()
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(list(args), timeout, out, err) from None
    return subprocess.CompletedProcess(list(args), proc.returncode, out, err)


def train_cli(
    run_dir: Path, *overrides: str, nproc: int = 2, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python -m distrib.train`` on ``nproc`` local workers into ``run_dir`` (for resumes)."""
    return run_cli(
        sys.executable,
        "-m",
        "distrib.train",
        f"launcher.nproc={nproc}",
        f"hydra.run.dir={run_dir}",
        *overrides,
        cwd=run_dir.parent,
        env=env,
    )
