"""``python -m distrib env``: the facts, and workers that talk, measured."""

from __future__ import annotations

import contextlib
import io
import json
import sys

import pytest
import torch
from helpers import run_cli, spawn

from distrib.cli import env as doctor
from distrib.cli.env import SIZES, gpu_shortfall, launch_environment

PY = sys.executable


def test_the_launch_environment_is_named_with_what_it_says():
    assert launch_environment({}) == {"kind": "none"}
    torchrun = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "h0", "MASTER_PORT": "2950", "TORCHELASTIC_RUN_ID": "x"}  # fmt: skip
    got = launch_environment(torchrun)
    assert got["kind"] == "torchrun" and got["rank"] == 1 and got["world_size"] == 4
    step = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_PROCID": "3", "SLURM_NTASKS": "4",
            "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_JOB_NUM_NODES": "2",
            "SLURM_JOB_NODELIST": "node[01-02]", "SLURM_TASKS_PER_NODE": "2(x2)"}  # fmt: skip
    got = launch_environment(step)
    assert got["kind"] == "slurm step" and got["job_id"] == "7" and got["nodes"] == "2"
    assert got["rank"] == 3 and got["world_size"] == 4 and got["master_addr"] == "node01"
    batch = {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "2"}  # the batch script, no step yet
    assert launch_environment(batch)["kind"] == "slurm job"


def test_env_prints_one_screen_with_versions_and_backends():
    import torch

    res = run_cli(PY, "-m", "distrib", "env")
    assert res.returncode == 0, res.stderr
    assert f"torch       {torch.__version__}" in res.stdout
    assert "gloo True" in res.stdout and "launched by none" in res.stdout
    assert len(res.stdout.splitlines()) <= 25


@pytest.mark.slow
def test_env_check_times_all_reduce_on_two_workers_as_json():
    res = run_cli(PY, "-m", "distrib", "env", "--check", "2", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads(res.stdout)
    assert info["backends"]["gloo"] is True and info["cuda_available"] is False
    check = info["check"]
    assert check["backend"] == "gloo" and check["world_size"] == 2
    assert [r["bytes"] for r in check["sizes"]] == list(SIZES)
    assert all(r["latency_us"] > 0 and r["busbw_gbps"] > 0 for r in check["sizes"])


def test_a_bad_command_or_worker_count_is_one_line_exit_2():
    res = run_cli(PY, "-m", "distrib", "env", "--check", "0")
    assert res.returncode == 2 and res.stderr.strip().startswith("distrib: error: --check 0")
    res = run_cli(PY, "-m", "distrib", "nope")
    assert res.returncode == 2 and res.stderr.strip() == (
        "distrib: error: argument COMMAND: invalid choice: 'nope' "
        "(choose from 'env', 'export', 'convert', 'plot', 'sweep')"
    )


def test_more_workers_than_gpus_is_refused_before_any_starts(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert gpu_shortfall(2) is None
    assert gpu_shortfall(3) == (
        "--check 3: nccl needs one GPU per worker, but 2 GPU(s) are visible "
        "(CUDA_VISIBLE_DEVICES=0,1); use --check 2 or fewer"
    )


def _env_check_in_place() -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = doctor.main(["--check", "7", "--json"])
    return code, out.getvalue()


@pytest.mark.slow
def test_inside_a_job_check_measures_the_jobs_own_world_and_rank_0_prints():
    (code0, out0), (code1, out1) = spawn(_env_check_in_place)  # torchrun's env, 2 workers
    assert code0 == code1 == 0 and out1 == ""
    info = json.loads(out0)
    assert info["launch"]["kind"] == "torchrun" and info["check"]["world_size"] == 2
