"""Preemption: a signal only sets a flag; every rank agrees to stop at the same step."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, spawn, start

import distrib
from distrib.trainer import preemption

PY = sys.executable


def wait_for(flag: preemption.PreemptionFlag, timeout: float = 5.0) -> bool:
    """Python runs a signal handler between bytecodes, so give it a moment after ``os.kill``."""
    deadline = time.monotonic() + timeout
    while not flag.requested and time.monotonic() < deadline:
        time.sleep(0.001)
    return flag.requested


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2])
def test_signal_sets_the_flag(signum: int) -> None:
    with preemption.install() as flag:
        assert not flag.requested and flag.signal is None
        os.kill(os.getpid(), signum)
        assert wait_for(flag)
        assert flag.signal == signum


def test_uninstall_restores_previous_handlers() -> None:
    seen = []

    def previous(signum: int, frame: object) -> None:
        seen.append(signum)

    before = signal.signal(signal.SIGUSR1, previous)
    try:
        flag = preemption.install(signals=(signal.SIGUSR1,))
        assert signal.getsignal(signal.SIGUSR1) != previous
        flag.uninstall()
        flag.uninstall()  # twice is harmless
        assert signal.getsignal(signal.SIGUSR1) is previous
        os.kill(os.getpid(), signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.001)
        assert seen == [signal.SIGUSR1] and not flag.requested
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_should_stop_without_a_group_is_the_local_flag() -> None:
    ctx = distrib.current()
    with preemption.install() as flag:
        assert preemption.should_stop(flag, ctx) is False
        os.kill(os.getpid(), signal.SIGUSR1)
        assert wait_for(flag)
        assert preemption.should_stop(flag, ctx) is True


def test_requeue_exit_code_is_ex_tempfail() -> None:
    assert preemption.REQUEUE_EXIT_CODE == os.EX_TEMPFAIL == 75


def _signal_only_rank_one() -> tuple[bool, bool, bool]:
    ctx = distrib.init()
    with preemption.install() as flag:
        before = preemption.should_stop(flag, ctx)
        if ctx.rank == 1:
            os.kill(os.getpid(), signal.SIGTERM)
            wait_for(flag)
        return before, preemption.should_stop(flag, ctx), flag.requested


def test_all_ranks_stop_when_one_is_signalled() -> None:
    assert spawn(_signal_only_rank_one, world_size=2) == [(False, True, False), (False, True, True)]


# --- Ctrl-C on the trainer: SIGINT to the whole foreground group, as a terminal sends it ---


def _ctrl_c_run(
    tmp_path: Path, nproc: int, delay: float, *overrides: str, log_every: int = 1
) -> tuple[subprocess.Popen, Path]:
    """A training in its own session, as a terminal runs it, once it has taken steps."""
    run_dir = tmp_path / "run"
    cmd = [
        PY, "-m", "distrib.train", "model=mlp", "model.in_features=16",
        "data.train._target_=fixtures.Recorded", "data.eval._target_=fixtures.Recorded",
        f"+data.train.delay={delay}", "trainer.global_batch_size=32", "trainer.epochs=50",
        f"trainer.log_every={log_every}", f"launcher.nproc={nproc}", f"hydra.run.dir={run_dir}",
        *overrides,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "WANDB_MODE": "disabled"}
    proc = start(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    log = run_dir / "logs" / "rank0.log"
    deadline = time.monotonic() + 120
    while not (log.exists() and "training on" in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    metrics = run_dir / "metrics.jsonl"
    if log_every == 1:  # a step has been logged: a polled fact, not a guess at the step time
        while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
    else:
        time.sleep(1.5)
    return proc, run_dir


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_ctrl_c_saves_a_checkpoint_and_ends_with_one_line(tmp_path: Path, nproc: int):
    # no epoch-end checkpoints: whatever is saved, the interrupt saved (at any step, an
    # epoch's last included: a Ctrl-C during the epoch-end evaluation stops there)
    no_epoch_saves = "trainer.checkpoint.every_epoch=false"
    proc, run_dir = _ctrl_c_run(tmp_path, nproc, 0.0005, no_epoch_saves)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err[-3000:]
    assert err == ""  # no traceback, from any worker
    said, resume = out.strip().splitlines()[-2:]
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    step = int(latest[5:13])
    assert said == (
        f"distrib: interrupted: checkpoint at step {step} written in {run_dir}/checkpoints "
        "(Ctrl-C twice stops without saving)"
    )
    # the default run directory is new on every launch: the exact command, with its own
    overrides = [a for a in proc.args[3:] if not a.startswith("hydra.run.dir=")]
    assert resume == (
        f"distrib: to resume: python -m distrib.train {shlex.join(overrides)} "
        f"hydra.run.dir={run_dir}"
    )
    saved = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*.pt"))
    assert saved == [f"step-{step:08d}.pt"] and step > 0  # the interrupt's, and only it
    deadline = time.monotonic() + 10
    while not _group_gone(proc.pid):
        assert time.monotonic() < deadline, "a process of the run is left"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.waits
def test_ctrl_c_twice_stops_at_once_with_one_line(tmp_path: Path):
    # ~0.6 s a step, a stop vote every 10: the second Ctrl-C comes before the first is acted on
    proc, run_dir = _ctrl_c_run(tmp_path, 1, delay=0.02, log_every=100)
    saved = sorted((run_dir / "checkpoints").glob("step-*.pt"))
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(1.5)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines() == ["distrib: interrupted (nothing saved)"], err[-3000:]
    assert sorted((run_dir / "checkpoints").glob("step-*.pt")) == saved


@pytest.mark.slow
def test_a_signal_to_one_rank_of_two_stops_both_at_the_same_step_with_one_checkpoint(
    tmp_path: Path,
):
    from helpers import SMALL_RUN, train_cli

    run_dir, seen = tmp_path / "run", tmp_path / "seen"
    seen.mkdir()
    res = train_cli(
        run_dir, *SMALL_RUN, "trainer.epochs=3", "trainer.checkpoint.every_epoch=false",
        f"+data.train.record_dir={seen}", "+data.train.kill_rank=1",
        "+data.train.signal_at=100",  # rank 1's 100th sample: step 7 (16 a step)
        "trainer.timeout_s=30",  # a rank that stopped alone would leave the other waiting
    )  # fmt: skip
    assert res.returncode == 75, res.stderr[-3000:]
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    step = int(latest[5:13])
    # the vote rides on the log step (every 4): both ranks stopped after the same step
    assert step == 8
    served = {p.stem: len(p.read_text().split()) for p in seen.glob("rank*.txt")}
    assert served == {"rank0": 16 * step, "rank1": 16 * step}
