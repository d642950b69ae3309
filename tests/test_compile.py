"""trainer.compile: a compiled run trains like an eager one; its checkpoints are the plain
model's, so either kind resumes the other. Compiling is slow on a CPU (~30 s a run on 2
cores): few runs, tiny models, 20 steps, and the reverse resume reuses the first run's
inductor cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import spawn
from test_fsdp import CASES, _values
from test_loop import small_run

from distrib.cli.export import main as export
from distrib.config import to_config
from distrib.errors import ConfigError
from distrib.trainer.loop import fit


def _fit_into(values: dict, run_dir: str, cache: str = "") -> dict:
    if cache:  # a job that finds an earlier one's kernels (a restart's own run dir would)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    return fit(to_config(values), Path(run_dir), return_weights=True)


def _losses(result: dict, after: int = 0) -> list[float]:
    return [h["loss"] for h in result["history"] if "loss" in h and h["step"] > after]


def _close(a: list[float], b: list[float]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert abs(x - y) <= 1e-4 * abs(x), (a, b)


def _run(**trainer: object) -> dict:
    values = small_run(epochs=1, max_steps=20, **trainer)
    values["trainer"]["checkpoint"] = {"every_steps": 10, "best_metric": None}
    return values


@pytest.mark.slow
def test_a_compiled_ddp_run_trains_like_eager_and_their_checkpoints_resume_each_other(
    tmp_path: Path,
):
    on = {"compile": {"enable": True}}
    eager = spawn(_fit_into, _run(), str(tmp_path / "eager"))
    compiled = spawn(_fit_into, _run(**on), str(tmp_path / "compiled"))
    _close(_losses(eager[0]), _losses(compiled[0]))  # 20 steps, 2 workers
    assert (tmp_path / "compiled" / "inductor_cache" / "fxgraph").is_dir()  # a restart's too
    logs = (tmp_path / "compiled" / "logs" / "rank0.log").read_text()
    assert logs.count("torch.compile: the first step took") == 1, logs

    ckpt = tmp_path / "compiled" / "checkpoints" / "step-00000020.pt"
    saved = torch.load(ckpt, weights_only=True)
    assert not [k for k in saved["model"] if "_orig_mod" in k]
    assert saved["model"].keys() == eager[0]["state_dict"].keys()
    # compiled -> eager: the weights come back equal (0 steps left to train)
    (resumed,) = spawn(
        _fit_into, _run(resume=str(ckpt)), str(tmp_path / "eager-resumed"), world_size=1
    )
    for k, w in saved["model"].items():
        assert torch.equal(resumed["state_dict"][k], w), k
    assert export([str(ckpt)]) == 0 and ckpt.with_name("step-00000020.ts.pt").is_file()

    # eager -> compiled: from the eager run's step 10, the same steps 11..20
    half = str(tmp_path / "eager" / "checkpoints" / "step-00000010.pt")
    cache = str(tmp_path / "compiled" / "inductor_cache")
    again = spawn(_fit_into, _run(resume=half, **on), str(tmp_path / "reverse"), cache)
    _close(_losses(eager[0], after=10), _losses(again[0], after=10))


@pytest.mark.slow
def test_a_compiled_tiny_gpt_under_fsdp_trains_like_eager(tmp_path: Path):
    model, data, extra = CASES["tiny_gpt"]
    no_best = {"best_metric": None, "every_epoch": False}
    values = {**_values(model, data, max_steps=20, epochs=5, checkpoint=no_best), **extra}
    values["trainer"]["strategy"] = "fsdp"
    eager = spawn(_fit_into, values, str(tmp_path / "eager"))
    values["trainer"]["compile"] = {"enable": True}
    compiled = spawn(_fit_into, values, str(tmp_path / "compiled"))
    _close(_losses(eager[0]), _losses(compiled[0]))
    assert (tmp_path / "compiled" / "inductor_cache" / "fxgraph").is_dir()  # it did compile
    assert compiled[0]["state_dict"].keys() == eager[0]["state_dict"].keys()


def test_a_compile_mode_torch_does_not_have_is_one_line_naming_the_key():
    values = small_run(compile={"enable": True, "mode": "max-autotune-fast"})
    allowed = "default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs"
    line = f"^trainer.compile.mode='max-autotune-fast': expected {allowed}$"
    with pytest.raises(ConfigError, match=line):
        to_config(values)
