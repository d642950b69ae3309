"""FLOPs of a training step, counted once; TFLOP/s in every row; MFU against a known peak."""

from __future__ import annotations

import pytest
import torch
from helpers import spawn
from test_loop import small_run

from distrib.config import to_config
from distrib.models import MLP
from distrib.trainer import flops as fl
from distrib.trainer.loop import fit


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _mlp_run(**trainer: object) -> dict:
    values = small_run(epochs=1, log_every=5, **trainer)
    values["model"].update(hidden=256, depth=4)
    return values


def test_the_mlp_counts_six_flops_per_parameter_and_sample():
    # The hand count of a linear stack: 2 x params per sample forward, x3 with the backward.
    model = MLP(in_features=16, hidden=256, depth=4)
    x, y = torch.randn(32, 16), torch.randint(0, 10, (32,))
    counted = fl.count_flops_per_sample(
        model, lambda: torch.nn.functional.cross_entropy(model(x), y), 32
    )
    assert counted == pytest.approx(6 * _params(model), rel=0.05)


def test_counting_leaves_the_rng_buffers_and_gradients_as_they_were():
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5)
    )
    x = torch.randn(16, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(5)
    fl.count_flops_per_sample(model, lambda: model(x).sum(), 16)
    after_count = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(3), after_count)  # the dropout's draws were forked away
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm's running statistics put back
    assert all(p.grad is None for p in model.parameters())


class _Counted(MLP):
    flops_per_sample = 1.5e6


def test_a_model_that_gives_its_own_count_is_taken_at_its_word():
    model = _Counted(in_features=4, hidden=8, depth=1)
    x = torch.randn(2, 4)
    assert fl.count_flops_per_sample(model, lambda: model(x).sum(), 2) == 1.5e6
    assert all(p.grad is None for p in model.parameters())  # nothing was run


def test_the_peak_table_matches_by_the_longest_name():
    assert fl.peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0
    assert fl.peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
    assert fl.peak_tflops("NVIDIA A100-SXM4-80GB", "fp32") == 19.5
    assert fl.peak_tflops("NVIDIA L40S", "fp16") == 362.0
    assert fl.peak_tflops("cpu", "fp32") is None


def _fit_on(values: dict, name: str) -> dict:
    fl.device_name = lambda device: name  # as torch.cuda.get_device_name would say
    return fit(to_config(values), None)


def test_every_training_row_has_tflops_and_mfu_is_achieved_over_the_peak():
    values = _mlp_run()
    ranks = spawn(_fit_on, values, "NVIDIA H100 80GB HBM3", world_size=2)
    rows = [r for r in ranks[0]["history"] if "loss" in r]
    assert len(rows) == 5 and rows == [r for r in ranks[1]["history"] if "loss" in r]
    hand = 6 * _params(MLP(in_features=16, hidden=256, depth=4))
    for r in rows:
        assert r["tflops_per_s"] > 0
        assert r["mfu"] == pytest.approx(r["tflops_per_s"] / 67.0, rel=1e-12)  # fp32 H100 SXM
        per_sample = r["tflops_per_s"] * 1e12 / (r["samples_per_s"] / 2)  # per rank
        assert per_sample == pytest.approx(hand, rel=0.05)


def test_trainer_peak_tflops_gives_mfu_on_a_cpu_and_without_it_there_is_none():
    (given,) = spawn(_fit_on, _mlp_run(peak_tflops=0.5), "cpu", world_size=1)
    (unknown,) = spawn(_fit_on, _mlp_run(), "cpu", world_size=1)
    rows = [r for r in given["history"] if "loss" in r]
    assert rows and all(r["mfu"] == pytest.approx(r["tflops_per_s"] / 0.5) for r in rows)
    rows = [r for r in unknown["history"] if "loss" in r]
    assert rows and all("tflops_per_s" in r and "mfu" not in r for r in rows)
