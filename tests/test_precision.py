"""fp16 with a gradient scaler: overflowed steps skipped and counted, exact resume.

torch 2.13 autocasts to fp16 on the CPU, so these run the real fp16 path on gloo workers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import spawn
from test_loop import small_run
from test_resume import assert_same_state, final, train

from distrib.config import to_config
from distrib.errors import ConfigError
from distrib.models import MLP
from distrib.parallel import precision
from distrib.trainer.loop import fit

INF_AT = 5


class InfGradAt(MLP):
    """The MLP whose first layer's gradient is inf in the backward of optimizer step ``at``."""

    flops_per_sample = 1.0  # no FLOP-counting backward: the hook counts the training's only

    def __init__(self, at: int = INF_AT, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.calls = 0
        self.net[1].weight.register_hook(self._poison)
        self.at = at

    def _poison(self, grad: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.full_like(grad, float("inf")) if self.calls == self.at else grad


def _fit_into(values: dict, run_dir: str) -> dict:
    return fit(to_config(values), Path(run_dir))


def test_an_overflowed_fp16_step_is_skipped_counted_and_the_run_goes_on(tmp_path: Path):
    values = small_run(epochs=1, max_steps=8, precision="fp16")
    values["model"]["_target_"] = f"{__name__}.InfGradAt"
    values["trainer"]["checkpoint"] = {"every_steps": 1, "keep_last": 20, "best_metric": None}
    ranks = spawn(_fit_into, values, str(tmp_path), world_size=2)
    assert ranks[0]["step"] == 8  # not stopped as a NaN run (trainer.nonfinite=stop)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    skipped = {r["step"]: r["skipped_steps"] for r in rows if "loss" in r}
    assert skipped == {s: float(s == INF_AT) for s in range(1, 9)}, skipped
    ckpt = {s: final(tmp_path, s) for s in (INF_AT - 1, INF_AT, INF_AT + 1)}
    before, at, after = (ckpt[s]["model"] for s in sorted(ckpt))
    assert all(torch.equal(before[k], at[k]) for k in before)  # the skipped step changed nothing
    assert not all(torch.equal(at[k], after[k]) for k in at)  # the next one trains
    scale = [ckpt[s]["scaler"]["scale"] for s in sorted(ckpt)]
    assert scale[1] == scale[0] / 2 == scale[2]  # halved on the overflow


@pytest.mark.slow
def test_sigkill_then_resume_under_fp16_is_bit_exact(tmp_path: Path):
    fp16 = ["trainer.precision=fp16", "trainer.epochs=2"]
    train(tmp_path / "straight", *fp16)
    run_dir = tmp_path / "killed"
    killed = train(
        run_dir,
        *fp16,
        "trainer.checkpoint.every_steps=7",
        f"+data.train.kill_at={16 * 24 + 1}",  # in step 25 (16 samples a rank a step)
        check=False,
    )
    assert killed.returncode != 0 and "worker rank 0 was killed by SIGKILL" in killed.stderr
    resumed = train(run_dir, *fp16, "trainer.checkpoint.every_steps=7")
    assert "step-00000021.pt: epoch" in resumed.stdout, resumed.stdout  # mid-epoch 2
    a, b = final(run_dir, 32), final(tmp_path / "straight", 32)
    assert_same_state(a, b)
    assert a["scaler"] == b["scaler"] and a["scaler"]["_growth_tracker"] == 32, a["scaler"]


def test_fp16_where_torch_cannot_autocast_in_it_is_one_line_naming_the_key(monkeypatch):
    monkeypatch.setattr(precision, "_autocasts", lambda device_type, dtype: False)
    with pytest.raises(ConfigError, match=r"^trainer.precision=fp16: torch .* cannot autocast "
                       r"in fp16 on cpu \(use bf16 or fp32 there, or a GPU\)$"):  # fmt: skip
        precision.check_supported(torch.device("cpu"), "fp16")
    precision.check_supported(torch.device("cpu"), "fp32")  # needs no autocast


def test_this_torch_autocasts_fp16_on_the_cpu():
    # what the tests above rely on: the real fp16 path, not a stand-in
    assert precision._autocasts("cpu", torch.float16)


def _fit(values: dict) -> dict:
    return fit(to_config(values), None)


def test_fp16_under_fsdp_trains_with_the_sharded_scaler():
    values = small_run(epochs=1, max_steps=12, precision="fp16", strategy="fsdp", log_every=4)
    ranks = spawn(_fit, values, world_size=2)
    rows = [r for r in ranks[0]["history"] if "loss" in r]
    assert [r["skipped_steps"] for r in rows] == [0.0, 0.0, 0.0]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert ranks[0]["history"] == ranks[1]["history"]
