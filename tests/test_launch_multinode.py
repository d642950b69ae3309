"""Several nodes for real: two network namespaces joined by a veth pair, one node in each.

Every node runs the same command with ``--nnodes 2`` and node 0's address as the rendezvous
endpoint; the result must equal one node running both workers. Not two processes sharing
loopback: each node has its own network stack, as two machines would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from helpers import ROOT
from helpers import SMALL_RUN as TRAIN
from netns import Hosts, skip_reason, two_hosts

PY = sys.executable
SCRIPTS = ROOT / "tests" / "scripts"
PORT = 29400

_reason = skip_reason()
if _reason is not None:
    pytest.skip(_reason, allow_module_level=True)

pytestmark = pytest.mark.slow

ENV = {
    **os.environ,
    "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}",  # this checkout's distrib first
    "WANDB_MODE": "disabled",
    "PYTHONFAULTHANDLER": "1",
    "PATH": f"{Path(PY).parent}:{os.environ.get('PATH', '')}",
}


def on_both_nodes(
    hosts: Hosts, argv_for: list[str], cwd: Path, timeout: float = 90
) -> list[tuple[int, str, str]]:
    """Run ``argv_for`` (with ``{i}``, ``{addr}``, ``{ifname}`` filled per node) on both
    nodes at once; return each node's (exit code, stdout, stderr).

    A job not done within ``timeout`` (it takes seconds) is a hang: every Python process in
    both namespaces prints its stacks (PYTHONFAULTHANDLER + SIGABRT), and both nodes' output
    is reported. CI once saw such a hang (static rendezvous, 1 of many runs, never here), so
    the first one is reported as a warning -- the stacks in pytest's summary -- and the same
    command runs once more (resuming from what the first run saved); a second one fails.
    """
    for attempt in (1, 2):
        hung = _run_on_both(hosts, argv_for, cwd, timeout)
        if isinstance(hung, list):
            return hung
        if attempt == 2:
            pytest.fail(f"hung twice (not done within {timeout:.0f} s):\n{hung}")
        warnings.warn(f"multi-node job hung, retrying once; its stacks:\n{hung}", stacklevel=2)
    raise AssertionError("unreachable")


def _run_on_both(
    hosts: Hosts, argv_for: list[str], cwd: Path, timeout: float
) -> list[tuple[int, str, str]] | str:
    """Each node's (exit code, stdout, stderr), or the report of a hang."""
    procs = []
    for i in (0, 1):
        argv = [
            a.format(i=i, addr=hosts.addrs[i], ifname=hosts.ifnames[i], a0=hosts.addrs[0])
            for a in argv_for
        ]
        procs.append(
            hosts.popen(
                i,
                argv,
                cwd=cwd,
                env=ENV,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                stdin=subprocess.DEVNULL,
            )
        )
    out = []
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=max(deadline - time.monotonic(), 0.1))
            out.append((p.returncode, stdout, stderr))
    except subprocess.TimeoutExpired:
        hosts.dump_stacks()
        time.sleep(3)
        tails = []
        for i, p in enumerate(procs):
            hosts.kill(p)
            stdout, stderr = p.communicate()
            tails.append(f"--- node {i}: exit {p.returncode}\n{stderr[-6000:]}")
        for p in hosts.pids(0) + hosts.pids(1):  # nothing of the hung run may linger
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        return "\n".join(tails)
    return out


