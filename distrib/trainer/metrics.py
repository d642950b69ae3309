"""Exact global metrics for the whole job, in one collective per log step.

Each rank accumulates locally between log steps (`Metrics.add`, `add_ratio`, `add_per_rank`);
`Metrics.compute` packs everything into one float64 tensor and does a single ``all_reduce``
(SUM), whatever the number of metrics. Sums give exact global weighted means; for per-rank
metrics (step time, memory) each rank writes its value into its own slot of a ``world_size``
block, so after the SUM every rank holds every rank's value and takes min/mean/max locally.

The training loop's view::

    metrics, timer = Metrics(), StepTimer(ctx.device)
    for x, y in timer.iterate(train_dl):
        ...
        step_s, wait_s = timer.step_done()
        record_step(metrics, loss=loss, samples=len(x), step_s=step_s, data_wait_s=wait_s)
        if step % log_every == 0:
            row = report(metrics, ctx, epoch=epoch, step=step, lr=lr)   # same on every rank
"""

from __future__ import annotations

import math
import resource
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple, TypeVar

import torch
import torch.distributed as dist

from distrib.distributed.process_group import Context, current

T = TypeVar("T")


class Metrics:
    """Metric accumulator for one log window; `compute` reduces over ranks and resets.

    Every rank must add the same set of names between two `compute` calls (the order does not
    matter: names are sorted). A different set with the same count is detected and raised on
    every rank; a different *count* changes the tensor's length, which the backend itself
    rejects or, on some backends, hangs on -- so add every name on every rank, zero included.

    Example::

        m = Metrics()
        m.add("loss", 0.3, weight=64)            # exact global mean, weighted by samples
        m.add_ratio("acc", correct, total)       # global sum(correct) / sum(total)
        m.add_per_rank("step_time", 0.12)        # -> step_time_min / _mean / _max over ranks
        m.compute(ctx)                           # {"acc": ..., "loss": ..., "step_time_max": ...}
    """

    def __init__(self) -> None:
        self._sums: dict[str, list[float]] = {}  # name -> [sum(value * weight), sum(weight)]
        self._per_rank: dict[str, list[float]] = {}  # same, but reduced to one value per rank
        self._device_sums: dict[str, tuple[torch.Tensor, float]] = {}  # same, on the device
        self._ranked: set[str] = set()  # per-rank names that also report _median and _argmax

    def add_device(self, name: str, value: torch.Tensor, weight: float = 1.0) -> None:
        """`add` for a value (a 0-d tensor) still on the device: it is read back only by
        `compute`, in the same single transfer as everything else, so the training step
        never waits for the device. One in-place add per call after the first."""
        if name in self._sums or name in self._per_rank:
            raise ValueError(f"metric {name!r} was added both on the device and on the host")
        held = self._device_sums.get(name)
        if held is None:
            self._device_sums[name] = (value.detach().to(torch.float64) * weight, float(weight))
        else:
            held[0].add_(value.detach(), alpha=weight)
            self._device_sums[name] = (held[0], held[1] + float(weight))

    def add(self, name: str, value: float, weight: float = 1.0) -> None:
        """Add to a weighted mean: the result is sum(value * weight) / sum(weight), all ranks."""
        self.add_ratio(name, float(value) * weight, weight)

    def add_ratio(self, name: str, numerator: float, denominator: float) -> None:
        """Add to a global ratio sum(numerator) / sum(denominator) (``nan`` if that is 0)."""
        self._accumulate(self._sums, self._per_rank, name, float(numerator), float(denominator))

    def add_per_rank(
        self, name: str, value: float, weight: float = 1.0, *, ranked: bool = False
    ) -> None:
        """Add to this rank's local weighted mean; `compute` reports its min/mean/max over ranks.

        The mean is the plain mean of the ranks' values (each rank counts once): the right
        average for step times, where the slowest rank is what everyone waits for. ``ranked``
        adds ``_median`` (the lower median: the faster of two) and ``_argmax`` (which rank has
        the max; the lowest on a tie).
        """
        if ranked:
            self._ranked.add(name)
        w = float(weight)
        self._accumulate(self._per_rank, self._sums, name, float(value) * w, w)

    @staticmethod
    def _accumulate(
        into: dict[str, list[float]],
        other: dict[str, list[float]],
        name: str,
        num: float,
        den: float,
    ) -> None:
        if name in other:
            raise ValueError(
                f"metric {name!r} was added both per rank and as a global mean "
                "in this window; use one kind per name"
            )
        acc = into.setdefault(name, [0.0, 0.0])
        acc[0] += num
        acc[1] += den

    def names(self) -> list[str]:
        """The names added since the last `compute`, sorted."""
        return sorted([*self._sums, *self._per_rank, *self._device_sums])

    def reset(self) -> None:
        """Drop what was accumulated (done by `compute`)."""
        self._sums.clear()
        self._per_rank.clear()
        self._device_sums.clear()
        self._ranked.clear()

    def compute(self, ctx: Context | None = None) -> dict[str, float]:
        """Reduce over all ranks with exactly one ``all_reduce``, reset, return global values.

        Call it on every rank (it is a collective), at the same steps. Without a process group
        it computes the same numbers locally.
        """
        distributed = dist.is_available() and dist.is_initialized()
        rank = dist.get_rank() if distributed else 0
        world = dist.get_world_size() if distributed else 1
        means, spreads = sorted(self._sums), sorted(self._per_rank)
        on_device = sorted(self._device_sums)
        packed = [0.0] * world  # slot r: rank r's hash of the names it added
        packed[rank] = float(_names_hash(means + on_device, spreads))
        for name in means:
            packed += self._sums[name]
        for name in spreads:
            block = [0.0] * world
            block[rank] = _ratio(*self._per_rank[name])
            packed += block
        packed += [self._device_sums[name][1] for name in on_device]
        ctx = ctx or current()
        # nccl reduces device tensors only; gloo wants CPU ones
        where = ctx.device if distributed and ctx.backend == "nccl" else torch.device("cpu")
        tensor = torch.tensor(packed, dtype=torch.float64).to(where, non_blocking=True)
        if on_device:
            sums = torch.stack(
                [self._device_sums[n][0].to(where, torch.float64) for n in on_device]
            )
            tensor = torch.cat([tensor, sums])
        if distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        values = tensor.tolist()  # the one read-back (on a GPU: the one wait for the device)
        _check_same_names(values[:world], rank, means + on_device + spreads)
        out: dict[str, float] = {}
        pos = world
        for name in means:
            out[name] = _ratio(values[pos], values[pos + 1])
            pos += 2
        for name in spreads:
            per_rank = values[pos : pos + world]
            out[f"{name}_min"] = min(per_rank)
            out[f"{name}_mean"] = math.fsum(per_rank) / world
            out[f"{name}_max"] = max(per_rank)
            if name in self._ranked:
                out[f"{name}_median"] = statistics.median_low(per_rank)
                out[f"{name}_argmax"] = float(per_rank.index(out[f"{name}_max"]))
            pos += world
        n = len(on_device)
        for name, weight, total in zip(
            on_device, values[pos : pos + n], values[pos + n :], strict=True
        ):
            out[name] = _ratio(total, weight)
        self.reset()
        return out


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def _names_hash(means: list[str], spreads: list[str]) -> int:
    """crc32 of the kinds and names: an integer below 2**32, so exact in a float64 slot."""
    key = "\n".join([*(f"mean:{n}" for n in means), *(f"rank:{n}" for n in spreads)])
    return zlib.crc32(key.encode())


