from __future__ import annotations

import contextlib
import os
import socket

import pytest

from distrib.cli.launch import main as launch_main
from distrib.launch.local import LOOPBACK, Topology, WorkerFailed, launch


def test_launch_with_a_topology_of_one_node_is_the_same_as_nproc():
    assert launch(report_rank, topology=Topology(nproc_per_node=2))[1] == ("1", "2", LOOPBACK)


def report_rank() -> tuple[str, str, str]:
    return os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["MASTER_ADDR"]


def fail_on_rank_one() -> None:
    if os.environ["RANK"] == "1":
        raise ValueError("bad shard")


def test_launch_returns_every_rank_result_and_rendezvous_on_loopback():
    assert launch(report_rank, nproc=2) == {0: ("0", "2", LOOPBACK), 1: ("1", "2", LOOPBACK)}


def test_launch_failure_names_the_rank_with_traceback():
    with pytest.raises(WorkerFailed) as info:
        launch(fail_on_rank_one, nproc=2)
    assert info.value.rank == 1
    assert "ValueError: bad shard" in info.value.traceback
    assert str(info.value).startswith("worker rank 1 failed (exit code 1)")


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--nproc", "0"], "--nproc-per-node=0: expected an integer >= 1"),
        (["--nnodes", "0"], "--nnodes=0: expected an integer >= 1"),
        (
            ["--nnodes", "2", "--rdzv-endpoint", "10.1.2.3"],
            "--rdzv-endpoint='10.1.2.3': expected host:port with a port in 1..65535",
        ),
    ],
)
def test_launch_cli_rejects_bad_options_in_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], line: str
):
    with pytest.raises(SystemExit) as info:
        launch_main([*argv, "x.py"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"distrib: error: {line}") and err.count("\n") == 1


def _listening(pid: int) -> list[str]:
    """Addresses the sockets of ``pid`` listen on, read from /proc (IPv4 and IPv6)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # 0A = LISTEN
                    addr = cols[1].split(":")[0]
                    if len(addr) == 8:
                        out.append(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
                    else:
                        out.append("ipv6:" + addr)
    return out


def report_listening() -> dict[str, list[str]]:
    import distrib

    distrib.init()
    distrib.barrier()  # the group is up: every store and gloo socket exists now
    return {"agent": _listening(os.getppid()), "worker": _listening(os.getpid())}


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux /proc")
def test_rendezvous_stores_and_workers_listen_on_loopback_only():
    results = launch(report_listening, nproc=2)
    agent = results[0]["agent"]
    assert len(agent) >= 2  # the rendezvous store and the workers' bootstrap store
    assert set(agent) == {LOOPBACK}
    assert all(set(r["worker"]) <= {LOOPBACK} for r in results.values())
