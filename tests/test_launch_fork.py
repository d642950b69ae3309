"""Forked workers (`distrib.launch.fork`): used where safe, started and ended as spawned ones.

Each launch runs in a fresh interpreter (``python -c``), the launcher a user has: its state
(a started OpenMP pool, handlers, atexit hooks) is what decides and what must not leak.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import run_cli

PY = sys.executable
MARK = "distrib_test_launcher_pid"
"""Set on ``sys`` in the launcher only: a worker that sees it is a copy of the launcher."""


def worker(out: str) -> dict:
    """Leaves a file unclosed and an atexit hook behind; reports how it was started."""
    rank = os.environ["RANK"]
    left_open = open(Path(out) / f"open{rank}.txt", "w")  # noqa: SIM115 -- on purpose
    left_open.write("written, never closed")
    atexit.register(lambda: (Path(out) / f"atexit{rank}.txt").write_text("ran"))
    torch.ones(1 << 17).mul_(2)  # a multi-threaded op: would hang on a stale OpenMP pool
    return {
        "forked": hasattr(sys, MARK),
        "sigterm_default": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
        "threads": torch.get_num_threads(),
    }


def _launch(tmp_path: Path, before: str = "", env: dict[str, str] | None = None) -> dict:
    code = f"""
        import atexit, json, signal, sys, os, torch
        import test_launch_fork as t
        from distrib.launch.local import launch
        setattr(sys, {MARK!r}, os.getpid())
        atexit.register(lambda: print("LAUNCHER-ATEXIT", flush=True))
        signal.signal(signal.SIGTERM, lambda *_: None)
        {before}
        print(json.dumps(launch(t.worker, ({str(tmp_path)!r},), nproc=2)), flush=True)
    """
    res = run_cli(PY, "-c", textwrap.dedent(code), env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    assert lines.count("LAUNCHER-ATEXIT") == 1, res.stdout  # the launcher's hooks stay its own
    return {int(k): v for k, v in json.loads(lines[-2]).items()}


@pytest.mark.slow
def test_a_launched_function_is_forked_and_its_worker_starts_and_ends_as_a_spawned_one(
    tmp_path: Path,
):
    ranks = _launch(tmp_path, env={"OMP_NUM_THREADS": "2"})
    assert ranks == {r: {"forked": True, "sigterm_default": True, "threads": 2} for r in (0, 1)}
    for rank in (0, 1):  # what a normal interpreter exit does, multiprocessing's os._exit not
        assert (tmp_path / f"open{rank}.txt").read_text() == "written, never closed"
        assert (tmp_path / f"atexit{rank}.txt").read_text() == "ran"


@pytest.mark.slow
def test_after_a_multithreaded_op_in_the_launcher_workers_are_spawned_and_do_not_hang(
    tmp_path: Path,
):
    before = "torch.set_num_threads(2); torch.ones(1 << 17).mul_(2)  # the pool is started"
    ranks = _launch(tmp_path, before, env={"OMP_NUM_THREADS": "2"})
    assert ranks == {r: {"forked": False, "sigterm_default": True, "threads": 2} for r in (0, 1)}
    assert (tmp_path / "atexit1.txt").read_text() == "ran"


def test_a_bad_start_method_is_one_line_naming_the_key(tmp_path: Path):
    run_dir = tmp_path / "run"
    res = run_cli(
        PY, "-m", "distrib.train", "launcher.start_method=thread", f"hydra.run.dir={run_dir}"
    )
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "launcher.start_method" in res.stderr and "auto, fork or spawn" in res.stderr


@pytest.mark.slow
def test_fork_and_spawn_train_the_same_run_bit_for_bit(tmp_path: Path):
    losses = {}
    for method in ("fork", "spawn"):
        run_dir = tmp_path / method
        res = run_cli(
            PY, "-m", "distrib.train", "launcher.nproc=2", f"launcher.start_method={method}",
            "trainer.max_steps=6", "trainer.log_every=2", "logger=[jsonl]",
            f"hydra.run.dir={run_dir}",
        )  # fmt: skip
        assert res.returncode == 0, res.stderr[-3000:]
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses[method] = [(r["step"], r.get("loss"), r.get("eval_loss")) for r in rows]
    assert len(losses["fork"]) >= 3 and losses["fork"] == losses["spawn"]


def test_a_workers_thread_count_reads_omp_num_threads_as_openmp_does():
    from distrib.launch.fork import threads_of

    assert [threads_of(v, 3) for v in ("8", "8,2", " 4 ", None, "", "0", "many")] == [
        8, 8, 4, 3, 3, 3, 3,
    ]  # fmt: skip
