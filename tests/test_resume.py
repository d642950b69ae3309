"""Exact resume end to end: SIGKILL, world-size changes, preemption (the checkpoint issue)."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, run_cli, start, train_cli

PY = sys.executable
STEPS_PER_EPOCH = 16  # 512 training samples of fixtures.Recorded / global batch 32
RUN = [
    "model=mlp",
    "model.in_features=16",
    "+model.dropout=0.2",  # random numbers drawn after every resume: RNG state must be restored
    "data.train._target_=fixtures.Recorded",
    "data.eval._target_=fixtures.Recorded",
    "trainer.global_batch_size=32",
    "trainer.log_every=4",
    "trainer.deterministic=true",
    "trainer.checkpoint.keep_last=10",
]


def train(
    run_dir: Path, *extra: str, nproc: int = 2, check: bool = True
) -> subprocess.CompletedProcess:
    res = train_cli(run_dir, *RUN, *extra, nproc=nproc)
    if check:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


def final(run_dir: Path, step: int) -> dict:
    return torch.load(run_dir / "checkpoints" / f"step-{step:08d}.pt", weights_only=True)


def assert_same_state(a: dict, b: dict) -> None:
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), (i, k)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    train(run_dir, "trainer.epochs=3")
    return final(run_dir, 3 * STEPS_PER_EPOCH)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("policy", "kill_step", "resumed_from"),
    [
        (["trainer.checkpoint.every_epoch=true"], 22, 16),  # resume at an epoch boundary
        (["trainer.checkpoint.every_steps=7"], 25, 21),  # resume mid-epoch (epoch 2, step 5)
    ],
)
def test_sigkill_then_resume_is_bit_exact(
    tmp_path: Path, uninterrupted: dict, policy: list[str], kill_step: int, resumed_from: int
):
    run_dir = tmp_path / "run"
    per_rank = 16  # samples each of 2 ranks loads per step
    killed = train(
        run_dir,
        "trainer.epochs=3",
        *policy,
        f"+data.train.kill_at={per_rank * (kill_step - 1) + 1}",
        check=False,
    )
    assert killed.returncode != 0 and "worker rank 0 was killed by SIGKILL" in killed.stderr
    resumed = train(run_dir, "trainer.epochs=3", *policy)
    assert f"step-{resumed_from:08d}.pt: epoch" in resumed.stdout  # what it resumed from
    assert_same_state(final(run_dir, 3 * STEPS_PER_EPOCH), uninterrupted)


def _orders(epochs: int) -> list[list[int]]:
    # The documented order, computed without ShardedSampler (a sampler bug must fail this):
    # a permutation seeded by seed + epoch; 512 samples are exactly 16 global batches.
    return [
        torch.randperm(512, generator=torch.Generator().manual_seed(e)).tolist()
        for e in range(epochs)
    ]


def _records(d: Path) -> dict[int, list[int]]:
    return {int(p.stem[4:]): [int(x) for x in p.read_text().split()] for p in d.glob("rank*.txt")}


@pytest.mark.slow
@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2)])
def test_resume_on_another_world_size_sees_every_sample_once_per_epoch(
    tmp_path: Path, before: int, after: int
):
    run_dir, first, second = tmp_path / "run", tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    train(
        run_dir,
        "trainer.epochs=2",
        "trainer.max_steps=5",
        f"+data.train.record_dir={first}",
        nproc=before,
    )
    res = train(run_dir, "trainer.epochs=2", f"+data.train.record_dir={second}", nproc=after)
    assert f"written by {before} worker(s)" in res.stdout
    o0, o1 = _orders(2)
    seen_first = sorted(i for r in _records(first).values() for i in r)
    assert seen_first == sorted(o0[:160])  # 5 steps x 32
    rest = o0[160:] + o1
    recs = _records(second)
    assert sorted(recs) == list(range(after))
    for rank, seen in recs.items():  # the exact next samples, in order, dealt round-robin
        assert seen == o0[160:][rank::after] + o1[rank::after]
    assert sorted(i for r in recs.values() for i in r) == sorted(rest)


@pytest.mark.slow
@pytest.mark.waits  # its data sleeps 10 ms a sample
def test_sigterm_checkpoints_exits_for_requeue_and_resumes(tmp_path: Path):
    run_dir = tmp_path / "run"
    cmd = [
        PY,
        "-m",
        "distrib.train",
        *RUN,
        "launcher.nproc=2",
        f"hydra.run.dir={run_dir}",
        "trainer.epochs=3",
        "trainer.log_every=1",
        "+data.train.delay=0.01",
    ]
    env = {
        "PYTHONPATH": str(ROOT / "tests"),
        "WANDB_MODE": "disabled",
        "PATH": f"{Path(PY).parent}:/usr/bin:/bin",
    }
    proc = start(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-3000:]
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    step = int(latest[5:13])
    assert 3 <= step < 3 * STEPS_PER_EPOCH
    # the printed command, run as written from another directory, resumes and finishes
    prefix = "distrib: to resume: "
    [said] = [ln for ln in err.splitlines() if ln.startswith(prefix)]
    assert said.endswith(f"hydra.run.dir={run_dir}"), said
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = run_cli(*shlex.split(said.removeprefix(prefix)), cwd=elsewhere)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resumed from {run_dir}/checkpoints/{latest}: epoch" in res.stdout
    assert f"step {step}," in res.stdout
    assert not (elsewhere / "outputs").exists()


@pytest.mark.slow
def test_a_corrupt_manifest_is_rebuilt_from_the_checkpoints_and_kept_aside(tmp_path: Path):
    run_dir = tmp_path / "run"
    train(run_dir, "trainer.epochs=1", "trainer.checkpoint.every_steps=4", nproc=1)
    manifest = run_dir / "checkpoints" / "manifest.json"
    manifest.write_text('{"version": 1, "checkpoints": {')  # cut off mid-write by a hand
    res = train(run_dir, "trainer.epochs=2", nproc=1)
    said = res.stdout + res.stderr
    assert "unreadable manifest" in said and "rebuilt from the 4 checkpoint(s) that load" in said
    assert (run_dir / "checkpoints" / "manifest.json.bad").read_text().startswith('{"version"')
    assert f"resumed from {run_dir}/checkpoints/step-00000016.pt" in res.stdout


@pytest.mark.slow
def test_when_no_checkpoint_verifies_the_run_stops_and_overwrites_nothing(tmp_path: Path):
    run_dir = tmp_path / "run"
    train(run_dir, "trainer.epochs=1", "trainer.checkpoint.every_steps=8", nproc=1)
    ckpts = run_dir / "checkpoints"
    bad = sorted(ckpts.glob("step-*.pt"))
    for p in bad:
        p.write_bytes(p.read_bytes()[:100])  # every one truncated
    before = {p.name: p.read_bytes() for p in bad}
    res = train(run_dir, "trainer.epochs=1", nproc=1, check=False)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == (
        f"distrib: error: trainer.resume=auto: no checkpoint of {ckpts} verifies (2 there, "
        "newest step-00000016.pt: see the lines above); they stay as they are -- "
        "trainer.resume=never starts over beside them, trainer.resume=<path> picks one"
    )
    assert {p.name: p.read_bytes() for p in ckpts.glob("step-*.pt")} == before
    fresh = train(run_dir, "trainer.epochs=1", "trainer.resume=never", nproc=1)
    assert "resumed from" not in fresh.stdout
    # the fresh run saved step 16 only: the unreadable file of that name was moved, not
    # overwritten, and the other one is left as it was
    kept = {p.name.split(".unread-")[0]: p.read_bytes() for p in ckpts.glob("step-*.pt.unread-*")}
    assert kept == {"step-00000016.pt": before["step-00000016.pt"]}
    assert (ckpts / "step-00000008.pt").read_bytes() == before["step-00000008.pt"]


@pytest.mark.slow
def test_a_resume_that_changes_the_data_or_the_seed_says_so(tmp_path: Path):
    run_dir = tmp_path / "run"
    train(run_dir, "trainer.epochs=1", nproc=1)
    res = train(run_dir, "trainer.epochs=2", "+data.train.size=600", "trainer.seed=5", nproc=1)
    out = res.stdout + res.stderr
    assert "data.train.size changed on resume: None -> 600 (the remaining epochs see" in out
    assert "trainer.seed changed on resume: 0 -> 5 (the remaining epochs see" in out
