"""Stragglers named: a warning when one rank stays slower than the median rank.

In data-parallel training every rank waits for the slowest at each gradient sync, so one slow
GPU, host or data pipeline slows the whole job while every rank's step time looks the same.
What differs is each rank's work *before* the sync (`StepTimer.work_done`): the log row's
``slowest_rank`` and ``slowest_vs_median`` (`distrib.trainer.metrics.summarize`). `Watch`
reads them from each log row -- equal on every rank, so every rank decides alike -- and says
when to warn: at the first log row where the slowest rank's work exceeds the median rank's by
more than ``trainer.straggler_factor``, then every ``trainer.straggler_every`` log rows while it
stays slow. Example::

    watch = Watch(factor=1.5, every=10)
    rank = watch.update(row)     # None, or the rank to warn about now
"""

from __future__ import annotations

import math

MIN_SHARE = 0.05
"""And the slowest rank's excess must be at least this share of the mean step time: a step of
microseconds whose data fetch jitters is not a straggler worth a warning."""


class Watch:
    """When to warn about a straggler, from the log rows (see the module docstring)."""

    def __init__(self, *, factor: float, every: int) -> None:
        self.factor, self.every = factor, every
        self.rank: int | None = None
        """The rank slow in the last row (None: none)."""
        self.streak = 0
        """How many log rows in a row it has been slow."""

    def slow_rank(self, row: dict[str, float]) -> int | None:
        """The rank this row finds slower than the median by more than the factor, or None."""
        ratio = row.get("slowest_vs_median", math.nan)
        excess = row.get("slowest_excess_frac", math.nan)
        rank = row.get("slowest_rank")
        if not self.factor or rank is None or not ratio > self.factor or not excess >= MIN_SHARE:
            return None  # (NaN compares false: no measurement, no warning)
        return int(rank)

    def update(self, row: dict[str, float]) -> int | None:
        """Feed one log row; the rank to warn about now, or None."""
        rank = self.slow_rank(row)
        if rank is None:
            self.rank, self.streak = None, 0
            return None
        self.streak = self.streak + 1 if rank == self.rank else 1
        self.rank = rank
        return rank if (self.streak - 1) % self.every == 0 else None
