"""trainer.profile: a window of steps writes a Chrome trace under <run dir>/profile/ that holds
the model's modules; off, no profiler is created; a negative window is one line naming its key.
One worker, 6 steps of the small MLP a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import spawn
from test_loop import small_run

import distrib
from distrib.cli.train import preflight
from distrib.config import to_config
from distrib.config.schema import ProfileConfig
from distrib.trainer.loop import fit
from distrib.trainer.profile import records


def _fit_into(values: dict, run_dir: str, forbid_profiler: bool = False) -> dict:
    if forbid_profiler:  # off must not even build one

        def refused(*args: object, **kwargs: object) -> None:
            raise AssertionError("a torch.profiler.profile was created with profiling off")

        torch.profiler.profile = refused  # type: ignore[assignment,misc]
    return fit(to_config(values), Path(run_dir))


def _run(**profile: object) -> dict:
    values = small_run(epochs=1, max_steps=6, log_every=3, profile=profile)
    values["trainer"]["checkpoint"] = {"every_epoch": False, "best_metric": None}
    return values


def test_a_profile_window_writes_a_chrome_trace_holding_the_models_modules(tmp_path: Path):
    (result,) = spawn(_fit_into, _run(wait=1, warmup=1, active=2), str(tmp_path), world_size=1)
    assert result["step"] == 6
    (trace,) = (tmp_path / "profile").glob("rank0.*.pt.trace.json")
    events = json.loads(trace.read_text())["traceEvents"]
    names = {e.get("name", "") for e in events}
    assert "nn.Module: Linear_0" in names, sorted(n for n in names if "Module" in n)
    # torch counts from 0: ProfilerStep#2 and #3 are optimizer steps 3 and 4, the recorded two
    assert {"ProfilerStep#2", "ProfilerStep#3"} <= names
    assert not {"ProfilerStep#1", "ProfilerStep#4"} & names  # warm-up / after the window
    logs = (tmp_path / "logs" / "rank0.log").read_text()
    assert f"recording optimizer steps 3-4 of this job into {tmp_path / 'profile'}" in logs


def test_with_profiling_off_no_profiler_is_created(tmp_path: Path):
    (result,) = spawn(_fit_into, _run(), str(tmp_path), True, world_size=1)
    assert result["step"] == 6 and not (tmp_path / "profile").exists()


@pytest.mark.parametrize("key", ["wait", "warmup", "active"])
def test_a_negative_window_is_one_line_naming_the_key(key: str):
    with pytest.raises(distrib.ConfigError) as info:
        preflight([f"trainer.profile.{key}=-1"])
    text = str(info.value)
    assert "\n" not in text
    assert f"trainer.profile.{key}=-1: expected an integer >= 0" in text


def test_the_listed_ranks_record_and_an_empty_list_means_every_rank():
    assert records(ProfileConfig(active=2), 0) and not records(ProfileConfig(active=2), 1)
    assert records(ProfileConfig(active=2, ranks=[]), 7)
    assert not records(ProfileConfig(ranks=[]), 0)  # active=0: off everywhere
