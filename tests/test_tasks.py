"""Every task trains data-parallel as the classifier does: 2 workers = 1, resume is exact."""

from __future__ import annotations

import math
import re
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from helpers import run_cli, spawn
from torch import nn

from distrib.config import to_config
from distrib.errors import ConfigError
from distrib.tasks import Classification, ModelLoss, NextToken, Regression, batch_size, to_device
from distrib.trainer.loop import fit

Pair = namedtuple("Pair", "x y")


def test_batches_of_any_nesting_move_to_the_device_and_count_their_samples():
    meta = torch.device("meta")
    batch = {"a": (torch.ones(5, 2), [torch.zeros(5)]), "p": Pair(torch.ones(5), 3), "s": "id"}
    moved = to_device(batch, meta)
    assert moved["a"][0].device == meta and moved["a"][1][0].device == meta
    assert isinstance(moved["p"], Pair) and moved["p"].x.device == meta and moved["p"].y == 3
    assert moved["s"] == "id" and isinstance(moved["a"], tuple) and isinstance(moved["a"][1], list)
    assert batch_size(batch) == 5
    assert batch_size({"ids": torch.zeros(7, 3), "n": 1}) == 7


def _cases() -> list[tuple[object, nn.Module, object]]:
    torch.manual_seed(0)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    return [
        (Classification(), nn.Linear(4, 3), (x, y)),
        (Regression(), nn.Linear(4, 1), [x, torch.randn(6)]),  # (6, 1) output vs (6,) target
        (NextToken(), nn.Embedding(5, 5), (torch.randint(0, 5, (2, 9)),)),
        (ModelLoss(), _DictModel(), {"image": x, "label": y}),
    ]


def test_each_task_reports_exact_sums_and_its_metrics():
    (cls, linear, (x, y)), reg_case, lm_case, self_case = _cases()
    out = cls(model=linear.eval(), batch=(x, y))
    logits = linear(x)
    torch.testing.assert_close(out.loss, nn.functional.cross_entropy(logits, y))
    m = cls.metrics({k: float(v) for k, v in out.sums.items()})
    assert m["total"] == 6 and m["correct"] == int((logits.argmax(1) == y).sum())

    reg, model, batch = reg_case
    out = reg(model=model.eval(), batch=batch)
    sums = {k: float(v) for k, v in out.sums.items()}
    assert sums["count"] == 6
    assert reg.metrics(sums)["rmse"] == pytest.approx(math.sqrt(float(out.loss.detach())))

    lm, model, batch = lm_case
    assert lm(model=model.eval(), batch=batch).sums["count"] == 16  # 2 sequences x 8 positions

    own, model, batch = self_case
    out = own(model=model.eval(), batch=batch)
    assert out.sums["count"] == 6 and float(out.loss) == pytest.approx(2.0)


def test_a_training_step_gets_the_same_loss_and_no_sums():
    """The trainer reads only the loss of a training step: its sums would be wasted ops."""
    for task, model, batch in _cases():
        train = task(model=model.train(), batch=batch)
        evaluated = task(model=model.eval(), batch=batch)
        assert train.sums == {} and evaluated.sums, type(task).__name__
        torch.testing.assert_close(train.loss, evaluated.loss)


class _DictModel(nn.Module):
    def forward(self, image: torch.Tensor, label: torch.Tensor) -> object:
        return type("Output", (), {"loss": torch.tensor(2.0)})()


@pytest.mark.parametrize(
    ("task", "batch", "words"),
    [
        (Classification(), {"image": 1}, "task=classification needs each sample to be an (input"),
        (NextToken(), (torch.zeros(3),), "task=lm needs each sample to be a 1-D tensor"),
        (ModelLoss(), (torch.zeros(2, 4),), "the model returned a loss of shape (2, 4)"),
    ],
)
def test_a_batch_or_output_the_task_cannot_use_is_one_line(task, batch, words):
    model = nn.Identity()
    with pytest.raises(ConfigError) as e:
        task(model=model, batch=batch)
    assert words in str(e.value) and "\n" not in str(e.value)


def _lm() -> dict:
    chars = {"_target_": "distrib.datasets.chars", "context": 16, "size": 512}
    return {
        "task": {"_target_": "distrib.tasks.NextToken"},
        "model": {"_target_": "distrib.models.TinyGPT", "context": 16, "dim": 32, "layers": 1},
        "data": {"train": {**chars, "split": "train"}, "eval": {**chars, "split": "test"}},
        # SGD: Adam divides by the root of tiny second moments, so the float rounding of a
        # 2-rank gradient sum grows into visible weight differences within steps
        "optim": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.3, "momentum": 0.9},
    }


