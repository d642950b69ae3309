from __future__ import annotations

import math
import re
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from helpers import spawn

import distrib
from distrib.trainer.metrics import (
    Metrics,
    StepTimer,
    peak_memory_mb,
    record_step,
    report,
    summarize,
)

# Every collective a metrics reduction could sneak in besides the one all_reduce.
_COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_object",
    "broadcast",
    "broadcast_object_list",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "gather",
    "scatter",
    "barrier",
    "all_to_all",
)


def _count_collectives(calls: Counter) -> None:
    """Wrap every collective in ``torch.distributed`` so this process counts its calls."""
    for name in _COLLECTIVES:
        original = getattr(dist, name, None)
        if original is None:
            continue

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        setattr(dist, name, counted)


def _aggregate_on_two_ranks() -> dict:
    ctx = distrib.init(timeout_s=60)
    calls: Counter = Counter()
    _count_collectives(calls)
    m = Metrics()
    r = ctx.rank
    if r == 0:
        m.add("loss", 1.0, weight=2)
        m.add("loss", 3.0, weight=1)
        m.add_ratio("acc", 3, 4)
        m.add_per_rank("step_time", 0.1)
        m.add_per_rank("step_time", 0.3)
    else:
        m.add("loss", 10.0, weight=5)
        m.add_ratio("acc", 5, 12)
        m.add_per_rank("step_time", 0.5)
    for i in reversed(range(30)):  # many metrics, added in another order than sorted
        m.add(f"m{i:02d}", float(i * (r + 1)))
    # values still on the device, twice on rank 1: (1*2 + 4*1 + 4*2) / (2 + 1 + 2) = 14 / 5
    if r == 0:
        m.add_device("dev_loss", torch.tensor(1.0), weight=2)
    else:
        m.add_device("dev_loss", torch.tensor(4.0), weight=1)
        m.add_device("dev_loss", torch.tensor(4.0), weight=2)
    first = m.compute(ctx)
    after_first = dict(calls)
    m.add("loss", float(r))  # the window was reset: only this round's values count
    m.add_per_rank("step_time", 1.0 + r)
    second = m.compute(ctx)
    after_second = dict(calls)
    m.add("only_on_rank0" if r == 0 else "only_on_rank1", 1.0)
    try:
        m.compute(ctx)
        mismatch = ""
    except RuntimeError as e:
        mismatch = str(e)
    return {
        "first": first,
        "second": second,
        "calls_first": after_first,
        "calls_second": after_second,
        "calls_all": dict(calls),
        "mismatch": mismatch,
    }


@pytest.fixture(scope="module")
def two_ranks() -> list[dict]:
    return spawn(_aggregate_on_two_ranks, world_size=2)


def test_exact_global_weighted_mean_and_extremes(two_ranks):
    for res in two_ranks:
        out = res["first"]
        assert out["loss"] == pytest.approx((1.0 * 2 + 3.0 * 1 + 10.0 * 5) / (2 + 1 + 5))
        assert out["acc"] == pytest.approx((3 + 5) / (4 + 12))
        assert out["step_time_min"] == pytest.approx(0.2)  # rank 0's local mean
        assert out["step_time_max"] == pytest.approx(0.5)
        assert out["step_time_mean"] == pytest.approx(0.35)
        for i in range(30):
            assert out[f"m{i:02d}"] == pytest.approx((i * 1 + i * 2) / 2)
        assert out["dev_loss"] == pytest.approx(14 / 5)
    assert two_ranks[0]["first"] == two_ranks[1]["first"]


def test_compute_resets_the_window(two_ranks):
    for res in two_ranks:
        assert res["second"] == pytest.approx(
            {"loss": 0.5, "step_time_min": 1.0, "step_time_mean": 1.5, "step_time_max": 2.0}
        )


def test_one_all_reduce_per_compute_and_no_other_collective(two_ranks):
    for res in two_ranks:
        assert res["calls_first"] == {"all_reduce": 1}
        assert res["calls_second"] == {"all_reduce": 2}
        assert res["calls_all"] == {"all_reduce": 3}


