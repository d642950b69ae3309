"""End to end: ``python -m distrib.train`` and torchrun, as a user runs them."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, run_cli

PY = sys.executable
FAST = ["trainer.epochs=1", "trainer.log_every=100"]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.lr=abc", "optim.lr"),
        ("trainer.epochs=-1", "trainer.epochs"),
        ("trainer.no_such_key=1", "trainer.no_such_key"),
    ],
)
def test_bad_config_exits_nonzero_with_one_line_before_starting_anything(
    tmp_path: Path, override: str, key: str
):
    res = run_cli(PY, "-m", "distrib.train", override, "launcher.nproc=2", cwd=tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"distrib: error: {key}"), res.stderr
    assert not (tmp_path / "outputs").exists()  # no run directory, no workers
    assert res.stdout == ""


@pytest.mark.slow
def test_two_local_workers_train_to_high_accuracy(tmp_path: Path):
    res = run_cli(PY, "-m", "distrib.train", "launcher.nproc=2", "trainer.epochs=6", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "training on 2 worker(s) (cpu, gloo)" in res.stdout
    acc = float(res.stdout.split("final test accuracy: ")[1].split()[0])
    assert acc >= 0.95
    (run_dir,) = [p.parent for p in tmp_path.glob("outputs/*/*/logs")]
    assert sorted(p.name for p in (run_dir / "logs").iterdir()) == ["rank0.log", "rank1.log"]
    assert "final test accuracy" in (run_dir / "logs" / "rank0.log").read_text()


@pytest.mark.slow
def test_a_failing_worker_fails_the_run_naming_its_rank_and_leaves_none_running(tmp_path: Path):
    res = run_cli(
        PY,
        "-m",
        "distrib.train",
        "launcher.nproc=2",
        "~model",
        "+model._target_=fixtures.model_recording_pid",
        f"+model.pid_dir={tmp_path}",
        cwd=tmp_path,
        timeout=120,
    )
    assert res.returncode == 1
    assert "distrib: error: worker rank 1 failed (exit code 1)" in res.stderr
    assert "RuntimeError: boom on rank 1" in res.stderr  # the worker's traceback
    pids = [int(p.read_text()) for p in tmp_path.glob("rank*.pid")]
    assert len(pids) == 2
    time.sleep(0.5)
    for pid in pids:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )


@pytest.mark.slow
def test_torchrun_runs_the_same_entry_in_place(tmp_path: Path):
    res = run_cli(
        str(Path(PY).parent / "torchrun"),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "distrib.train",
        *FAST,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert "training on 2 worker(s)" in res.stdout
    assert "final test accuracy" in res.stdout
    assert len(list(tmp_path.glob("outputs/torchrun-*/logs/rank1.log"))) == 1  # one shared run dir


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["distrib", "torchrun"])
def test_own_script_example(launcher: str, tmp_path: Path):
    script = str(ROOT / "examples" / "own_script.py")
    if launcher == "distrib":
        cmd = [PY, "-m", "distrib.launch", "--nproc", "2", script, "--epochs", "2"]
    else:
        cmd = [
            str(Path(PY).parent / "torchrun"),
            "--standalone",
            "--nproc_per_node=2",
            script,
            "--epochs",
            "2",
        ]
    res = run_cli(*cmd, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("2 workers)") == 2  # two epochs, printed once (rank 0)
    assert "test accuracy" in res.stdout
    assert os.listdir(tmp_path) == []  # the example writes nothing


def test_a_bad_resume_file_is_one_line_before_starting(tmp_path: Path):
    import torch

    import distrib
    from distrib.checkpoint import Checkpointer
    from distrib.train import preflight

    ckpt = Checkpointer(tmp_path / "checkpoints")
    ckpt.save({"model": {"w": torch.ones(1000)}}, step=1, epoch=0)
    good = tmp_path / "checkpoints" / "step-00000001.pt"
    preflight([f"trainer.resume={good}"])  # verifies and opens
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF
    good.write_bytes(bytes(data))
    with pytest.raises(
        distrib.ConfigError, match=r"^trainer.resume: .*step-00000001.pt: sha256 mismatch"
    ):
        preflight([f"trainer.resume={good}"])
    loose = tmp_path / "loose.pt"
    loose.write_bytes(b"not a checkpoint")
    with pytest.raises(distrib.ConfigError, match=r"^trainer.resume: .*loose.pt: ") as info:
        preflight([f"trainer.resume={loose}"])
    assert "\n" not in str(info.value)


def test_users_add_their_own_config_groups_with_config_dir(tmp_path: Path):
    (tmp_path / "mine" / "model").mkdir(parents=True)
    (tmp_path / "mine" / "model" / "tiny.yaml").write_text(
        "_target_: distrib.models.MLP\nin_features: 64\nhidden: 8\n"
    )
    bad = run_cli(
        PY,
        "-m",
        "distrib.train",
        "--config-dir",
        "mine",
        "model=tiny",
        "model.hidden=abc",
        cwd=tmp_path,
    )
    assert bad.returncode == 2
    assert (
        bad.stderr.strip()
        == "distrib: error: model.hidden='abc': expected int (distrib.models.MLP)"
    )
    ok = run_cli(
        PY,
        "-m",
        "distrib.train",
        "--config-dir",
        "mine",
        "model=tiny",
        "trainer.max_steps=2",
        "trainer.log_every=1",
        cwd=tmp_path,
    )
    assert ok.returncode == 0, ok.stderr
    assert "step 2/2" in ok.stdout
