"""Failures end the job, naming the rank that failed first; restarts resume; signals end cleanly.

Run through ``python -m distrib.launch`` with scripts that never import distrib, as a user's
torchrun script would be.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, run_cli, start, wait_gone

PY = sys.executable
SCRIPTS = ROOT / "tests" / "scripts"


def launch(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return run_cli(PY, "-m", "distrib.launch", *args, cwd=cwd, timeout=timeout)


def assert_gone(pids: list[int]) -> None:
    assert wait_gone(pids, timeout=10), f"workers {pids} left behind"


def pids_in(d: Path) -> list[int]:
    return [int(p.read_text()) for p in d.glob("rank*.pid")]


def start_idle_job(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """Two workers of a script that waits to be signalled, once both have started."""
    out = tmp_path / "run"
    out.mkdir()
    proc = start(
        [PY, "-m", "distrib.launch", "--nproc", "2", str(SCRIPTS / "fail.py"), "--out", str(out),
         "--how", "none"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while len(pids_in(out)) < 2:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    return proc, out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("raise", "worker rank 1 failed (exit code 1): ValueError: bad shard on rank 1"),
        ("exit", "worker rank 1 exited with code 7 without a Python traceback"),
        ("kill", "worker rank 1 was killed by SIGKILL"),
    ],
)
def test_the_failed_rank_is_named_not_the_peer_that_lost_it(
    tmp_path: Path, how: str, expected: str
):
    start = time.monotonic()
    res = launch(
        "--nproc", "2", str(SCRIPTS / "fail.py"), "--out", str(tmp_path), "--how", how, cwd=tmp_path
    )
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"distrib: error: {expected}"), res.stderr[-2000:]
    if how == "raise":  # the worker's own traceback, once, before the error line
        assert res.stderr.count('raise ValueError(f"bad shard on rank {rank}")') == 1
    # in seconds, not after the peer waits out its collective timeout (30 min by default)
    assert time.monotonic() - start < 60
    assert len(pids_in(tmp_path)) == 2
    assert_gone(pids_in(tmp_path))


@pytest.mark.slow
def test_a_module_runs_as_with_python_dash_m(tmp_path: Path):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "probe.py").write_text(
        "import os, sys\nopen(os.path.join(sys.argv[1], os.environ['RANK']), 'w').write(__name__)\n"
    )
    res = launch("--nproc", "2", "-m", "mypkg.probe", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "0").read_text() == (tmp_path / "1").read_text() == "__main__"


_LOOPBACK = {"GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"}


def _worker_envs(out: Path) -> dict[int, dict[str, str]]:
    return {int(p.stem[4:]): json.loads(p.read_text()) for p in out.glob("env-*.json")}


# Values that differ between any two launches, whoever runs them (or, for MASTER_ADDR and the
# signal list, differ by design: ours is 127.0.0.1 rather than "localhost" and forwards SIGUSR1).
_PER_RUN = {
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_ERROR_FILE",
    "MASTER_ADDR",
    "TORCHELASTIC_SIGNALS_TO_HANDLE",
    "_",
}


@pytest.mark.slow
def test_workers_see_the_environment_torchrun_gives_them_key_by_key(tmp_path: Path):
    ours, theirs = tmp_path / "ours", tmp_path / "torchrun"
    ours.mkdir(), theirs.mkdir()
    probe = str(SCRIPTS / "probe_env.py")
    assert launch("--nproc", "2", probe, str(ours), cwd=tmp_path).returncode == 0
    torchrun = str(Path(PY).parent / "torchrun")
    res = run_cli(torchrun, "--standalone", "--nproc_per_node=2", probe, str(theirs), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    a, b = _worker_envs(ours), _worker_envs(theirs)
    assert sorted(a) == sorted(b) == [0, 1]
    for rank in (0, 1):
        # by design ours binds loopback on one node (torchrun lets gloo take the hostname's)
        assert a[rank]["GLOO_SOCKET_IFNAME"] == a[rank]["NCCL_SOCKET_IFNAME"] == "lo"
        assert set(a[rank]) - {"_"} - _LOOPBACK == set(b[rank]) - {"_"}, rank
        for key in set(a[rank]) - _PER_RUN - _LOOPBACK:
            assert a[rank][key] == b[rank][key], (rank, key)
        for key in (
            "RANK",
            "LOCAL_RANK",
            "WORLD_SIZE",
            "LOCAL_WORLD_SIZE",
            "GROUP_RANK",
            "ROLE_RANK",
            "ROLE_WORLD_SIZE",
            "MASTER_ADDR",
            "MASTER_PORT",
            "TORCHELASTIC_RUN_ID",
            "TORCHELASTIC_RESTART_COUNT",
            "TORCHELASTIC_MAX_RESTARTS",
            "OMP_NUM_THREADS",
        ):
            assert key in a[rank], key
    cores = len(os.sched_getaffinity(0))
    assert a[0]["OMP_NUM_THREADS"] == str(max(1, cores // 2))


@pytest.mark.slow
@pytest.mark.parametrize("kill_step", [7, 36])  # 36: a short restarted attempt
def test_sigkill_of_a_worker_restarts_and_resumes_exactly(
    tmp_path: Path, kill_step: int, straight_ddp_script: dict
):
    out = tmp_path / "run"
    out.mkdir()
    res = launch(
        "--nproc",
        "2",
        "--max-restarts",
        "1",
        str(SCRIPTS / "ddp_script.py"),
        "--out",
        str(out),
        "--kill-rank",
        "1",
        "--kill-step",
        str(kill_step),
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    resumed_at = kill_step // 5 * 5
    assert f"rank 1: resumed at step {resumed_at}" in res.stdout
    seen = json.loads((out / "seen-rank1-attempt1.json").read_text())
    assert seen["TORCHELASTIC_RESTART_COUNT"] == "1"
    final = torch.load(out / "final.pt", weights_only=True)
    for k, v in straight_ddp_script.items():
        assert torch.equal(final[k], v), k


@pytest.fixture(scope="module")
def straight_ddp_script(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("straight")
    res = launch("--nproc", "2", str(SCRIPTS / "ddp_script.py"), "--out", str(out), cwd=out)
    assert res.returncode == 0, res.stderr
    return torch.load(out / "final.pt", weights_only=True)


@pytest.mark.slow
def test_without_restarts_a_killed_worker_ends_the_job_in_seconds_naming_it(tmp_path: Path):
    proc, out = start_idle_job(tmp_path)
    time.sleep(1)
    victim = {int(p.stem[4:]): int(p.read_text()) for p in out.glob("rank*.pid")}[1]
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - killed < 30  # the agent notices at once, not at a timeout
    assert proc.returncode == 1
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("distrib: error: worker rank 1 was killed by SIGKILL")
    )
    assert_gone(pids_in(out))


@pytest.mark.slow
def test_restarts_exhausted_say_so(tmp_path: Path):
    res = launch(
        "--nproc",
        "2",
        "--max-restarts",
        "1",
        str(SCRIPTS / "fail.py"),
        "--out",
        str(tmp_path),
        "--how",
        "exit",
        cwd=tmp_path,
    )
    assert res.returncode == 1
    assert (
        res.stderr.strip()
        .splitlines()[-1]
        .startswith("distrib: error: worker rank 1 exited with code 7")
    )
    assert "after 1 of 1 restart(s); no restarts left" in res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signalled_launcher_ends_with_one_line_and_the_signal_code(tmp_path: Path, signum: int):
    proc, out = start_idle_job(tmp_path)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    # The script saved nothing: not 75 ("checkpoint written"), but 128 + the signal.
    assert proc.returncode == 128 + signum, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"distrib: interrupted by {signal.Signals(signum).name}; the workers got the same signal"
    )
    assert_gone(pids_in(out))


def _failure(rank: int, exitcode: int, trace: str = "", when: float | None = None) -> object:
    from types import SimpleNamespace

    data: dict = {"message": "<NONE>"}
    if trace:
        extra = {"py_callstack": trace, "timestamp": str(int(when or 0))}
        if when is not None:
            extra["time"] = repr(when)
        data = {"message": {"message": trace.splitlines()[-1], "extraInfo": extra}}
    return SimpleNamespace(local_rank=rank, exitcode=exitcode, error_file_data=data, message="")


BROKEN = "RuntimeError: [gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer"


@pytest.mark.parametrize(
    ("failures", "cause"),
    [
        # the peer that lost its connection in the same second is not the cause
        ([_failure(0, 1, BROKEN, 100.0), _failure(1, 1, "ValueError: bad", 100.0)], 1),
        # ... not even when gloo's teardown then aborted it
        ([_failure(0, -6, BROKEN, 99.0), _failure(1, 7)], 1),
        # a worker killed by a signal, with no error of its own, is a cause
        ([_failure(0, 1, BROKEN, 100.0), _failure(1, -9)], 1),
        # two real errors: the earlier one (sub-second times from the script runner)
        ([_failure(0, 1, "KeyError: a", 100.7), _failure(1, 1, "ValueError: b", 100.2)], 1),
        # nothing to tell them apart: the lowest rank
        ([_failure(1, 7), _failure(0, 7)], 0),
    ],
)
def test_the_root_cause_is_the_failure_that_is_not_a_peer_losing_its_connection(
    failures: list, cause: int
):
    from distrib.launch.agent import root_cause

    assert root_cause(failures).local_rank == cause


@pytest.mark.slow
def test_a_requeue_exit_ends_the_job_with_75_instead_of_a_restart(tmp_path: Path):
    res = launch(
        "--nproc",
        "2",
        "--max-restarts",
        "2",
        str(SCRIPTS / "fail.py"),
        "--out",
        str(tmp_path),
        "--how",
        "requeue",
        cwd=tmp_path,
    )
    assert res.returncode == 75, res.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.glob("attempt*")) == ["attempt0-rank0", "attempt0-rank1"]


@pytest.mark.slow
def test_workers_die_with_a_launcher_killed_by_sigkill(tmp_path: Path):
    proc, out = start_idle_job(tmp_path)
    proc.kill()  # nothing can be handled: the workers must go by themselves
    proc.wait()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in pids_in(out)):
        assert time.monotonic() < deadline, "workers outlived their launcher"
        time.sleep(0.1)


def test_an_error_then_a_signal_death_reports_the_error():
    from distrib.launch.agent import WorkerFailed

    trace = "Traceback (most recent call last):\n  ...\nValueError: bad shard on rank 1\n"
    assert str(WorkerFailed(rank=1, exitcode=-6, traceback=trace)) == (
        "worker rank 1 failed (SIGABRT after an error): ValueError: bad shard on rank 1"
    )
    assert (
        str(WorkerFailed(rank=1, exitcode=-9, traceback=""))
        == "worker rank 1 was killed by SIGKILL"
    )


@pytest.mark.slow
def test_a_requeue_exit_beside_a_failure_is_a_failure(tmp_path: Path):
    # rank 0 exits 75 ("checkpoint written, requeue me") in the same poll as rank 1 exits 1:
    # 75 means a checkpoint only when every worker stopped so; here the job failed
    res = launch("--nproc", "2", "--max-restarts", "1", str(SCRIPTS / "fail.py"), "--out",
                 str(tmp_path), "--how", "mixed", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 1, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("distrib: error: worker rank 1 exited with code 1"), res.stderr[-2000:]
    # and it is not retried as a crash either: a worker saved on purpose
    assert sorted(p.name for p in tmp_path.glob("attempt*")) == ["attempt0-rank0", "attempt0-rank1"]


def test_a_run_id_an_ended_job_used_on_a_lasting_store_is_refused_in_one_line(tmp_path: Path):
    """A rendezvous store that outlives its job (a standing TCPStore) keeps the ended job's
    rendezvous closed: the next job with that id got torch's bare ``RendezvousClosedError``."""
    from datetime import timedelta

    import torch.distributed as dist
    from helpers import free_port

    port = free_port()
    store = dist.TCPStore(  # noqa: F841 (the endpoint: serves while the test holds it)
        "127.0.0.1", port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=60)
    )
    argv = ["--nnodes", "1", "--nproc", "1", "--rdzv-id", "exp1", "--rdzv-endpoint",
            f"127.0.0.1:{port}", "--rdzv-timeout", "20", str(SCRIPTS / "probe_env.py")]  # fmt: skip
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = launch(*argv, str(tmp_path / "a"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    again = launch(*argv, str(tmp_path / "b"), cwd=tmp_path)
    assert again.returncode == 1
    [line] = again.stderr.strip().splitlines()
    assert line == (
        f"distrib: error: rendezvous at 127.0.0.1:{port} (distrib-c10d, run id exp1) failed: "
        "closed: a job with this run id has ended on this endpoint (its rendezvous is closed "
        "for good); give this job a new id (--rdzv-id, launcher.rdzv_id)"
    ), again.stderr[-3000:]
    assert not list((tmp_path / "b").glob("env-*.json"))  # no worker of the second job ran


@pytest.mark.waits
def test_an_endpoint_that_accepts_and_never_answers_fails_in_one_line_not_a_hang(
    tmp_path: Path,
):
    """Something else listening on the rendezvous port (it accepts, says nothing): torch's
    store client waited for its answer forever."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    held = []
    threading.Thread(
        target=lambda: held.extend(server.accept() for _ in range(8)), daemon=True
    ).start()

    begin = time.monotonic()
    res = launch("--nnodes", "2", "--nproc", "1", "--rdzv-id", "f", "--rdzv-endpoint",
                 f"127.0.0.1:{port}", "--rdzv-timeout", "5", str(SCRIPTS / "probe_env.py"),
                 str(tmp_path), cwd=tmp_path, timeout=150)  # fmt: skip
    took = time.monotonic() - begin
    server.close()
    assert res.returncode == 1
    [line] = res.stderr.strip().splitlines()
    assert line == (
        f"distrib: error: rendezvous at 127.0.0.1:{port} (distrib-c10d, run id f) failed: "
        "TimeoutError: the endpoint accepted the connection but did not answer as a c10d "
        "store within 10 s: is another service listening on that port?"
    ), res.stderr[-3000:]
    assert took < 10 + 60, took  # the bound plus a loaded start-up
    assert not list(tmp_path.glob("env-*.json"))


def test_a_late_connect_timeout_where_nothing_accepts_is_waited_for_not_called_a_foreign_service():
    # torch's own connect timeout, late on a loaded machine, still says why; only an endpoint
    # that accepts is blamed as another service
    from helpers import free_port

    from distrib.launch.agent import _answered_within

    closed = f"127.0.0.1:{free_port()}"
    late = _answered_within(0.3, closed, lambda: time.sleep(0.5) or "handler")
    assert late == "handler"
    with pytest.raises(TimeoutError, match=rf"^nothing accepted a connection at {closed} within "):
        _answered_within(0.3, closed, time.sleep, 5)
