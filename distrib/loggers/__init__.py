"""Where metric rows go: the console, a JSON-lines file, Weights & Biases -- rank 0 only.

Every logger is a `MetricLogger`: ``log(metrics, step)`` and ``close()``. `make_loggers` builds
the ones a config names; the training loop feeds each the row that
`distrib.trainer.metrics.report` returned (the same on every rank, so only rank 0 needs to write
it)::

    loggers = make_loggers(["console", "jsonl"], run_dir=run_dir, config=cfg_dict,
                           is_main=ctx.is_main, total_steps=total, group=None)
    try:
        for logger in loggers:
            logger.log(row, step)
    finally:
        close_all(loggers)

Heavy backends are imported only when chosen: ``import distrib.loggers`` never imports wandb.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from distrib.errors import ConfigError

log = logging.getLogger(__name__)

LOGGERS = ("console", "jsonl", "wandb")


@runtime_checkable
class MetricLogger(Protocol):
    """Receives one row of global metrics per log step."""

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def make_loggers(
    names: Iterable[str],
    *,
    run_dir: Path,
    config: Mapping[str, Any],
    is_main: bool,
    total_steps: int | None,
    group: str | None,
    start_step: int = 0,
) -> list[MetricLogger]:
    """The loggers ``names`` asks for on rank 0; an empty list on every other rank.

    Names are checked on every rank, so a typo fails the whole job the same way. ``config`` is
    the resolved config (wandb stores it, redacted); ``group`` groups a sweep's runs in wandb;
    ``start_step`` is where a resumed job starts: the progress bar's ETA counts from it, and
    rows an abandoned attempt logged past it are set aside (JSONL) or not sent twice (wandb).
    """
    names = list(names)
    for name in names:
        if name not in LOGGERS:
            raise ConfigError("logger", name, "console, jsonl or wandb")
    if not is_main:
        return []
    loggers: list[MetricLogger] = []
    for name in dict.fromkeys(names):  # each once, in the order given
        if name == "console":
            from distrib.loggers.console import ConsoleLogger

            loggers.append(ConsoleLogger(total_steps=total_steps, start_step=start_step))
        elif name == "jsonl":
            from distrib.loggers.jsonl import JsonlLogger

            loggers.append(JsonlLogger(Path(run_dir) / "metrics.jsonl", start_step=start_step))
        else:
            from distrib.loggers.wandb import WandbLogger

            loggers.append(
                WandbLogger(
                    run_dir=Path(run_dir), config=config, group=group, start_step=start_step
                )
            )
    return loggers


def log_all(loggers: Iterable[MetricLogger], metrics: Mapping[str, float], step: int) -> None:
    """Send one row to every logger. A logger that fails (wandb's service killed by the
    cluster's SIGTERM, a full disk) is reported once and skipped from then on: a tracker must
    never stop training -- least of all the checkpoint a preempted job is about to write."""
    for logger in loggers:
        if logger in _broken:
            continue
        try:
            logger.log(metrics, step)
        except Exception as e:
            _broken.add(logger)
            first = (str(e).strip().splitlines() or [""])[0]
            log.warning(
                "%s failed (%s: %s); no more metrics go there in this run",
                type(logger).__name__,
                type(e).__name__,
                first,
            )


_broken: weakref.WeakSet = weakref.WeakSet()  # loggers that failed; skipped from then on


def close_all(loggers: Iterable[MetricLogger]) -> None:
    """Close every logger, even when one of them fails (the failure is logged, not raised)."""
    for logger in loggers:
        try:
            logger.close()
        except Exception:  # a tracker failing at exit must not hide the training result
            log.exception("closing %s failed", type(logger).__name__)


__all__ = ["LOGGERS", "MetricLogger", "close_all", "log_all", "make_loggers"]
