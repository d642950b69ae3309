"""``trainer.checkpoint.every_steps=auto``: the Young/Daly interval, from injected costs."""

from __future__ import annotations

import logging
import math

import pytest
from helpers import spawn
from test_loop import small_run

import distrib
from distrib.checkpoint.interval import GPU_MTBF_H, AutoInterval, job_mtbf_h, young_daly_s
from distrib.cli.train import preflight


def test_two_second_saves_and_a_three_hour_mtbf_checkpoint_every_208_s(caplog):
    assert young_daly_s(2.0, 3 * 3600) == pytest.approx(math.sqrt(2 * 2 * 10800))  # 207.8 s
    plan = AutoInterval(world_size=8, mtbf_h=3, min_s=60, max_s=3600)
    with caplog.at_level(logging.INFO, logger="distrib.checkpoint"):
        assert plan.update(cost_s=2.0, step_s=0.5) == 416  # 207.8 s / 0.5 s per step
        assert plan.update(cost_s=2.1, step_s=0.5) == 426  # a small change: not logged again
        assert plan.update(cost_s=8.0, step_s=0.5) == 831  # saves got 4x dearer: 2x the interval
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "every 416 steps" in lines[0] and "sqrt(2 x 2 s save x 3 h MTBF) = 208 s" in lines[0]
    assert "trainer.checkpoint.mtbf_h=3" in lines[0]


def test_the_default_mtbf_is_one_gpus_over_the_world_and_the_bounds_hold():
    assert pytest.approx(50_677, rel=1e-3) == GPU_MTBF_H  # 54 days x 16,384 GPUs / 419
    assert job_mtbf_h(16384) == pytest.approx(54 * 24 / 419)  # Llama 3: one every ~3.1 h
    one = AutoInterval(world_size=1, mtbf_h=None, min_s=60, max_s=3600, announce=False)
    assert one.update(cost_s=2.0, step_s=1.0) == 3600  # 19,100 s ideal: capped at max_s
    cheap = AutoInterval(world_size=1, mtbf_h=3, min_s=60, max_s=3600, announce=False)
    assert cheap.update(cost_s=0.01, step_s=1.0) == 60  # 14.7 s ideal: raised to min_s
    assert cheap.update(cost_s=math.nan, step_s=1.0) == 60  # no measurement: unchanged


def _fit_with_two_second_saves(values: dict, run_dir: str) -> list[str]:
    """The trainer, its save clock faked so that every save measures 2 s."""
    from pathlib import Path

    from distrib.config import to_config
    from distrib.trainer import loop

    ticks = iter(range(0, 10_000, 2))
    loop._save_clock = lambda: float(next(ticks))
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("distrib.checkpoint").addHandler(handler)
    logging.getLogger("distrib.checkpoint").setLevel(logging.INFO)
    loop.fit(to_config(values), Path(run_dir))
    return [line for line in seen if "every_steps=auto" in line]


def test_the_trainer_saves_at_the_first_log_step_then_at_the_measured_interval(tmp_path):
    ckpt = {"every_steps": "auto", "mtbf_h": 3, "every_epoch": False, "keep_last": 9}
    values = small_run(epochs=1, log_every=5, checkpoint=ckpt)  # 25 steps
    (lines,) = spawn(_fit_with_two_second_saves, values, str(tmp_path), world_size=1)
    assert len(lines) == 1 and "sqrt(2 x 2 s save x 3 h MTBF) = 208 s" in lines[0]
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*.pt"))
    # step 5 measures the cost; 208 s is far more than this run's 25 steps; the end saves
    assert names == ["step-00000005.pt", "step-00000025.pt"]


@pytest.mark.parametrize("value", ["0", "-3"])
def test_a_bad_mtbf_is_one_line_naming_the_key(value: str):
    with pytest.raises(distrib.ConfigError) as info:
        preflight([f"trainer.checkpoint.mtbf_h={value}"])
    assert str(info.value) == (
        f"trainer.checkpoint.mtbf_h={float(value)}: expected a number of hours > 0 (null: default)"
    )


def test_every_steps_takes_auto_or_a_count():
    cfg = preflight(["trainer.checkpoint.every_steps=auto"])
    assert cfg.trainer.checkpoint.every_steps == "auto"
    with pytest.raises(distrib.ConfigError, match="every_steps='often': expected an integer >= 0"):
        preflight(["trainer.checkpoint.every_steps=often"])