def _regression() -> dict:
    reg = {"_target_": "distrib.datasets.regression", "size": 1024}
    return {
        "task": {"_target_": "distrib.tasks.Regression"},
        "model": {"_target_": "distrib.models.MLP", "in_features": 16, "num_classes": 1},
        "data": {"train": {**reg, "split": "train"}, "eval": {**reg, "split": "test"}},
        "optim": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05, "momentum": 0.9},
    }


def _model_loss() -> dict:
    dicts = {"_target_": "fixtures.DictSamples", "size": 640}
    return {
        "task": {"_target_": "distrib.tasks.ModelLoss"},
        "model": {"_target_": "fixtures.SelfLossClassifier"},
        "data": {"train": {**dicts, "split": "train"}, "eval": {**dicts, "split": "test"}},
        "optim": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05},
    }


TASKS = {"lm": _lm, "regression": _regression, "model_loss": _model_loss}
METRIC = {"lm": "eval_perplexity", "regression": "eval_rmse", "model_loss": "eval_loss"}


def _values(name: str, **trainer: object) -> dict:
    best = "eval_loss"
    return {
        **TASKS[name](),
        "trainer": {
            "epochs": 2,
            "global_batch_size": 32,
            "log_every": 1,
            "seed": 1,
            "checkpoint": {"best_metric": best, "best_mode": "min"},
            **trainer,
        },
    }


def _fit(values: dict, run_dir: str | None = None) -> dict:
    return fit(to_config(values), Path(run_dir) if run_dir else None, return_weights=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TASKS))
def test_two_workers_reproduce_one_worker_for_every_task(name: str):
    values = _values(name)
    (one,) = spawn(_fit, values, world_size=1)
    two = spawn(_fit, values, world_size=2)
    losses1 = [h["loss"] for h in one["history"] if "loss" in h]
    losses2 = [h["loss"] for h in two[0]["history"] if "loss" in h]
    assert len(losses1) == len(losses2) >= 20
    for a, b in zip(losses1, losses2, strict=True):  # the foundation's tolerance
        assert abs(a - b) <= 1e-5 * abs(a)
    for k, w in one["state_dict"].items():
        assert torch.allclose(two[0]["state_dict"][k], w, atol=1e-4, rtol=0), k
    assert one[METRIC[name]] == pytest.approx(two[0][METRIC[name]], rel=1e-4)
    assert losses1[-1] < losses1[0]  # and it learns


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lm", "regression"])  # model_loss: the same loop
def test_resume_is_exact_for_every_task(name: str, tmp_path: Path):
    (straight,) = spawn(_fit, _values(name, deterministic=True), world_size=1)
    run_dir = str(tmp_path / "run")
    spawn(_fit, _values(name, deterministic=True, max_steps=19), run_dir, world_size=1)
    (resumed,) = spawn(_fit, _values(name, deterministic=True), run_dir, world_size=1)
    log = (tmp_path / "run" / "logs" / "rank0.log").read_text()
    assert re.search(r"resumed from \S+step-00000019\.pt: epoch \d, step 19,", log), log
    for k, w in straight["state_dict"].items():
        assert torch.equal(resumed["state_dict"][k], w), k


def test_a_best_metric_the_task_does_not_report_is_one_line_naming_the_key():
    values = _values("regression", max_steps=2)
    values["trainer"]["checkpoint"] = {"best_metric": "eval_acc"}
    with pytest.raises(ConfigError) as e:
        _fit(values)
    assert str(e.value) == (
        "trainer.checkpoint.best_metric=eval_acc: distrib.tasks.Regression reports eval_loss, "
        "eval_rmse (or null: keep no best checkpoint)"
    )


@pytest.mark.slow
def test_the_built_in_language_model_learns_the_generated_text(tmp_path: Path):
    res = run_cli(
        sys.executable, "-m", "distrib.train", "task=lm", "model=tiny_gpt", "data=chars",
        "launcher.nproc=2", "trainer.epochs=2", "trainer.log_every=50", cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    final = res.stdout.split("final evaluation: eval_loss ")[1]
    assert float(final.split()[0]) < 1.5  # nats per character; uniform over 29 would be 3.37