def test_two_nodes_of_one_worker_train_as_one_node_of_two(tmp_path: Path):
    one = tmp_path / "one"
    res = subprocess.run(
        [PY, "-m", "distrib.train", *TRAIN, "launcher.nproc=2", f"hydra.run.dir={one}"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    two = tmp_path / "two"
    with two_hosts() as hosts:
        results = on_both_nodes(
            hosts,
            [
                PY,
                "-m",
                "distrib.train",
                *TRAIN,
                "launcher.nnodes=2",
                "launcher.nproc=1",
                f"launcher.rdzv_endpoint={{a0}}:{PORT}",
                "launcher.rdzv_id=mn",
                "launcher.local_addr={addr}",
                "launcher.ifname={ifname}",
                f"hydra.run.dir={two}",
            ],
            cwd=tmp_path,
        )
    for code, _, err in results:
        assert code == 0, err[-3000:]
    assert "training on 2 worker(s)" in results[0][1]
    a = torch.load(one / "checkpoints" / "step-00000016.pt", weights_only=True)["model"]
    b = torch.load(two / "checkpoints" / "step-00000016.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


@pytest.mark.parametrize("rendezvous", ["c10d", "static"])
def test_a_script_that_never_imports_distrib_runs_on_two_nodes(tmp_path: Path, rendezvous: str):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    script = str(SCRIPTS / "ddp_script.py")
    res = subprocess.run(
        [PY, "-m", "distrib.launch", "--nproc", "2", script, "--out", str(one), "--steps", "15"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    how = ["--node-rank", "{i}"] if rendezvous == "static" else ["--rdzv-id", "s1"]
    listening = [PY, str(SCRIPTS / "listening.py"), str(tmp_path / "listening-{i}.json"), "--"]
    with two_hosts() as hosts:
        results = on_both_nodes(
            hosts,
            [
                *listening,
                PY,
                "-m",
                "distrib.launch",
                "--nnodes",
                "2",
                "--nproc",
                "1",
                *how,
                "--rdzv-endpoint",
                f"{{a0}}:{PORT}",
                "--local-addr",
                "{addr}",
                "--ifname",
                "{ifname}",
                script,
                "--out",
                str(two),
                "--steps",
                "15",
            ],
            cwd=tmp_path,
        )
    for code, _, err in results:
        assert code == 0, err[-3000:]
    a = torch.load(one / "final.pt", weights_only=True)
    b = torch.load(two / "final.pt", weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    if rendezvous == "c10d":  # our stores listen on the node's own address, not on every one
        import json

        for i in (0, 1):
            seen = json.loads((tmp_path / f"listening-{i}.json").read_text())["listening"]
            assert seen and not {"0.0.0.0", "::"} & set(seen), (i, seen)
            assert set(seen) <= {hosts.addrs[i], "127.0.0.1", "::1"}, (i, seen)


@pytest.mark.waits
def test_an_unreachable_endpoint_is_one_line_within_the_rendezvous_timeout(tmp_path: Path):
    with two_hosts() as hosts:
        start = time.monotonic()
        # node 1's address exists, but nothing listens there on this port
        res = hosts.run(
            0,
            [
                PY,
                "-m",
                "distrib.launch",
                "--nnodes",
                "2",
                "--nproc",
                "1",
                "--rdzv-id",
                "x",
                "--rdzv-endpoint",
                f"{hosts.addrs[1]}:{PORT}",
                "--local-addr",
                hosts.addrs[0],
                "--rdzv-timeout",
                "10",
                str(SCRIPTS / "probe_env.py"),
                str(tmp_path),
            ],
            timeout=120,
            cwd=tmp_path,
            env=ENV,
        )
        took = time.monotonic() - start
    assert res.returncode == 1
    # one line, naming the endpoint and why: not the c10d store's C++ frames before it
    [line] = res.stderr.strip().splitlines()
    assert line == (
        f"distrib: error: rendezvous at {hosts.addrs[1]}:{PORT} (distrib-c10d, run id x) "
        f"failed: RendezvousConnectionError: The client socket has timed out after 10000ms while "
        f"trying to connect to ({hosts.addrs[1]}, {PORT})."
    ), res.stderr[-3000:]
    assert took < 10 + 80, took  # the 10 s rendezvous timeout plus a loaded start-up, not 300 s
    assert not list(tmp_path.glob("env-*.json"))  # no worker ran


@pytest.mark.waits
def test_a_lone_node_that_waits_out_the_timeout_says_who_joined(tmp_path: Path):
    from helpers import free_port, run_cli

    port = free_port()
    res = run_cli(
        PY, "-m", "distrib.launch", "--nnodes", "2", "--nproc", "1",
        "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-timeout", "5",
        str(SCRIPTS / "probe_env.py"), str(tmp_path), cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert res.returncode == 1
    [line] = res.stderr.strip().splitlines()
    assert line.startswith(f"distrib: error: rendezvous at 127.0.0.1:{port} (distrib-c10d, ")
    assert line.endswith(
        "failed: timed out: 1 of 2 node(s) joined within 5 s (localhost); the others never "
        "reached the endpoint"
    ), line


@pytest.mark.waits
def test_a_network_partition_ends_both_nodes_in_time_naming_the_peer_lost(tmp_path: Path):
    # The veth is cut while rank 1 sleeps before step 20's all_reduce: node 0's worker times
    # out waiting for rank 1; node 1's worker times out too, and then its store (on node 0)
    # never answers; node 1's agent, asking that store who waits to join, never returned.
    from netns import _ip

    pids = tmp_path / "pids"
    pids.mkdir()
    timeout_s, grace_s = 20, 25  # the grace: the store's silence (8 s) plus a loaded exit
    with two_hosts() as hosts:
        procs = []
        for i in (0, 1):
            argv = [
                PY, "-m", "distrib.train", *[a for a in TRAIN if not a.startswith("model.")],
                "trainer.epochs=20", "~model", "+model._target_=fixtures.SleepyMLP",
                f"+model.pid_dir={pids}", "+model.rank=1", "+model.at_call=20",
                "+model.sleep_s=2", f"trainer.timeout_s={timeout_s}", "launcher.nnodes=2",
                "launcher.nproc=1", f"launcher.rdzv_endpoint={hosts.addrs[0]}:{PORT}",
                "launcher.rdzv_id=part", f"launcher.local_addr={hosts.addrs[i]}",
                f"launcher.ifname={hosts.ifnames[i]}", f"hydra.run.dir={tmp_path / 'run'}",
            ]  # fmt: skip
            procs.append(
                hosts.popen(
                    i,
                    argv,
                    cwd=tmp_path,
                    env=ENV,
                    text=True,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=(tmp_path / f"err{i}").open("w"),
                )  # fmt: skip
            )
        deadline = time.monotonic() + 120
        while not (pids / "rank1.sleeping").exists():
            assert all(p.poll() is None for p in procs), (tmp_path / "err0").read_text()[-3000:]
            assert time.monotonic() < deadline, "never reached step 20"
            time.sleep(0.1)
        _ip("-n", hosts.names[0], "link", "set", "dev", hosts.ifnames[0], "down")
        cut = time.monotonic()
        ended: dict[int, float] = {}
        while len(ended) < 2 and time.monotonic() - cut < timeout_s + grace_s:
            ended.update({i: time.monotonic() - cut for i, p in enumerate(procs)
                          if i not in ended and p.poll() is not None})  # fmt: skip
            time.sleep(0.2)
        if len(ended) < 2:
            hosts.dump_stacks()  # PYTHONFAULTHANDLER: where the node that did not end sits
            time.sleep(2)
    errs = [(tmp_path / f"err{i}").read_text() for i in (0, 1)]
    assert sorted(ended) == [0, 1], f"node(s) still running: {errs[len(ended) > 0][-6000:]}"
    assert [p.returncode for p in procs] == [1, 1]
    last = [e.strip().splitlines()[-1] for e in errs]
    assert last[0].startswith("distrib: error: worker rank 0 failed"), errs[0][-3000:]
    assert "rank(s) 1 never arrived" in last[0], last[0]
    assert last[1].startswith("distrib: error: worker rank 1 failed"), errs[1][-3000:]
    assert f"the job's store at {hosts.addrs[0]}:" in last[1], last[1]
    assert "lost contact with the node that hosts it (a network partition" in last[1], last[1]


STRANGER = """
import base64, pickle, sys, time
from datetime import timedelta
import torch.distributed as dist

class Payload:  # unpickled, it creates the marker file: code the stranger chose, run
    def __reduce__(self):
        return (open, (sys.argv[3], "w"))

deadline = time.monotonic() + 60
while True:
    try:
        store = dist.TCPStore(sys.argv[1], int(sys.argv[2]), is_master=False,
                              timeout=timedelta(seconds=5))
        break
    except Exception:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.5)
# the key torch's c10d rendezvous reads, named after the run id on the job's command line
store.set("torch.rendezvous.exp1", base64.b64encode(pickle.dumps(Payload())).decode())
print("written")
"""


@pytest.mark.waits
def test_a_stranger_who_reaches_the_store_cannot_make_the_launcher_run_its_pickle(tmp_path: Path):
    # The store has no authentication (torch's SECURITY.md): a process on another host that
    # reaches the port writes a pickle under the rendezvous key. With DISTRIB_RDZV_SECRET the
    # job's key has a part the stranger cannot guess from the command line: node 0 never reads
    # (never unpickles) what was written under the guessable one.
    marker = tmp_path / "payload-ran"
    (tmp_path / "stranger.py").write_text(STRANGER)
    with two_hosts() as hosts:
        node0 = hosts.popen(
            0,
            [PY, "-m", "distrib.launch", "--nnodes", "2", "--nproc", "1", "--rdzv-id", "exp1",
             "--rdzv-endpoint", f"{hosts.addrs[0]}:{PORT}", "--local-addr", hosts.addrs[0],
             "--rdzv-timeout", "15", str(SCRIPTS / "probe_env.py"), str(tmp_path)],
            cwd=tmp_path, env={**ENV, "DISTRIB_RDZV_SECRET": "s3cr3t"}, text=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        stranger = hosts.run(
            1, [PY, str(tmp_path / "stranger.py"), hosts.addrs[0], str(PORT), str(marker)],
            timeout=90, cwd=tmp_path, env=ENV,
        )  # fmt: skip
        assert stranger.stdout.strip() == "written", stranger.stderr[-3000:]
        _, err = node0.communicate(timeout=120)
    assert node0.returncode == 1
    assert not marker.exists(), "the launcher unpickled the stranger's rendezvous state"
    assert err.strip().splitlines()[-1].endswith("the others never reached the endpoint"), err
