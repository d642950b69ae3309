"""End to end: ``python -m distrib.train`` and torchrun, as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, SMALL_RUN, run_cli, start, train_cli, wait_gone

from distrib.loggers.jsonl import read_jsonl

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
    acc = float(res.stdout.split("final evaluation: ")[1].split("eval_acc ")[1].split()[0])
    assert acc >= 0.95
    (run_dir,) = [p.parent for p in tmp_path.glob("outputs/*/*/logs")]
    assert sorted(p.name for p in (run_dir / "logs").iterdir()) == ["rank0.log", "rank1.log"]
    assert "final evaluation: eval_loss" in (run_dir / "logs" / "rank0.log").read_text()
    # where it went, first and last; epochs counted alike in the log, the rows, the checkpoint
    shown = str(run_dir.relative_to(tmp_path))
    lines = res.stdout.strip().splitlines()
    assert lines[0] == f"distrib: run directory {shown}"
    assert lines[-1] == f"distrib: done: {shown} (checkpoints/, metrics.jsonl, logs/)"
    assert "epoch 6/6 done  step 132" in res.stdout
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if "eval_acc" in r] == [1, 2, 3, 4, 5, 6]
    manifest = json.loads((run_dir / "checkpoints" / "manifest.json").read_text())
    assert manifest["checkpoints"]["step-00000132.pt"]["epoch"] == 6


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
    assert wait_gone(pids, timeout=10), "a worker outlived its failed job"


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
    assert "final evaluation: eval_loss" in res.stdout
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
    from distrib.cli.train import preflight

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


# --- beyond one machine: restarts that resume, hangs that end, GPUs checked up front ---

RESTART_RUN = [
    *SMALL_RUN[:6],  # the one-epoch run's model and data, for 3 epochs
    "trainer.deterministic=true",
    "trainer.epochs=3",
    "trainer.checkpoint.every_steps=5",
]


@pytest.fixture(scope="module")
def uninterrupted_state(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import torch

    run_dir = tmp_path_factory.mktemp("straight") / "run"
    res = train_cli(run_dir, *RESTART_RUN)
    assert res.returncode == 0, res.stderr[-3000:]
    return torch.load(run_dir / "checkpoints" / "step-00000048.pt", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("kill_step", [4, 39])  # before any save; last epoch, step 36 logged
def test_sigkill_of_a_worker_restarts_the_group_and_resumes_bit_exact(
    tmp_path: Path, kill_step: int, uninterrupted_state: dict
):
    import torch

    run_dir, seen = tmp_path / "run", tmp_path / "seen"
    seen.mkdir()
    res = train_cli(
        run_dir,
        *RESTART_RUN,
        "launcher.max_restarts=1",
        f"+data.train.record_dir={seen}",
        "+data.train.kill_rank=1",
        "+data.train.kill_attempt=0",
        f"+data.train.kill_at={16 * (kill_step - 1) + 1}",  # 16 samples per rank and step
        "logger=[jsonl,wandb]",
        env={"WANDB_MODE": "offline"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert (seen / "train-rank1-attempt1").exists()  # it saw TORCHELASTIC_RESTART_COUNT=1
    # the restart is said, in one line on the launcher's stderr
    said = "distrib: rank 1 was killed by SIGKILL; restart 1 of 1: the workers start again"
    assert said in res.stderr.splitlines(), res.stderr[-2000:]
    # the abandoned attempt's rows past the resumed checkpoint are set aside: steps only grow
    steps = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 48
    # and so are wandb's, over both attempts' offline runs (one run id, resumed)
    from wandb_reader import read_history

    logged = [
        h["_step"]
        for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
        for h in read_history(path)
        if "loss" in h
    ]
    assert logged == sorted(set(logged)) and logged[-1] == 48, logged
    saves = [*range(5, 48, 5), 16, 32]  # every_steps=5, and each epoch's end
    saved = max((s for s in saves if s < kill_step), default=0)
    if saved:
        assert f"step-{saved:08d}.pt: epoch" in res.stdout  # resumed from the newest checkpoint
    final = torch.load(run_dir / "checkpoints" / "step-00000048.pt", weights_only=True)
    for k, v in uninterrupted_state["model"].items():
        assert torch.equal(final["model"][k], v), k


@pytest.mark.slow
@pytest.mark.waits
def test_a_hung_rank_ends_the_job_naming_it_within_the_timeout(tmp_path: Path):
    start = time.monotonic()
    res = train_cli(
        tmp_path / "run",
        *RESTART_RUN[2:],
        "~model",
        "+model._target_=fixtures.SleepyMLP",
        f"+model.pid_dir={tmp_path}",
        "trainer.timeout_s=10",
    )
    took = time.monotonic() - start
    assert res.returncode == 1, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("distrib: error: worker rank 0 failed"), last
    assert "a collective timed out on rank 0 after 10 s: rank(s) 1 never arrived" in last
    record = (tmp_path / "run" / "flight_recorder" / "rank_0").resolve()
    assert last.endswith(f"; flight record: {record}"), last  # the run directory's
    assert took < 90, took  # 10 s timeout + start-up on a loaded machine, not the 120 s sleep
    pids = [int(p.read_text()) for p in tmp_path.glob("rank*.pid")]
    assert len(pids) == 2
    assert wait_gone(pids, timeout=10), "a worker outlived its job"


def test_more_workers_than_gpus_is_one_line_before_starting(monkeypatch: pytest.MonkeyPatch):
    import torch

    import distrib
    from distrib.cli.train import preflight

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(distrib.ConfigError) as info:
        preflight(["launcher.nproc=2", "trainer.device=cuda"])
    assert str(info.value) == (
        "launcher.nproc=2: one GPU per worker, but 1 GPU(s) visible; use launcher.nproc<=1, "
        "trainer.device=cpu, or make more GPUs visible with CUDA_VISIBLE_DEVICES"
    )
    preflight(["launcher.nproc=1", "trainer.device=cuda"])  # one each: fine
    preflight(["launcher.nproc=2", "trainer.device=cpu"])  # CPU workers need no GPU


def test_nccl_without_cuda_is_one_line_before_starting(monkeypatch: pytest.MonkeyPatch):
    import torch

    import distrib
    from distrib.cli.train import preflight

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(distrib.ConfigError, match=r"^trainer.backend='nccl': expected gloo"):
        preflight(["launcher.nproc=2", "trainer.backend=nccl"])


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (["launcher.nnodes=0"], "distrib: error: launcher.nnodes=0: expected an integer >= 1"),
        (
            ["launcher.nnodes=2", "launcher.rdzv_endpoint=10.1.2.3"],
            "distrib: error: launcher.rdzv_endpoint='10.1.2.3': expected host:port",
        ),
        (["launcher.nnodes=2"], "distrib: error: launcher.rdzv_endpoint='': expected host:port"),
    ],
)
def test_bad_multi_node_settings_are_one_line(tmp_path: Path, overrides: list[str], line: str):
    res = run_cli(PY, "-m", "distrib.train", *overrides, cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().startswith(line) and "\n" not in res.stderr.strip(), res.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_torchrun_run_interrupted_and_restarted_with_the_readme_command_resumes(tmp_path: Path):
    torchrun = str(Path(PY).parent / "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "distrib.train", *RESTART_RUN]
    env = {"DISTRIB_RUN_ID": "myrun"}
    crashed = run_cli(*cmd, "+data.train.kill_at=321", cwd=tmp_path, env=env)  # step 21, rank 0
    assert crashed.returncode != 0
    run_dir = tmp_path / "outputs" / "myrun"
    assert (run_dir / "checkpoints" / "step-00000020.pt").exists()
    again = run_cli(*cmd, cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {run_dir}/checkpoints/step-00000020.pt: epoch" in again.stdout
    assert (run_dir / "checkpoints" / "step-00000048.pt").exists()


@pytest.mark.slow
@pytest.mark.waits
def test_sigterm_while_a_rank_hangs_does_not_claim_a_checkpoint(tmp_path: Path):

    cmd = [
        PY,
        "-m",
        "distrib.train",
        "launcher.nproc=2",
        f"hydra.run.dir={tmp_path / 'run'}",
        *RESTART_RUN[2:],
        "~model",
        "+model._target_=fixtures.SleepyMLP",
        f"+model.pid_dir={tmp_path}",
        "launcher.signal_grace_s=5",
        "trainer.timeout_s=60",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "WANDB_MODE": "disabled"}
    proc = start(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("rank*.pid"))) < 2:  # written when the model is built
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    while not (tmp_path / "rank1.sleeping").exists():  # rank 1 sleeps inside its 3rd step
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(1)  # and rank 0 has gone on into the step's all_reduce
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]  # not 75: nothing was saved
    # (after it, Python's resource tracker may warn about the killed workers' semaphores)
    assert "distrib: interrupted by SIGTERM; the workers got the same signal" in err.splitlines()
    assert "Traceback" not in err
    assert not list((tmp_path / "run" / "checkpoints").glob("step-*.pt"))


def test_one_worker_failing_ends_with_distribs_line_not_hydras_paragraph(tmp_path: Path):
    # Seen before: with one worker the run printed hydra's "Error executing job" paragraph.
    # Also seen: FileNotFoundError(2, 'No such file or directory') without the path.
    res = train_cli(
        tmp_path / "run",
        "data.train._target_=fixtures.missing_file_dataset",
        "+data.train.path=/nonexistent/train.bin",
        nproc=1,
    )
    assert res.returncode == 1
    assert "Error executing job" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("distrib: error: BuildFailed: data.train: "), last
    assert "fixtures.missing_file_dataset(split='train', path='/nonexistent/train.bin')" in last
    assert last.endswith("raised FileNotFoundError: [Errno 2] No such file or directory"), last


@pytest.mark.parametrize(
    "target, nproc, expected",
    [
        # seen before: 'str' object has no attribute 'to'
        ("fixtures.DictSamples", 1, "distrib: error: data.train: task=classification needs each "
         "sample to be an (input, target) pair; got a dict with keys ['image', 'label']"),
        # seen before: SIGABRT (gloo::EnforceNotMet) and no hint
        ("fixtures.per_rank_dataset", 2, "data.train: the ranks built training sets of "
         "different lengths (rank 0: 512, rank 1: 563)"),
    ],
)  # fmt: skip
def test_data_the_trainer_cannot_use_is_one_line(tmp_path: Path, target, nproc, expected):
    res = train_cli(
        tmp_path / "run", "model=mlp", "model.in_features=16", f"data.train._target_={target}",
        "data.eval._target_=fixtures.Recorded", "trainer.global_batch_size=32", nproc=nproc,
    )  # fmt: skip
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert expected in last, res.stderr[-2000:]


@pytest.mark.slow
def test_a_failure_after_a_checkpoint_prints_the_command_that_resumes_it(tmp_path: Path):
    run_dir = tmp_path / "run"
    overrides = [
        *SMALL_RUN,
        "trainer.checkpoint.every_steps=4",
        "+data.train.kill_rank=1",
        "+data.train.kill_at=145",
    ]  # fmt: skip  (rank 1's 145th sample: step 10)
    res = train_cli(run_dir, *overrides)
    assert res.returncode == 1
    *_, resume, error = res.stderr.strip().splitlines()
    assert error == "distrib: error: worker rank 1 was killed by SIGKILL"
    import shlex

    # train_cli puts launcher.nproc=2 first and hydra.run.dir second: the run's own overrides
    own = shlex.join(["launcher.nproc=2", *overrides])
    assert resume == f"distrib: to resume: python -m distrib.train {own} hydra.run.dir={run_dir}"


@pytest.mark.slow
def test_a_failure_before_any_checkpoint_promises_no_resume(tmp_path: Path):
    res = train_cli(
        tmp_path / "run", *SMALL_RUN, "+data.train.kill_rank=1", "+data.train.kill_at=20"
    )
    assert res.returncode == 1 and "to resume" not in res.stderr + res.stdout


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (
            ["trainer.checkpoint.best_metric=eval_foo"],  # before: a whole epoch, then this
            "distrib: error: trainer.checkpoint.best_metric=eval_foo: distrib.tasks.Classification "
            "reports eval_loss, eval_acc, eval_correct, eval_total (or null: keep no best "
            "checkpoint)",
        ),
        (
            ["data.eval.size=0"],  # before: KeyError: 'loss' after the first epoch
            "distrib: error: data.eval: distrib.datasets.synthetic has 0 samples: evaluation "
            "would have nothing to report (give it an evaluation split)",
        ),
    ],
)
def test_what_would_fail_at_the_first_evaluation_stops_before_training(
    tmp_path: Path, overrides: list[str], line: str
):
    res = train_cli(tmp_path / "run", "model=mlp", "data=synthetic", *overrides, nproc=1)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1] == line
    assert "step " not in res.stdout  # not one training step
    assert not list((tmp_path / "run" / "checkpoints").glob("step-*"))
