"""Stop cleanly when the cluster says "you are about to be killed", then ask to be requeued.

SLURM (``#SBATCH --signal=USR1@90``, submitit's USR2, or SIGTERM at the end of the time
limit / on preemption) and torchrun (which forwards SIGTERM to its workers) give a job a grace
period before SIGKILL.
The intended use in a training loop::

    flag = distrib.trainer.preemption.install()          # main thread, once, before training
    for step in ...:
        ...optimizer.step()...
        if distrib.trainer.preemption.should_stop(flag, ctx):   # every rank, after every step
            ckpt.save(state, step=step, epoch=epoch)
            ckpt.close()                                 # the write must finish before exit
            sys.exit(distrib.trainer.preemption.REQUEUE_EXIT_CODE)

The handler only sets a flag: no I/O, no locks, nothing that can deadlock when the signal lands
in the middle of a collective or a ``torch.save``. `should_stop` then makes the decision
collective, because a signal may reach only some ranks and a rank that stops alone leaves the
others hanging in the next all-reduce.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterable
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

from distrib.distributed.process_group import Context

REQUEUE_EXIT_CODE = 75
"""EX_TEMPFAIL from sysexits.h: "temporary failure, try again" -- the exit a requeue wrapper
(or a SLURM ``--requeue`` epilog) recognises as "preempted, state saved", not "crashed"."""

INTERRUPT_EXIT_CODE = 130
"""128 + SIGINT, what a shell reports for Ctrl-C: here the workers saved a checkpoint first."""

DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
"""SIGTERM: preemption and scancel; SIGUSR1: ``#SBATCH --signal=USR1@90``; SIGUSR2: what
submitit asks SLURM for before the time limit (``launcher=slurm``)."""


SECOND_CTRL_C_S = 1.0
"""A second SIGINT this long after the first stops at once. Closer ones are the same Ctrl-C
arriving twice: from the terminal (to the whole process group) and forwarded by the agent."""


class PreemptionFlag:
    """Set by the signal handler; read by the training loop. Made by `install`."""

    def __init__(self) -> None:
        self._signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._interrupted_at: float | None = None

    @property
    def requested(self) -> bool:
        """True once any of the installed signals has arrived in this process."""
        return self._signum is not None

    @property
    def signal(self) -> int | None:
        """The number of the (last) signal that arrived, for the log line after stopping."""
        return self._signum

    @property
    def interrupted(self) -> bool:
        """A SIGINT (Ctrl-C) arrived: stop and save as for preemption, but exit with
        `INTERRUPT_EXIT_CODE`, since nobody will requeue this."""
        return self._interrupted_at is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # assignments only: handlers must not do I/O or take locks
        if signum == signal.SIGINT:
            now = time.monotonic()
            if self._interrupted_at is None:
                self._interrupted_at = now
            elif now - self._interrupted_at > SECOND_CTRL_C_S:
                raise KeyboardInterrupt  # Ctrl-C again: stop now, without saving
        self._signum = signum

    def uninstall(self) -> None:
        """Restore the handlers that were there before `install`; safe to call twice."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def __enter__(self) -> PreemptionFlag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()


def install(signals: Iterable[int] = DEFAULT_SIGNALS) -> PreemptionFlag:
    """Catch ``signals`` from now on and return the flag they set.

    Must run in the main thread (a Python rule for ``signal.signal``). Use as a context manager
    to restore the previous handlers on exit::

        with distrib.trainer.preemption.install() as flag:
            train(..., flag=flag)
    """
    flag = PreemptionFlag()
    try:
        for signum in signals:
            flag._previous[signum] = signal.signal(signum, flag._handle)
    except BaseException:
        flag.uninstall()
        raise
    return flag


def should_stop(flag: PreemptionFlag, ctx: Context) -> bool:
    """Whether ANY rank has been asked to stop; the same answer on every rank.

    Costs one tiny all-reduce (MAX) when a process group exists, so every rank must call it at
    the same steps; without a group it is the local flag.
    """
    local = flag.requested
    if not (dist.is_available() and dist.is_initialized()):
        return local
    votes = torch.tensor([int(local)], dtype=torch.int32, device=ctx.device)
    dist.all_reduce(votes, op=dist.ReduceOp.MAX)
    return bool(votes.item())