def test_ranks_with_different_names_fail_on_every_rank(two_ranks):
    assert "ranks [1] added different metric names than rank 0" in two_ranks[0]["mismatch"]
    assert "ranks [0] added different metric names than rank 1" in two_ranks[1]["mismatch"]


def test_lone_process_computes_locally_without_collectives(monkeypatch):
    def no_collective(*args, **kwargs):
        raise AssertionError("no collective without a process group")

    monkeypatch.setattr(dist, "all_reduce", no_collective)
    m = Metrics()
    m.add("loss", 2.0, weight=3)
    m.add("loss", 4.0, weight=1)
    m.add_ratio("empty", 0.0, 0.0)
    m.add_per_rank("t", 0.25)
    out = m.compute(distrib.current())
    assert out["loss"] == pytest.approx(2.5)
    assert math.isnan(out["empty"])
    assert out["t_min"] == out["t_mean"] == out["t_max"] == 0.25
    assert m.names() == [] and m.compute() == {}


def test_one_name_one_kind():
    m = Metrics()
    m.add("x", 1.0)
    with pytest.raises(ValueError, match="'x'"):
        m.add_per_rank("x", 1.0)


def test_step_timer_splits_data_wait_from_step_time():
    now = [0.0]
    timer = StepTimer(clock=lambda: now[0])

    def batches():
        for wait in (0.5, 0.25, 0.25):
            now[0] += wait  # the loader takes this long to produce the batch
            yield wait

    steps = []
    for i, _ in enumerate(timer.iterate(batches())):
        now[0] += 1.0  # compute
        if i % 2 == 1 or i == 2:  # two micro-batches, then a short last step
            steps.append(timer.step_done())
    assert steps[0].step_s == pytest.approx(2.75) and steps[0].data_wait_s == pytest.approx(0.75)
    assert steps[1].step_s == pytest.approx(1.25) and steps[1].data_wait_s == pytest.approx(0.25)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_peak_memory_is_this_process_peak_rss_in_mib():
    # VmHWM is the kernel's own peak RSS in kB: the same number ru_maxrss reports in KiB.
    status = Path("/proc/self/status").read_text()
    hwm_kib = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))
    assert peak_memory_mb(torch.device("cpu")) == pytest.approx(hwm_kib / 1024, rel=0.05)


def test_summarize_names_the_built_in_outputs():
    computed = {
        "loss": 0.5,
        "samples": 100.0,
        "data_wait": 0.1,
        "step_time_min": 0.1,
        "step_time_mean": 0.2,
        "step_time_max": 0.4,
        "memory_mb_min": 10.0,
        "memory_mb_mean": 15.0,
        "memory_mb_max": 20.0,
        "grad_norm": 1.5,
    }
    row = summarize(computed, world_size=4, epoch=2, step=120, lr=0.01)
    assert row == {
        "step": 120,
        "epoch": 2,
        "loss": 0.5,
        "lr": 0.01,
        "samples_per_s": 400.0,
        "step_time_min": 0.1,
        "step_time_mean": 0.2,
        "step_time_max": 0.4,
        "straggler_ratio": 2.0,
        "data_wait_frac": 0.1,
        "peak_memory_mb": 20.0,
        "grad_norm": 1.5,
    }


def test_record_step_and_report_in_a_lone_process():
    ctx = distrib.init(environ={})
    m = Metrics()
    record_step(m, loss=1.0, samples=32, step_s=0.5, data_wait_s=0.1)
    record_step(m, loss=3.0, samples=32, step_s=1.5, data_wait_s=0.1)
    row = report(m, ctx, epoch=0, step=2, lr=0.1)
    assert row["loss"] == pytest.approx(2.0)
    assert row["samples_per_s"] == pytest.approx(64 / 2.0)
    assert row["data_wait_frac"] == pytest.approx(0.2 / 2.0)
    assert row["step_time_max"] == row["step_time_mean"] == pytest.approx(1.0)
    assert row["straggler_ratio"] == pytest.approx(1.0)
    assert row["peak_memory_mb"] > 0 and row["step"] == 2 and row["epoch"] == 0
