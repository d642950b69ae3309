"""``trainer.checkpoint.every_steps=auto``: the checkpoint interval from the failure rate.

Young/Daly: with a blocking save cost C and a mean time between failures M, checkpointing
every ``sqrt(2 * C * M)`` seconds minimises the expected lost time (the saves, plus the work
redone since the last one after a failure). C is what this run's saves are measured to block
training (an async save: its staging copy); M is ``trainer.checkpoint.mtbf_h`` or, by default,
`GPU_MTBF_H` over the world size (failures of independent GPUs add up). Example::

    plan = AutoInterval(world_size=16384, mtbf_h=None, min_s=60, max_s=3600)
    steps = plan.update(cost_s=2.0, step_s=1.5)   # None until a save cost is known
"""

from __future__ import annotations

import logging
import math

log = logging.getLogger("distrib.checkpoint")

GPU_MTBF_H = 54 * 24 * 16384 / 419
"""One GPU's mean time between job-stopping failures, ~50,700 h (5.8 years): Meta's Llama 3
405B run had 419 unexpected interruptions in 54 days on 16,384 H100s (The Llama 3 Herd of
Models, 2024, section 3.3.4), i.e. the whole job failed every ~3.1 h. Failures counted there
include the host, network and software around each GPU."""

RECHECK = 0.2
"""A re-evaluated interval (seconds) is logged again when it moved by more than this fraction."""


def job_mtbf_h(world_size: int, mtbf_h: float | None = None) -> float:
    """The job's MTBF in hours: ``mtbf_h`` when set, else `GPU_MTBF_H` / ``world_size``."""
    return float(mtbf_h) if mtbf_h is not None else GPU_MTBF_H / max(1, world_size)


def young_daly_s(cost_s: float, mtbf_s: float) -> float:
    """The interval (seconds) that minimises lost time: ``sqrt(2 * cost_s * mtbf_s)``."""
    return math.sqrt(2.0 * cost_s * mtbf_s)


class AutoInterval:
    """The live ``every_steps=auto`` interval of one run, re-evaluated as costs are measured.

    Every rank holds one and feeds it the same global numbers (a log row's), so every rank
    picks the same steps to save at. The first decision is logged with its inputs (rank 0),
    later ones only when the interval in seconds (the save cost) moved by more than `RECHECK`;
    the steps follow the step time silently.
    """

    def __init__(
        self,
        *,
        world_size: int,
        mtbf_h: float | None,
        min_s: float,
        max_s: float,
        announce: bool = True,
    ) -> None:
        self.world_size = world_size
        self.mtbf_h = job_mtbf_h(world_size, mtbf_h)
        self.mtbf_source = (
            f"trainer.checkpoint.mtbf_h={mtbf_h:g}"
            if mtbf_h is not None
            else f"{GPU_MTBF_H:,.0f} h per GPU (Llama 3) / {world_size} GPU(s)"
        )
        self.min_s, self.max_s = min_s, max_s
        self.announce = announce
        self.steps: int | None = None
        """Save every this many optimizer steps; None until a save cost was measured."""
        self.interval_s: float | None = None

    def update(self, *, cost_s: float, step_s: float) -> int | None:
        """Re-evaluate from a measured save cost and step time (seconds); the steps or None."""
        if not (math.isfinite(cost_s) and math.isfinite(step_s)) or step_s <= 0:
            return self.steps
        ideal = young_daly_s(cost_s, self.mtbf_h * 3600.0)
        interval = min(max(ideal, self.min_s), self.max_s)
        steps = max(1, round(interval / step_s))
        last = self.interval_s  # the one logged last: step time jitter alone is not news
        moved = last is None or abs(interval - last) > RECHECK * last
        if moved and self.announce:
            bound = "" if interval == ideal else f", clamped to [{self.min_s:g}, {self.max_s:g}] s"
            log.info(
                "checkpoint every %d steps (every_steps=auto): sqrt(2 x %.3g s save x %.3g h "
                "MTBF) = %.0f s%s, at %.3g s/step; MTBF from %s",
                steps,
                cost_s,
                self.mtbf_h,
                ideal,
                bound,
                step_s,
                self.mtbf_source,
            )
        if moved:
            self.interval_s = interval
        self.steps = steps
        return steps
