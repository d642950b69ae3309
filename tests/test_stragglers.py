"""Stragglers named: the slowest rank in each log row, a warning while it stays slow."""

from __future__ import annotations

import logging

from helpers import spawn
from test_loop import small_run

from distrib.trainer.metrics import summarize
from distrib.trainer.stragglers import Watch


def _row(rank: int, ratio: float, excess: float = 0.5) -> dict[str, float]:
    return {"slowest_rank": rank, "slowest_vs_median": ratio, "slowest_excess_frac": excess}


def test_a_rank_that_stays_slow_is_named_once_then_every_n_log_rows():
    watch = Watch(factor=1.5, every=3)
    said = [watch.update(_row(1, 4.0)) for _ in range(7)]
    assert said == [1, None, None, 1, None, None, 1]
    assert watch.update(_row(1, 1.2)) is None  # balanced again
    assert watch.update(_row(1, 4.0)) == 1  # slow again: named at once
    assert watch.update(_row(2, 4.0)) == 2  # another rank: named at once
    assert watch.update(_row(2, 4.0, excess=0.01)) is None  # 1% of a step: not worth a word
    assert Watch(factor=0, every=1).update(_row(1, 9.0)) is None  # off


def test_the_row_names_the_rank_whose_work_before_the_sync_is_longest():
    computed = {
        "step_time_min": 1.0, "step_time_mean": 1.0, "step_time_max": 1.0,  # synced: all equal
        "work_time_min": 0.1, "work_time_mean": 0.3, "work_time_max": 0.7,
        "work_time_median": 0.1, "work_time_argmax": 2.0,
    }  # fmt: skip
    row = summarize(computed, world_size=3, epoch=1, step=10, lr=0.1)
    assert row["slowest_rank"] == 2 and row["straggler_ratio"] == 1.0
    assert abs(row["slowest_vs_median"] - 7.0) < 1e-12
    assert abs(row["slowest_excess_frac"] - 0.6) < 1e-12
    assert not any(k.startswith("work_time") for k in row)


def _warnings(values: dict) -> dict:
    from distrib.config import to_config
    from distrib.trainer.loop import fit

    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("distrib.trainer.loop").addHandler(handler)
    out = fit(to_config(values), None)
    rows = [h for h in out["history"] if "slowest_rank" in h]
    return {"warnings": [w for w in seen if "straggler" in w], "rows": rows}


def _run(sleep_s: float) -> list[dict]:
    # Factor 4 on the median of 4 steps per row, against a 0.3 s sleep: the slow rank's work
    # is ~100x the other's, while load on a shared 2-core machine cannot make one rank's
    # median step 4x the other's in a balanced run.
    values = small_run(epochs=1, max_steps=12, log_every=4, straggler_factor=4, straggler_every=2)
    values["task"] = {"_target_": "fixtures.SlowOnRank", "rank": 1, "sleep_s": sleep_s}
    return spawn(_warnings, values, world_size=2)


def test_a_rank_that_sleeps_in_its_step_is_named_with_its_host_within_three_log_steps():
    import socket

    main, other = _run(sleep_s=0.3)
    assert other["warnings"] == []  # rank 0 says it, once for the job
    first = main["warnings"][0]
    assert first.startswith(f"straggler: rank 1 (host {socket.gethostname()}) works ")
    assert "at step 4;" in first  # the first log row
    assert len(main["warnings"]) == 2  # rows at steps 4, 8, 12: again at the 3rd (every 2)
    assert [r["slowest_rank"] for r in main["rows"]] == [1.0, 1.0, 1.0]


def test_a_balanced_run_warns_of_no_straggler():
    main, _ = _run(sleep_s=0.0)
    assert main["warnings"] == []
    assert len(main["rows"]) == 3


def test_a_steps_work_runs_from_its_first_batch_to_the_gradient_sync():
    from distrib.trainer.metrics import StepTimer

    now = [0.0]
    timer = StepTimer(clock=lambda: now[0])
    for _ in timer.iterate(range(2)):
        now[0] += 1.0  # data and forward: this rank's own work
        timer.work_done()
        now[0] += 5.0  # the backward's gradient sync: waiting for peers
        timer.step_done()
        now[0] += 10.0  # logging or saving between steps: no step's work
    assert timer.take_work() == [1.0, 1.0]
    assert timer.take_work() == []
