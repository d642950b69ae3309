"""Data-parallel training is the same training, only spread out."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import spawn

from distrib.config import to_config
from distrib.trainer.loop import fit


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


_BLOCKING_TENSOR = ("item", "tolist", "cpu")
_BLOCKING_DIST = (
    "all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor",
    "reduce", "gather", "scatter", "barrier", "monitored_barrier", "all_gather_object",
    "broadcast_object_list",
)  # fmt: skip


def _count_blocking_calls(values: dict) -> int:
    """``fit`` with every call that makes the host wait (for the device, or for the other
    ranks) counted: ``Tensor.item/tolist/cpu``, ``torch.cuda.synchronize`` and the collectives
    of ``torch.distributed``. DDP's own gradient all-reduce runs in its C++ reducer, overlapped
    with the backward pass, and is not counted."""
    import torch.distributed as dist

    counts = [0]

    def counted(fn):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            counts[0] += 1
            return fn(*args, **kwargs)

        return wrapper

    for name in _BLOCKING_TENSOR:
        setattr(torch.Tensor, name, counted(getattr(torch.Tensor, name)))
    torch.cuda.synchronize = counted(torch.cuda.synchronize)
    for name in _BLOCKING_DIST:
        setattr(dist, name, counted(getattr(dist, name)))
    fit(to_config(values), None)
    return counts[0]


def test_the_training_step_makes_the_host_wait_at_most_once_per_five_steps():
    # Per optimizer step, by difference of two run lengths in one epoch (setup, evaluation and
    # the epoch's own bookkeeping cancel out), at log_every=10: the log step's one all_reduce
    # and one read-back; nothing on the other steps.
    def run(steps: int) -> dict:
        values = small_run(epochs=1, max_steps=steps, log_every=10, global_batch_size=16)
        # off: a straggler warning's one host-name gather, once a run, lands in one run of the
        # two or in neither as two busy cores please (it is not a per-step cost)
        values["trainer"]["straggler_factor"] = 0
        values["data"]["train"]["size"] = 16 * 400 * 5 // 4  # 400 steps of train data
        return values

    short = spawn(_count_blocking_calls, run(100), world_size=2)
    long = spawn(_count_blocking_calls, run(300), world_size=2)
    per_step = [(b - a) / 200 for a, b in zip(short, long, strict=True)]
    assert max(per_step) <= 0.2, per_step


class _SignalAt(torch.utils.data.Dataset):
    """Synthetic data that sends this process SIGUSR1 when item ``at`` is served."""

    def __init__(self, at: int) -> None:
        from distrib.datasets import synthetic

        self.data, self.at, self.served = synthetic("train", size=4000, features=16), at, 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
        import os
        import signal

        self.served += 1
        if self.served == self.at:
            os.kill(os.getpid(), signal.SIGUSR1)
        return self.data[i]


def _stopped_at(values: dict, run_dir: str) -> tuple[object, list[str]]:
    from pathlib import Path

    try:
        fit(to_config(values), Path(run_dir))
        code: object = 0
    except SystemExit as e:
        code = e.code
    return code, sorted(p.name for p in (Path(run_dir) / "checkpoints").glob("step-*.pt"))


def test_a_preemption_signal_stops_within_ten_steps_even_when_logging_is_rare(tmp_path):
    # No per-step vote any more: it rides on the log step, plus one every 10 steps. Signalled
    # during step 23 (16 samples a step), the job must save and stop by step 30, not step 100.
    values = small_run(epochs=1, log_every=100, global_batch_size=16)
    values["data"]["train"] = {"_target_": "test_loop._SignalAt", "at": 16 * 22 + 5}
    values["trainer"]["checkpoint"] = {"every_epoch": False}
    ((code, saved),) = spawn(_stopped_at, values, str(tmp_path), world_size=1)
    assert code == 75
    assert saved == ["step-00000030.pt"], saved


def test_a_training_set_smaller_than_one_global_batch_is_an_error_not_a_success():
    # Seen before: 0 steps, exit 0, step-00000000.pt and the untrained model's accuracy.
    values = small_run(epochs=1, global_batch_size=64)
    values["data"]["train"]["size"] = 60  # 48 train samples < one global batch of 64
    with pytest.raises(Exception, match=r"data.train: 48 samples make 0 optimizer steps at "
                       r"trainer.global_batch_size=64 on 2 worker\(s\)"):  # fmt: skip
        spawn(_fit, values, world_size=2)


def _fit_or_error(values: dict, run_dir: str) -> dict:
    from pathlib import Path

    try:
        out = fit(to_config(values), Path(run_dir))
        return {"error": "", "eval_acc": out["eval_acc"]}
    except Exception as e:  # noqa: BLE001 - the test looks at the message
        return {"error": f"{type(e).__name__}: {e}"}


def _strict_json(path) -> object:  # type: ignore[no-untyped-def]
    def refuse(token: str) -> None:
        raise ValueError(f"{path}: bare {token} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_a_loss_that_turns_nan_stops_the_run_naming_the_step_and_saves_none_of_it(tmp_path):
    # Seen before: exit 0, NaN weights checkpointed every epoch, bare NaN in manifest.json.
    values = small_run(epochs=3, log_every=5)
    values["optim"]["lr"] = 1e30  # diverges within a few steps
    values["trainer"]["checkpoint"] = {"every_steps": 2, "keep_last": 2}
    (res,) = spawn(_fit_or_error, values, str(tmp_path), world_size=1)
    assert res["error"].startswith("NonFiniteLoss: the ") and "step" in res["error"], res
    for ckpt in (tmp_path / "checkpoints").glob("step-*.pt"):
        state = torch.load(ckpt, weights_only=True)["model"]
        assert all(torch.isfinite(v).all() for v in state.values()), ckpt.name
    manifest = tmp_path / "checkpoints" / "manifest.json"
    if manifest.exists():
        _strict_json(manifest)
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda t: (_ for _ in ()).throw(ValueError(t)))


def test_nonfinite_skip_drops_the_poisoned_step_and_trains_on(tmp_path):
    values = small_run(epochs=1, log_every=5, nonfinite="skip")
    values["data"]["train"] = {"_target_": "fixtures.PoisonedAt", "at": 7, "size": 1000}
    res = spawn(_fit_or_error, values, str(tmp_path), world_size=2)[0]
    assert res["error"] == "", res
    last = sorted((tmp_path / "checkpoints").glob("step-*.pt"))[-1]
    state = torch.load(last, weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in state.values())
    rows = [
        r
        for r in map(
            __import__("json").loads, (tmp_path / "metrics.jsonl").read_text().splitlines()
        )
        if "loss" in r
    ]
    assert all(isinstance(r["loss"], float) for r in rows)  # the skipped step is not averaged in
    logs = (tmp_path / "logs" / "rank0.log").read_text()
    assert logs.count("non-finite gradients at step") == 1, logs


def test_a_short_last_accumulation_step_is_averaged_over_the_micro_batches_it_holds():
    # 808 samples, global batch 32, no drop_last: the last step holds 8 samples in ONE
    # micro-batch of grad_accum=2; dividing its loss by grad_accum would halve that step.
    def run(accum: int) -> dict:
        values = small_run(epochs=1, grad_accum=accum, drop_last=False)
        values["data"]["train"]["size"] = 1010  # 808 train samples
        return spawn(_fit, values, world_size=1)[0]

    one, two = run(1), run(2)
    assert len(_losses(one)) == len(_losses(two)) == 26
    for k, w in one["state_dict"].items():
        torch.testing.assert_close(two["state_dict"][k], w, rtol=0, atol=1e-6)


def _fit_weights_into(values: dict, run_dir: str) -> dict:
    from pathlib import Path

    return fit(to_config(values), Path(run_dir), return_weights=True)


def test_a_resumed_scheduler_continues_where_it_stopped(tmp_path):
    def run(max_steps: int) -> dict:
        values = small_run(epochs=2, max_steps=max_steps, log_every=1)
        values["scheduler"] = {
            "_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True,
            "step_size": 7, "gamma": 0.5,
        }  # fmt: skip
        return values

    straight = spawn(_fit_weights_into, run(0), str(tmp_path / "a"), world_size=1)[0]
    spawn(_fit_weights_into, run(20), str(tmp_path / "b"), world_size=1)
    resumed = spawn(_fit_weights_into, run(0), str(tmp_path / "b"), world_size=1)[0]
    lrs = {h["step"]: h["lr"] for h in straight["history"] if "lr" in h}
    assert [h["lr"] for h in resumed["history"] if "lr" in h] == [
        lrs[h["step"]] for h in resumed["history"] if "lr" in h
    ]
    assert lrs[50] == 0.05 * 0.5 ** (50 // 7)
    for k, w in straight["state_dict"].items():
        assert torch.equal(resumed["state_dict"][k], w), k


class GradientsSeen(torch.nn.Module):
    """distrib's MLP noting, at each forward, whether any parameter holds a gradient."""

    seen: list[tuple[bool, bool]] = []  # (training?, gradients held?)

    def __init__(self, **kwargs: object) -> None:
        super().__init__()
        from distrib.models import MLP

        self.mlp = MLP(**kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        held = any(p.grad is not None for p in self.parameters())
        GradientsSeen.seen.append((self.training, held))
        return self.mlp(x)


def test_gradients_live_from_a_backward_to_the_next_and_never_through_evaluation():
    values = small_run(epochs=2, grad_accum=2)
    values["model"]["_target_"] = f"{__name__}.GradientsSeen"
    GradientsSeen.seen.clear()
    fit(to_config(values), None)
    train = [held for training, held in GradientsSeen.seen if training]
    train = train[1:]  # the first is the FLOP count's pass (distrib.trainer.flops), before any
    # every training forward but an epoch's first sees gradients: a step's first forward the
    # last step's (dropped just before its backward: on the CPU that memory is reused, not
    # returned to the OS and faulted in again), its second micro-batch its own...
    assert [i for i, held in enumerate(train) if not held] == [0, len(train) // 2], train
    # ...and an evaluation sees none: that memory is evaluation's
    assert not [held for training, held in GradientsSeen.seen if not training and held]