def _check_same_names(hashes: list[float], rank: int, names: list[str]) -> None:
    # Every rank sees every hash, so every rank raises: no rank is left waiting in a collective.
    differ = [r for r, h in enumerate(hashes) if h != hashes[rank]]
    if differ:
        raise RuntimeError(
            f"Metrics.compute: ranks {differ} added different metric names than rank {rank} "
            f"({', '.join(names) or 'none'}); every rank must add the same names between "
            "compute() calls (add 0 with weight 0 for a metric a rank has no value for)"
        )


class StepTime(NamedTuple):
    step_s: float
    """Wall time since the previous step ended (or the loop started)."""
    data_wait_s: float
    """The part of it spent waiting for the next batch (inside the loader's ``next``)."""


class StepTimer:
    """Splits training wall time into steps and, within each, the time spent waiting for data.

    Data wait is the time inside the loader's ``next()``: from the end of the previous
    micro-batch's work to the batch being available, including worker startup on the first one.
    On CUDA, ``step_done(sync=True)`` (the training loop: at log steps only) first waits for
    the device, so the steps of a log window add up to their true wall time while the steps in
    between never make the host wait.

    Example::

        timer = StepTimer(ctx.device)
        for x, y in timer.iterate(train_dl):
            ...                                   # forward/backward, maybe several micro-batches
            if last_micro:
                step_s, wait_s = timer.step_done()
    """

    def __init__(
        self, device: torch.device | None = None, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self._sync = device is not None and device.type == "cuda"
        self._device = device
        self._clock = clock
        self._start = clock()
        self._wait = 0.0
        self._work_end: float | None = None
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []  # CUDA: not read yet
        self._work_start: torch.cuda.Event | None = None
        self._work_stop: torch.cuda.Event | None = None
        self._works: list[float] = []  # CPU: each step's work time since `take_work`
        self._fresh, self._work_begin = True, self._start

    def restart(self) -> None:
        """Start the next step's clock now (`iterate` does this; call after a pause, e.g. eval)."""
        self._start, self._wait = self._clock(), 0.0
        self._fresh = True

    def _begin_work(self, now: float) -> None:
        """A step's work starts when its first batch is asked for (`iterate`), not when the
        last one ended: the logging, saving or evaluation rank 0 did in between is no one's."""
        self._fresh, self._work_begin = False, now
        self._work_end, self._work_stop = None, None
        if self._sync:  # an event on the stream: the device's time, read once it is synced
            self._work_start = torch.cuda.Event(enable_timing=True)
            self._work_start.record()

    def work_done(self) -> None:
        """The step's own work ends here: what follows (the gradient sync) waits for peers.

        The host's clock on CPU; on CUDA an event, so the host never waits for the device.
        """
        if self._sync:
            self._work_stop = torch.cuda.Event(enable_timing=True)
            self._work_stop.record()
        else:
            self._work_end = self._clock()

    def _end_work(self, now: float) -> None:
        if not self._sync:
            end = self._work_end if self._work_end is not None else now
            self._works.append(end - self._work_begin)
        elif self._work_start is not None and self._work_stop is not None:
            self._events.append((self._work_start, self._work_stop))
        self._work_start = self._work_stop = None

    def take_work(self) -> list[float]:
        """Each step's work before `work_done` (seconds) since the last call; on CUDA the
        device's time, so call it only after a synced `step_done` (a log step)."""
        if self._sync:
            done, self._events = self._events, []
            return [a.elapsed_time(b) / 1000.0 for a, b in done]
        done, self._works = self._works, []
        return done

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` just spent out of the current step (the FLOP count's pass)."""
        self._start += seconds

    def iterate(self, iterable: Iterable[T]) -> Iterator[T]:
        """Yield from ``iterable``, counting the time spent waiting for each item."""
        self.restart()
        t0 = self._clock()
        it = iter(iterable)  # a DataLoader starts its workers here: that is data wait too
        while True:
            if self._fresh:
                self._begin_work(t0)
            try:
                item = next(it)
            except StopIteration:
                return
            self._wait += self._clock() - t0
            yield item
            t0 = self._clock()

    def step_done(self, sync: bool = True) -> StepTime:
        """End the current step: its wall time and data wait; the next step starts now."""
        if self._sync and sync:
            torch.cuda.synchronize(self._device)
        now = self._clock()
        self._end_work(now)
        out = StepTime(now - self._start, self._wait)
        self._start, self._wait, self._fresh = now, 0.0, True
        return out


def peak_memory_mb(device: torch.device | None = None) -> float:
    """Peak memory of this rank in MiB: CUDA allocator peak on CUDA, else peak process RSS.

    The RSS is this process's only (DataLoader workers are separate processes).
    """
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


# Raw names `record_step` adds and `summarize` turns into the reported ones.
_LOSS, _SAMPLES, _WAIT, _STEP, _MEMORY = "loss", "samples", "data_wait", "step_time", "memory_mb"
_FLOPS, _SKIPPED = "flops", "skipped"
_WORK = "work_time"


def record_step(
    metrics: Metrics,
    *,
    loss: float | torch.Tensor,
    samples: int,
    step_s: float,
    data_wait_s: float,
    loss_weight: int | None = None,
    flops: float | None = None,
    skipped: torch.Tensor | None = None,
) -> None:
    """Add one optimizer step of this rank under the names `summarize` reads.

    ``loss`` is the step's mean loss on this rank -- a float, or a 0-d tensor left on the
    device (read back at the log step, with everything else) -- and ``samples`` the samples
    this rank processed in the step (all micro-batches together). ``flops``: the FLOPs this
    rank did in the step (`distrib.trainer.flops`); ``skipped``: 1 where the gradient scaler
    skipped the step (a 0-d tensor left on the device), 0 where it stepped.
    """
    weight = samples if loss_weight is None else loss_weight  # 0: a skipped step
    if isinstance(loss, torch.Tensor):
        metrics.add_device(_LOSS, loss, weight=weight)
    else:
        metrics.add(_LOSS, loss, weight=weight)
    metrics.add_ratio(_SAMPLES, samples, step_s)  # samples per second of step, per rank
    metrics.add_ratio(_WAIT, data_wait_s, step_s)  # share of step time spent waiting
    metrics.add_per_rank(_STEP, step_s)
    if flops is not None:
        metrics.add_ratio(_FLOPS, flops, step_s)  # FLOPs per second of step, per rank
    if skipped is not None:
        metrics.add_device(_SKIPPED, skipped, weight=1.0)  # the share of steps skipped


_STOP = "stop_requested"


def report(
    metrics: Metrics,
    ctx: Context,
    *,
    epoch: int,
    step: int,
    lr: float,
    stop: bool = False,
    steps: int = 0,
    peak_tflops: float | None = None,
    work: list[float] | None = None,
) -> dict[str, float]:
    """Reduce the window (one collective; call on every rank) and return the logged row.

    ``stop`` is this rank's vote to stop (a preemption signal arrived here); it travels in the
    same all_reduce, and the row's ``stop_requested`` is 1.0 on every rank when any rank voted.
    ``steps``: the optimizer steps in the window (what ``skipped_steps`` is counted out of);
    ``peak_tflops``: the device's peak per rank, for ``mfu``.
    ``work``: the window's steps' work before the gradient sync (`StepTimer.take_work`), where
    no rank waits for another; their median (one slow step is not a slow rank) names the
    ``slowest_rank``, the one the others wait for.
    """
    if work is not None:
        metrics.add_per_rank(_WORK, statistics.median(work) if work else math.nan, ranked=True)
    metrics.add_per_rank(_MEMORY, peak_memory_mb(ctx.device))
    metrics.add_ratio(_STOP, float(stop), 1.0)
    row = summarize(
        metrics.compute(ctx),
        world_size=ctx.world_size,
        epoch=epoch,
        step=step,
        lr=lr,
        steps=steps,
        peak_tflops=peak_tflops,
    )
    row[_STOP] = float(row[_STOP] > 0)
    return row


STATS = ("min", "mean", "max", "median", "argmax")


def summarize(
    computed: dict[str, float],
    *,
    world_size: int,
    epoch: int,
    step: int,
    lr: float,
    steps: int = 0,
    peak_tflops: float | None = None,
) -> dict[str, float]:
    """The built-in row from `Metrics.compute`'s output; metrics it does not know pass through.

    ``samples_per_s`` is the job's throughput (every rank works at the same time, so it is the
    per-rank rate times the world size); ``straggler_ratio`` is the slowest rank's mean step
    time over the average rank's (1.0 is perfectly balanced). ``tflops_per_s`` is per rank
    (per GPU: what a peak is quoted for) and ``mfu`` that over ``peak_tflops``;
    ``skipped_steps`` the window's steps the gradient scaler skipped (every rank skips alike).
    Under DDP every rank waits for
    the slowest in the gradient sync, so step times even out; ``slowest_rank`` is the rank
    whose work before the sync took longest, ``slowest_vs_median`` that time over the median
    rank's, ``slowest_excess_frac`` the difference as a share of the mean step time (what the
    others wait for it, at most); `distrib.trainer.stragglers` warns when they stay high.
    """
    rest = dict(computed)
    row: dict[str, float] = {"step": step, "epoch": epoch}
    if _LOSS in rest:
        row["loss"] = rest.pop(_LOSS)
    row["lr"] = lr
    if _SAMPLES in rest:
        row["samples_per_s"] = rest.pop(_SAMPLES) * world_size
    if f"{_STEP}_max" in rest:
        for stat in ("min", "mean", "max"):
            row[f"step_time_{stat}"] = rest.pop(f"{_STEP}_{stat}")
        row["straggler_ratio"] = _ratio(row["step_time_max"], row["step_time_mean"])
    if _FLOPS in rest:
        row["tflops_per_s"] = rest.pop(_FLOPS) / 1e12
        if peak_tflops:
            row["mfu"] = row["tflops_per_s"] / peak_tflops
    if _SKIPPED in rest:
        row["skipped_steps"] = float(round(rest.pop(_SKIPPED) * steps))
    if f"{_WORK}_max" in rest:
        work = {stat: rest.pop(f"{_WORK}_{stat}") for stat in STATS}
        row["slowest_rank"] = work["argmax"]
        row["slowest_vs_median"] = _ratio(work["max"], work["median"])
        step = row.get("step_time_mean", math.nan)
        row["slowest_excess_frac"] = _ratio(work["max"] - work["median"], step)
    if _WAIT in rest:
        row["data_wait_frac"] = rest.pop(_WAIT)
    if f"{_MEMORY}_max" in rest:
        row["peak_memory_mb"] = rest.pop(f"{_MEMORY}_max")
        rest.pop(f"{_MEMORY}_min")
        rest.pop(f"{_MEMORY}_mean")
    return {**row, **rest}
