"""The run directory end to end: JSONL and wandb agree, resume continues both, no secrets, and
piped output is plain (the metrics issue)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from helpers import ROOT, run_cli, train_cli
from wandb_reader import read_history, read_run

SENTINEL = "sk-distrib-sentinel-0123456789abcdef"
RUN = [
    "model=mlp",
    "data=synthetic",
    "data.size=1024",
    "model.in_features=64",
    "trainer.global_batch_size=64",
    "trainer.log_every=3",
    "trainer.epochs=2",
    "logger=[console,jsonl,wandb]",
]


def train(run_dir: Path, *extra: str, nproc: int = 2) -> tuple[str, str]:
    env = {"WANDB_MODE": "offline", "WANDB_API_KEY": SENTINEL, "WANDB_SILENT": "true"}
    res = train_cli(run_dir, *RUN, *extra, nproc=nproc, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout, res.stderr


def jsonl(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def wandb_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 2-worker job stopped at step 5, then resumed to the end, with a sentinel API key."""
    run_dir = tmp_path_factory.mktemp("job") / "run"
    first = train(run_dir, "trainer.max_steps=5")
    after_first = {
        "rows": jsonl(run_dir),
        "wandb": wandb_files(run_dir),
        "id": (run_dir / "wandb_run_id").read_text().strip(),
    }
    second = train(run_dir)
    return {"dir": run_dir, "first": first, "second": second, "after_first": after_first}


@pytest.mark.slow
def test_one_wandb_run_whose_history_equals_the_jsonl(two_runs: dict):
    run_dir, first = two_runs["dir"], two_runs["after_first"]
    assert len(first["wandb"]) == 1  # one run for the 2-worker job, created on rank 0 only
    history = {row["_step"]: row for row in read_history(first["wandb"][0])}
    rows = first["rows"]
    assert [r["step"] for r in rows if "loss" in r] == [3, 5]
    for row in rows:
        logged = history[row["step"]]  # wandb's own _step is our step
        for key, value in row.items() - {("step", row["step"])}:
            assert logged[key] == pytest.approx(value, rel=1e-12), key
    assert read_run(first["wandb"][0]).run_id == first["id"]
    assert (run_dir / "wandb_run_id").exists()


@pytest.mark.slow
def test_resumed_job_appends_to_the_same_jsonl_and_wandb_run(two_runs: dict):
    run_dir, first = two_runs["dir"], two_runs["after_first"]
    rows = jsonl(run_dir)
    assert rows[: len(first["rows"])] == first["rows"]  # appended, nothing rewritten
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps[:2] == [3, 5] and steps[-1] == 2 * 12 and steps[2] > 5  # 12 steps per epoch
    assert (run_dir / "wandb_run_id").read_text().strip() == first["id"]
    ids = {read_run(f).run_id for f in wandb_files(run_dir)}
    assert ids == {first["id"]}
    assert "resumed from" in two_runs["second"][0]


@pytest.mark.slow
def test_the_api_key_is_in_no_file_and_no_log_line(two_runs: dict):
    for out, err in (two_runs["first"], two_runs["second"]):
        assert SENTINEL not in out and SENTINEL not in err
    files = [p for p in two_runs["dir"].rglob("*") if p.is_file()]
    assert any(p.suffix == ".pt" for p in files) and any(p.suffix == ".wandb" for p in files)
    for path in files:
        assert SENTINEL.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_piped_output_is_plain_lines(two_runs: dict):
    out = two_runs["second"][0]
    assert "\r" not in out and "\x1b" not in out
    assert any(line.startswith("step 24/24") for line in out.splitlines())


@pytest.mark.slow
def test_a_hydra_sweep_groups_its_wandb_runs(tmp_path: Path):
    sweep = tmp_path / "sweep"
    res = run_cli(
        sys.executable,
        "-m",
        "distrib.train",
        "-m",
        "optim.lr=0.001,0.003",
        *RUN[:5],
        "trainer.epochs=1",
        "logger=[jsonl,wandb]",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    runs = [read_run(f) for f in sorted(sweep.glob("*/wandb/offline-run-*/run-*.wandb"))]
    assert len(runs) == 2
    assert runs[0].run_group == runs[1].run_group == sweep.as_posix().strip("/").replace("/", "-")
    assert runs[0].run_id != runs[1].run_id
    assert all((sweep / str(i) / "metrics.jsonl").exists() for i in (0, 1))


HOLD = """
import sys, time
from pathlib import Path
from distrib.trainer import run_lock
run_lock.acquire(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(600)
"""


def test_the_run_directory_lock_names_its_holder_and_is_free_once_the_holder_dies(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from helpers import start

    from distrib.errors import ConfigError
    from distrib.trainer import run_lock

    holder = start([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    who = run_lock.holder(tmp_path)
    assert who is not None and who.startswith(f"pid {holder.pid} on ")
    with pytest.raises(ConfigError) as e:
        run_lock.acquire(tmp_path)
    assert str(e.value) == (
        f"run directory {tmp_path} is in use by another job ({who}): wait for it to end, or "
        "give this run its own hydra.run.dir"
    )
    os.kill(holder.pid, signal.SIGKILL)  # a crash: nothing stale is left behind
    holder.wait()
    assert run_lock.holder(tmp_path) is None
    run_lock.acquire(tmp_path)  # the same job, requeued or restarted, gets in
    run_lock.release(tmp_path)


@pytest.mark.slow
def test_a_second_job_in_a_running_jobs_directory_is_refused_and_the_first_goes_on(tmp_path):
    import subprocess
    import sys
    import time

    from helpers import SMALL_RUN, run_cli, start

    from distrib.loggers.jsonl import read_jsonl

    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "distrib.train", *SMALL_RUN, "+data.train.delay=0.01",
           "trainer.epochs=2", "launcher.nproc=2", f"hydra.run.dir={run_dir}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "WANDB_MODE": "disabled"}
    first = start(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                  text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (run_dir / "metrics.jsonl").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.1)
    hydra_config = (run_dir / ".hydra" / "config.yaml").read_text()
    second = run_cli(*cmd, "optim.lr=0.1", cwd=tmp_path)  # another lr: another job
    assert second.returncode == 2
    line = second.stderr.strip()
    assert line.startswith(
        f"distrib: error: run directory {run_dir} is in use by another job (pid "
    )
    assert (run_dir / ".hydra" / "config.yaml").read_text() == hydra_config  # not overwritten
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    steps = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 32  # one job's rows, none mixed in
    again = run_cli(*[c for c in cmd if c != "trainer.epochs=2"], "trainer.epochs=3", cwd=tmp_path)
    assert again.returncode == 0 and "resumed from" in again.stdout  # the same run goes on
