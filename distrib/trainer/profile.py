"""A torch.profiler window over a few optimizer steps (``trainer.profile.*``), off by default.

Why a window and not the whole run: a profiler with Python stacks slows every op it sees, and a
trace of thousands of steps is too big to open. `start` returns None when ``active`` is 0, when
this rank does not record, or when the run keeps no directory (``fit(cfg, None)``: there is
nowhere to write, so it says so once and runs unprofiled); then no ``torch.profiler.profile``
is even created, and the loop's only cost is one ``is not None`` check a step. Otherwise the
profiler follows torch's schedule, counted in optimizer steps (the loop calls ``step()`` after
each): ``wait`` skipped, ``warmup`` profiled and dropped, ``active`` recorded, once
(``repeat=1``). The trace is written when the window closes, by torch's
``tensorboard_trace_handler``, to ``<run dir>/profile/rank<R>.<id>.pt.trace.json``: a Chrome
trace that TensorBoard's profiler plugin (``tensorboard --logdir <run dir>/profile``),
https://ui.perfetto.dev and chrome://tracing all open.

``with_stack=True`` is what puts the model's modules in the trace (``nn.Module: Linear_0``
events around their ops); ``with_modules`` alone records none for an eager model (torch 2.13,
checked on a CPU). Shapes are not recorded: they make the trace much larger.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from distrib.config.schema import ProfileConfig

log = logging.getLogger("distrib.trainer.profile")

DIR = "profile"
"""The run directory's folder for traces."""


def records(cfg: ProfileConfig, rank: int) -> bool:
    """Whether this rank records a trace (a window is set and the rank is listed, or none
    is: an empty ``ranks`` means every rank)."""
    return cfg.active > 0 and (not cfg.ranks or rank in cfg.ranks)


def start(cfg: ProfileConfig, run_dir: Path | None, rank: int) -> Any | None:
    """A started ``torch.profiler.profile`` for this rank's window, or None (no window here:
    nothing is created). Call its ``step()`` after each optimizer step and `stop` it at the
    end, also when training fails (a window still open is written as far as it got)."""
    if not records(cfg, rank):
        return None
    if run_dir is None:
        log.warning("trainer.profile: this run keeps no run directory; not profiling")
        return None
    out = run_dir / DIR
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    prof = torch.profiler.profile(
        activities=activities,
        schedule=torch.profiler.schedule(
            wait=cfg.wait, warmup=cfg.warmup, active=cfg.active, repeat=1
        ),
        on_trace_ready=torch.profiler.tensorboard_trace_handler(
            str(out), worker_name=f"rank{rank}"
        ),
        record_shapes=False,
        with_stack=True,
    )
    prof.start()
    first = cfg.wait + cfg.warmup + 1
    log.info(
        "trainer.profile: recording optimizer steps %d-%d of this job into %s "
        "(open: tensorboard --logdir %s, or the .pt.trace.json in https://ui.perfetto.dev)",
        first,
        first + cfg.active - 1,
        out,
        out,
    )
    return prof


def stop(prof: Any | None) -> None:
    """Stop the profiler (a no-op for None); a window cut short is written as it stands."""
    if prof is not None:
        prof.stop()
