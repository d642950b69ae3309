"""Preemption: a signal only sets a flag; every rank agrees to stop at the same step."""

from __future__ import annotations

import os
import signal
import time

import pytest
from helpers import spawn

import distrib
from distrib import preemption


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
