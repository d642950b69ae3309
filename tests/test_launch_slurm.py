"""``launcher=slurm`` on a real SLURM cluster (two slurmd nodes on this host, see slurm_cluster).

Every job is compared with what a local run of the same config gives: SLURM changes where the
workers run, never what they compute. Preemption and time limits must end in the same weights
as an uninterrupted run, over several allocations of one job.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import slurm_cluster
import torch
from helpers import ROOT, run_cli, start, train_cli
from helpers import SMALL_RUN as TRAIN

from distrib.launch.slurm import SlurmOptions, sbatch_script
from distrib.loggers.jsonl import read_jsonl

PY = sys.executable
GOLDEN = ROOT / "tests" / "golden"

# ~0.3 s per step (a sleep per sample): long enough to preempt or outlive a time limit
SLOW = [*TRAIN, "+data.train.delay=0.02", "trainer.epochs=4"]


def test_the_sbatch_script_of_two_nodes_with_four_gpus_is_the_golden_one():
    options = SlurmOptions(
        nodes=2,
        tasks_per_node=4,
        gpus_per_node=4,
        cpus_per_task=8,
        mem_gb=64,
        partition="gpu",
        time_min=240,
        account="proj",
        qos="high",
        sbatch={"constraint": "a100"},
    )
    script = sbatch_script(options, Path("/shared/runs/exp/slurm"), python="python3")
    golden = GOLDEN / "sbatch_2nodes_4gpus.sh"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(script)
    assert script == golden.read_text()


def test_a_time_limit_of_zero_is_one_line_before_anything_is_submitted(tmp_path: Path):
    res = run_cli(PY, "-m", "distrib.train", "launcher=slurm", "launcher.time_min=0", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip() == "distrib: error: launcher.time_min=0: expected minutes >= 1"


def test_sbatch_missing_from_path_is_one_line(tmp_path: Path):
    res = run_cli(
        PY, "-m", "distrib.train", "launcher=slurm", *TRAIN, cwd=tmp_path,
        env={"PATH": str(Path(PY).parent)},
    )  # fmt: skip
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == (
        "distrib: error: launcher=slurm: `sbatch` is not on PATH (run this on a SLURM login node)"
    )


_skip = slurm_cluster.skip_reason()
cluster = pytest.mark.skipif(_skip is not None, reason=_skip or "")


@pytest.fixture(scope="module")
def slurm_env() -> dict[str, str]:
    return slurm_cluster.start()


@pytest.fixture(autouse=True)
def _no_job_left(request: pytest.FixtureRequest):
    """Every job a test submitted is gone when it ends, passed or failed. Only after a test
    that used the cluster: the tests of this file that did not run in make test's other group,
    and a scancel from there cancelled a job this group was following (CI, job 52)."""
    yield
    if "slurm_env" in request.fixturenames:
        slurm_cluster.cancel_all()


def submit(
    tmp: Path, env: dict[str, str], *overrides: str, time_min: int = 5, timeout: float = 400
) -> subprocess.CompletedProcess:
    """``launcher=slurm launcher.wait=true`` into ``tmp/run``; the finished process."""
    return run_cli(
        PY, "-m", "distrib.train", *overrides, "launcher=slurm", "launcher.wait=true",
        f"launcher.time_min={time_min}", f"hydra.run.dir={tmp / 'run'}",
        cwd=tmp, env=env, timeout=timeout,
    )  # fmt: skip


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    last = sorted((run_dir / "checkpoints").glob("step-*.pt"))[-1]
    return torch.load(last, weights_only=True)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def job_id(stdout: str) -> str:
    return re.search(r"submitted SLURM job (\d+)", stdout).group(1)  # type: ignore[union-attr]


@cluster
@pytest.mark.slurm
@pytest.mark.parametrize("shape", ["1x2", "2x1"])
def test_a_slurm_job_trains_as_the_same_local_run(tmp_path: Path, slurm_env, shape: str):
    nodes, per_node = shape.split("x")
    local = tmp_path / "local"
    ref = train_cli(local, *TRAIN, nproc=2)
    assert ref.returncode == 0, ref.stderr[-2000:]
    res = submit(
        tmp_path, slurm_env, *TRAIN, f"launcher.nnodes={nodes}", f"launcher.nproc={per_node}"
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "distrib: SLURM job" in res.stdout and "completed" in res.stdout
    assert_same_weights(local, tmp_path / "run")
    # one run directory for the job, not one per rank; rank 0 wrote the metrics
    assert (tmp_path / "run" / "metrics.jsonl").is_file()
    gone = slurm_cluster.wait_until(lambda: not slurm_cluster.squeue("-j", job_id(res.stdout)), 60)
    assert gone, "the job is still queued after its result came back"


@cluster
@pytest.mark.slurm
@pytest.mark.parametrize(
    "override, reason",
    [
        ("launcher.partition=nope", "invalid partition specified: nope"),
        ("launcher.nproc=64", "More processors requested than permitted"),
    ],
)
def test_a_job_sbatch_refuses_is_one_line_with_its_reason(
    tmp_path: Path, slurm_env, override: str, reason: str
):
    before = slurm_cluster.squeue()
    res = submit(tmp_path, slurm_env, *TRAIN, override, "trainer.global_batch_size=64")
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("distrib: error: sbatch refused the job: ") and reason in last, last
    assert slurm_cluster.squeue() == before  # nothing left queued


@cluster
@pytest.mark.slurm
def test_a_script_that_never_imports_distrib_runs_as_slurm_tasks(tmp_path: Path, slurm_env):
    script = str(ROOT / "tests" / "scripts" / "ddp_script.py")
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir(), remote.mkdir()
    ref = run_cli(PY, "-m", "distrib.launch", "--nproc", "2", script, "--out", str(local),
                  "--steps", "15", cwd=tmp_path)  # fmt: skip
    assert ref.returncode == 0, ref.stderr[-2000:]
    res = run_cli(
        PY, "-m", "distrib.launch", "--slurm", "--nproc", "2", "--time-min", "5", "--wait",
        "--output-dir", str(tmp_path / "run"), script, "--out", str(remote), "--steps", "15",
        cwd=tmp_path, env=slurm_env, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    a = torch.load(local / "final.pt", weights_only=True)
    b = torch.load(remote / "final.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    import json

    seen = json.loads((remote / "seen-rank1-attempt0.json").read_text())
    assert seen["RANK"] == "1" and seen["TORCHELASTIC_RUN_ID"] == f"slurm-{job_id(res.stdout)}"
    assert seen["TORCHELASTIC_RESTART_COUNT"] == "0"


def _train_steps(run_dir: Path) -> list[int]:
    return [int(r["step"]) for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]


@cluster
@pytest.mark.slurm
def test_a_preempted_job_checkpoints_requeues_and_ends_bit_identical(tmp_path: Path, slurm_env):
    local = tmp_path / "local"
    ref = train_cli(local, *SLOW, nproc=2)
    assert ref.returncode == 0, ref.stderr[-2000:]
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "WANDB_MODE": "offline", **slurm_env}
    env["PATH"] = f"{Path(PY).parent}:{env['PATH']}"
    low = start(
        [PY, "-m", "distrib.train", *SLOW, "launcher=slurm", "launcher.wait=true",
         "launcher.nproc=2", "launcher.partition=low", "launcher.time_min=5",
         "+launcher.sbatch.nodelist=n2", "logger=[jsonl,wandb]", f"hydra.run.dir={run}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert slurm_cluster.wait_until(
            lambda: (run / "metrics.jsonl").exists() and max(_train_steps(run), default=0) >= 8,
            timeout=120,
        ), "the low-priority job never got going"
        high = subprocess.run(
            ["sbatch", "-p", "high", "-N", "1", "-w", "n2", "-n", "8", "-o", "/dev/null",
             "--wrap", "sleep 3"],
            capture_output=True, text=True, env=env, timeout=30,
        )  # fmt: skip
        assert high.returncode == 0, high.stderr
        out, err = low.communicate(timeout=400)
    finally:
        low.kill()
    assert low.returncode == 0, out[-2000:] + err[-3000:]
    log = (run / "logs" / "rank0.log").read_text()
    assert "preempted: checkpoint at step" in log and "resumed" in log, log[-3000:]
    assert_same_weights(local, run)
    steps = _train_steps(run)  # one JSONL, continued: no step logged twice, none missing
    assert steps == sorted(set(steps)) and steps[-1] == _train_steps(local)[-1]
    runs = {p.name.rsplit("-", 1)[-1] for p in (run / "wandb").glob("offline-run-*")}
    assert runs == {(run / "wandb_run_id").read_text().strip()}  # one wandb run, resumed
    assert len(list((run / "wandb").glob("offline-run-*"))) >= 2


@cluster
@pytest.mark.slurm
@pytest.mark.timeout(1200)  # waits up to 900 s for the job itself
def test_a_job_longer_than_its_time_limit_requeues_itself_until_done(tmp_path: Path, slurm_env):
    # sbatch: "the signal may be sent up to 60 seconds earlier than specified". A task still
    # importing torch when it comes dies of it (submitit, like us, installs its handlers after
    # unpickling the job), so the signal must come after start-up: 3 minutes per allocation,
    # USR2 60 s before the end, i.e. 60-120 s in; ~150 s of training needs at least one requeue.
    # (1 minute and 45 s once signalled 15 s in, under make test's load, and the tasks died.)
    res = submit(
        tmp_path, slurm_env, *TRAIN, "+data.train.delay=0.03", "trainer.epochs=18",
        "launcher.nproc=2", "launcher.signal_delay_s=60", time_min=3, timeout=900,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    err = (tmp_path / "run" / "slurm").rglob("*_0_log.err")
    text = "".join(p.read_text() for p in err)
    assert text.count("accepted") >= 1, text[-3000:]
    steps = _train_steps(tmp_path / "run")
    assert steps == sorted(set(steps)) and steps[-1] == 288


SWEEP = [
    "-m", "optim.lr=0.1,0.05,0.02", "model=mlp", "data=synthetic", "data.size=480",
    "trainer.epochs=1", "trainer.max_steps=6",
]  # fmt: skip


def _spans(*jobs: str) -> dict[str, tuple[str, str]]:
    """sacct's (start, end) of each job id (an array's tasks appear as ``<array>_<index>``)."""
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "JobID,Start,End", "-j", ",".join(jobs)],
        capture_output=True, text=True, timeout=30,
    ).stdout.split()  # fmt: skip
    return {job: (start, end) for job, start, end in (line.split("|") for line in out)}


def _finals(sweep: Path) -> list[tuple[str, dict]]:
    from distrib.cli.sweep import summarize

    return [
        (r["overrides"].split()[0], {k: v for k, v in r.items() if k.startswith("eval_")})
        for r in summarize(sweep)
    ]


@cluster
@pytest.mark.slurm
def test_a_sweep_through_hydras_submitit_launcher_runs_each_point_as_a_ddp_job(
    tmp_path: Path, slurm_env
):
    basic = run_cli(PY, "-m", "distrib.train", *SWEEP, "launcher.nproc=2",
                    f"hydra.sweep.dir={tmp_path / 'basic'}", cwd=tmp_path, timeout=300)  # fmt: skip
    assert basic.returncode == 0, basic.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "WANDB_MODE": "disabled", **slurm_env}
    env["PATH"] = f"{Path(PY).parent}:{env['PATH']}"
    before = {ln.split()[0] for ln in slurm_cluster.squeue("-o", "%F")}
    sweep = start(
        [PY, "-m", "distrib.train", *SWEEP, "hydra/launcher=submitit_slurm",
         "hydra.launcher.tasks_per_node=2", "hydra.launcher.timeout_min=5",
         "+hydra.launcher.additional_parameters.nodelist=n1", "hydra.launcher.array_parallelism=1",
         f"hydra.sweep.dir={tmp_path / 'slurm'}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        arrays: set[str] = set()
        assert slurm_cluster.wait_until(
            lambda: bool(arrays.update({ln.split()[0] for ln in slurm_cluster.squeue("-o", "%F")})
                         or arrays - before),
            timeout=60, every=0.2,
        ), "the sweep's job array never showed up"  # fmt: skip
        array = min(arrays - before, key=int)
        # A job submitted while the array runs, on the same node: under the old port rule
        # (20000 + id % 10000, array tasks adding their index) a task and a job whose ids
        # line up met on one port. No id arithmetic here (SLURM numbers array tasks as they
        # start, and any job submitted meanwhile takes an id): the property is that every
        # array task and the job end right while at least one task ran beside the job.
        (tmp_path / "next").mkdir()
        nxt = submit(tmp_path / "next", slurm_env, *SLOW, "trainer.epochs=6",
                     "launcher.nproc=2", "+launcher.sbatch.nodelist=n1")  # fmt: skip
        out, err = sweep.communicate(timeout=300)
    finally:
        sweep.kill()
    assert nxt.returncode == 0, nxt.stdout[-2000:] + nxt.stderr[-3000:]
    spans = _spans(array, job_id(nxt.stdout))
    (s2, e2), tasks = spans.pop(job_id(nxt.stdout)), sorted(spans)
    assert tasks == [f"{array}_{i}" for i in range(3)], spans
    beside = [t for t in tasks if spans[t][0] < e2 and s2 < spans[t][1]]
    assert beside, f"no task of array {array} ran beside job {job_id(nxt.stdout)}: {spans}"
    assert sweep.returncode == 0, out[-2000:] + err[-3000:]
    jobs = sorted(p.name for p in (tmp_path / "slurm").iterdir() if p.is_dir() and p.name.isdigit())
    assert jobs == ["0", "1", "2"]  # one directory per point, none per rank
    summary = (tmp_path / "slurm" / "summary.md").read_text()
    assert summary in out
    for task in tasks:  # which SLURM job (array task) trained each point
        assert f"| {task} |" in summary, summary
    assert _finals(tmp_path / "slurm") == _finals(tmp_path / "basic")
    assert len({str(m) for _, m in _finals(tmp_path / "slurm")}) == 3


def _sacct(job: str, field: str) -> str:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", field, "-j", job],
                         capture_output=True, text=True, timeout=30).stdout  # fmt: skip
    return out.strip().splitlines()[0] if out.strip() else ""


@cluster
@pytest.mark.slurm
def test_scancel_cancels_a_running_job_with_its_checkpoint_and_no_requeue(
    tmp_path: Path, slurm_env
):
    # SLURM sends SIGTERM on scancel as on preemption: only preemption may requeue
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "WANDB_MODE": "disabled", **slurm_env}
    env["PATH"] = f"{Path(PY).parent}:{env['PATH']}"
    job = start(
        [PY, "-m", "distrib.train", *SLOW, "launcher=slurm", "launcher.nproc=2",
         "launcher.time_min=5", "+launcher.sbatch.nodelist=n1", f"hydra.run.dir={run}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out, _ = job.communicate(timeout=120)  # without launcher.wait: submitted, not "done"
    assert job.returncode == 0
    jid = job_id(out)
    assert f"follow: squeue -j {jid}; cancel: scancel {jid}" in out
    assert "distrib: done" not in out
    assert slurm_cluster.wait_until(
        lambda: (run / "metrics.jsonl").exists() and max(_train_steps(run), default=0) >= 8,
        timeout=120,
    ), "the job never got going"
    subprocess.run(["scancel", jid], check=True, env=env, timeout=30)
    assert slurm_cluster.wait_until(lambda: not slurm_cluster.squeue("-j", jid), timeout=120)
    assert _sacct(jid, "State").startswith("CANCELLED")
    assert _sacct(jid, "Restarts") in ("", "0")  # never requeued (also: not pending again)
    err = "".join(p.read_text() for p in (run / "slurm").rglob("*_0_log.err"))
    said = [ln for ln in err.splitlines() if "was cancelled (scancel)" in ln]
    assert said and "to resume: python -m distrib.train" in said[0], err[-3000:]
    assert f"hydra.run.dir={run}" in said[0]
    assert list((run / "checkpoints").glob("step-*.pt"))  # the cancelled job saved


@cluster
@pytest.mark.slurm
def test_starting_the_local_cluster_with_other_options_refuses_and_keeps_it(slurm_env):
    done = subprocess.run(["bash", str(slurm_cluster.SCRIPT), "start", "--nodes", "1"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1
    assert "cluster.sh: a cluster with other options runs from " in done.stderr, done.stderr
    assert "started with: --nodes 2 --preempt --cpus 8" in done.stderr
    assert sorted(slurm_cluster.squeue()) == []  # nothing queued, and it still answers:
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True,
                           timeout=30).stdout.split()  # fmt: skip
    assert sorted(set(nodes)) == ["n1", "n2"]
