"""Data-parallel training is the same training, only spread out."""

from __future__ import annotations

import torch
from helpers import spawn

from distrib.config import to_config
from distrib.loop import fit


def small_run(**trainer: object) -> dict:
    return {
        "model": {"_target_": "distrib.models.MLP", "in_features": 16, "hidden": 32, "depth": 2},
        "data": {
            "train": {
                "_target_": "distrib.datasets.synthetic",
                "split": "train",
                "size": 1000,
                "features": 16,
            },
            "eval": {
                "_target_": "distrib.datasets.synthetic",
                "split": "test",
                "size": 1000,
                "features": 16,
            },
        },
        "optim": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05, "momentum": 0.9},
        "trainer": {"epochs": 3, "global_batch_size": 32, "log_every": 1, "seed": 3, **trainer},
    }


def _fit(values: dict) -> dict:
    return fit(to_config(values), None, return_weights=True)


def _losses(result: dict) -> list[float]:
    return [h["loss"] for h in result["history"] if "loss" in h]


def test_two_workers_reproduce_one_worker_at_the_same_global_batch():
    values = small_run()
    (one,) = spawn(_fit, values, world_size=1)
    two = spawn(_fit, values, world_size=2)
    losses1, losses2 = _losses(one), _losses(two[0])
    assert len(losses1) == len(losses2) >= 20  # 800 train samples / 32 = 25 steps x 3 epochs
    for a, b in zip(losses1, losses2, strict=True):
        assert abs(a - b) <= 1e-5 * abs(a)
    for k, w in one["state_dict"].items():
        assert torch.allclose(two[0]["state_dict"][k], w, atol=1e-4, rtol=0), k
        assert torch.equal(two[0]["state_dict"][k], two[1]["state_dict"][k])  # replicas stay equal
    assert one["eval_total"] == two[0]["eval_total"] == 200  # every test sample counted once
    assert abs(one["eval_acc"] - two[0]["eval_acc"]) <= 1 / 200


def test_gradient_accumulation_matches_the_full_batch():
    (full,) = spawn(_fit, small_run(epochs=1), world_size=1)
    two_accum = spawn(_fit, small_run(epochs=1, grad_accum=2), world_size=2)
    for a, b in zip(_losses(full), _losses(two_accum[0]), strict=True):
        assert abs(a - b) <= 1e-5 * abs(a)


def test_max_steps_stops_early_and_training_learns():
    (res,) = spawn(_fit, small_run(epochs=50, max_steps=30), world_size=1)
    losses = _losses(res)
    assert len(losses) == 30
    assert sum(losses[-5:]) < sum(losses[:5])


def _fit_into(values: dict, run_dir: str) -> dict:
    from pathlib import Path

    return fit(to_config(values), Path(run_dir))


def test_every_steps_checkpoints_land_on_epoch_ends_too(tmp_path):
    # 25 steps per epoch: step 25 ends epoch 0; without every_epoch only every_steps saves it.
    ckpt = {"every_steps": 25, "every_epoch": False, "keep_last": 5}
    spawn(
        _fit_into, small_run(epochs=2, checkpoint=ckpt, log_every=100), str(tmp_path), world_size=1
    )
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*.pt"))
    assert names == ["step-00000025.pt", "step-00000050.pt"]
