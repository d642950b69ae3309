"""Exact evaluation and the logged training loss: sums over every sample, whatever the batching."""

from __future__ import annotations

import pytest
from helpers import spawn

from distrib.config import to_config
from distrib.trainer.loop import fit


def _values(**trainer: object) -> dict:
    data = {"_target_": "distrib.datasets.synthetic", "size": 500, "features": 16}
    return {
        "model": {"_target_": "distrib.models.MLP", "in_features": 16, "hidden": 16, "depth": 1},
        "data": {"train": {**data, "split": "train"}, "eval": {**data, "split": "test"}},
        "optim": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05},
        "trainer": {"epochs": 1, "global_batch_size": 32, "seed": 1, **trainer},
    }


def _fit(values: dict) -> dict:
    return fit(to_config(values), None)


@pytest.mark.slow
def test_evaluation_over_many_batches_per_rank_sums_every_batch():
    # 100 eval samples: one batch per rank at 256, seven (of 7 or 8 samples) at 8
    one = spawn(_fit, _values(eval_batch_size=256))
    many = spawn(_fit, _values(eval_batch_size=8))
    for a, b in zip(one, many, strict=True):
        assert a["eval_total"] == b["eval_total"] == 100
        assert a["eval_correct"] == b["eval_correct"]
        assert abs(a["eval_loss"] - b["eval_loss"]) <= 1e-6 * abs(a["eval_loss"])


@pytest.mark.slow
def test_the_logged_loss_of_a_window_with_a_short_step_is_the_mean_over_its_samples():
    # 400 train samples at a global batch of 48 and drop_last=false: 8 steps of 48, then 16
    steps = {"drop_last": False, "global_batch_size": 48}
    (each,) = spawn(_fit, _values(log_every=1, **steps), world_size=1)
    (window,) = spawn(_fit, _values(log_every=3, **steps), world_size=1)
    per_step = [h["loss"] for h in each["history"] if "loss" in h]
    assert len(per_step) == 9
    last = [h for h in window["history"] if "loss" in h][-1]  # steps 7, 8 and the short 9
    expected = (48 * per_step[6] + 48 * per_step[7] + 16 * per_step[8]) / (48 + 48 + 16)
    assert last["step"] == 9
    assert abs(last["loss"] - expected) <= 1e-6 * expected


@pytest.mark.slow
def test_eval_metrics_are_the_same_at_one_two_and_three_workers():
    # the same weights (lr 0); each sample's loss is computed alike at any world size, and the
    # sums are float64 (in float32 they differed by 5e-8 relative between 1, 2 and 3 workers)
    values = _values(max_steps=1, global_batch_size=48)
    values["optim"]["lr"] = 0.0
    values["data"]["eval"]["size"] = 5000  # 1000 eval samples, shards of 1000, 500, 334/333
    runs = [spawn(_fit, values, world_size=w)[0] for w in (1, 2, 3)]
    assert {r["eval_total"] for r in runs} == {1000}
    assert len({r["eval_loss"] for r in runs}) == 1, [r["eval_loss"] for r in runs]
    assert len({r["eval_acc"] for r in runs}) == 1
