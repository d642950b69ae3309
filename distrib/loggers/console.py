"""Metrics on the console: a progress bar on a terminal, plain lines everywhere else.

On a TTY a tqdm bar shows progress, ETA, loss and throughput. Under SLURM, a pipe or ``nohup``
the bar's carriage returns and escape codes turn log files into one unreadable line, so there
each `log` call prints one plain line instead::

    step 120/500  epoch 3  loss 0.1234  samples/s 5400.2  step_time_max 0.05  eta 0:00:31
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import TextIO

from tqdm import tqdm

_FIRST = ("epoch", "loss", "samples_per_s")  # shown first, in this order; the rest follow
_LABELS = {"samples_per_s": "samples/s"}


class ConsoleLogger:
    """Progress on ``stream`` (stdout by default); the mode is chosen once, from ``isatty``.

    Use `write` for other lines (epoch summaries) so they print above the bar, not through it.
    """

    def __init__(
        self,
        *,
        total_steps: int | None = None,
        start_step: int = 0,
        stream: TextIO | None = None,
        tty: bool | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.total_steps = total_steps
        self._start_step = start_step
        self._t0 = time.monotonic()
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self._bar: tqdm | None = None
        if tty:
            self._bar = tqdm(
                total=total_steps,
                initial=start_step,
                file=self.stream,
                unit="step",
                dynamic_ncols=True,
                leave=True,
            )

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(
                _fields(metrics, names=("loss", "samples_per_s")), refresh=False
            )
            self._bar.update(max(0, step - self._bar.n))
            return
        total = f"/{self.total_steps}" if self.total_steps else ""
        parts = [f"step {step}{total}", _fields(metrics)]
        eta = self._eta(step)
        if eta:
            parts.append(f"eta {eta}")
        self.write("  ".join(p for p in parts if p))

    def write(self, line: str) -> None:
        """Print a line without breaking the progress bar (``tqdm.write`` when there is one)."""
        if self._bar is not None:
            tqdm.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _eta(self, step: int) -> str:
        done, elapsed = step - self._start_step, time.monotonic() - self._t0
        if not self.total_steps or done <= 0 or elapsed <= 0:
            return ""
        left = max(0, self.total_steps - step) * elapsed / done
        return str(timedelta(seconds=round(left)))


def _fields(metrics: Mapping[str, float], names: tuple[str, ...] | None = None) -> str:
    """``name value`` pairs, two spaces apart: the known names first, then the rest."""
    if names is None:
        rest = [k for k in metrics if k not in _FIRST and k != "step"]
        names = (*_FIRST, *rest)
    return "  ".join(f"{_LABELS.get(k, k)} {_format(metrics[k])}" for k in names if k in metrics)


def _format(value: float) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or (
        math.isfinite(value) and value.is_integer() and abs(value) < 1e15
    ):
        return str(int(value))
    if math.isfinite(value) and abs(value) >= 1000:
        return f"{value:.1f}"
    return f"{value:.4g}"
