"""The two-hosts helper: separate network stacks joined only by the veth pair, cleaned up after."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from netns import _ip, skip_reason, two_hosts

reason = skip_reason()
if reason is not None:
    pytest.skip(reason, allow_module_level=True)

PORT = 29555  # every namespace has its own port space, so a fixed port cannot collide

SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen()
print("listening", flush=True)
while True:
    conn, _ = s.accept()
    conn.sendall(b"hello from ns0")
    conn.close()
"""

CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as c:
    print(c.recv(100).decode())
"""


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (nobody reaped it yet) counts as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}


def test_server_in_ns0_reachable_from_ns1_only() -> None:
    with two_hosts() as hosts:
        addr0 = hosts.addrs[0]
        server = hosts.popen(
            0, [sys.executable, "-c", SERVER, addr0, str(PORT)], stdout=subprocess.PIPE, text=True
        )
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "listening"

        client = hosts.run(1, [sys.executable, "-c", CLIENT, addr0, str(PORT)], timeout=30)
        assert client.returncode == 0, client.stderr
        assert client.stdout.strip() == "hello from ns0"

        # The root namespace does not have the address (no packet is sent from it: the
        # address exists only inside the test's own namespaces).
        assert addr0 not in _ip("-o", "addr").stdout

        # Loopback is per namespace too: ns1's 127.0.0.1 has no listener on that port.
        on_lo = hosts.run(1, [sys.executable, "-c", CLIENT, "127.0.0.1", str(PORT)], timeout=30)
        assert on_lo.returncode != 0
        assert "ConnectionRefusedError" in on_lo.stderr


def test_exit_kills_processes_and_deletes_namespaces() -> None:
    pids: list[int] = []
    with two_hosts() as hosts:
        names = hosts.names
        for i in (0, 1):
            # A shell that forks a background sleeper: the grandchild must die too.
            proc = hosts.popen(
                i, ["sh", "-c", "sleep 600 & echo $!; exec sleep 600"], stdout=subprocess.PIPE
            )
            assert proc.stdout is not None
            pids += [proc.pid, int(proc.stdout.readline())]
        listed = _ip("netns", "list").stdout
        assert all(name in listed for name in names)
        assert set(pids) <= set(hosts.pids(0)) | set(hosts.pids(1))
        assert all(_alive(pid) for pid in pids)

    listed = _ip("netns", "list").stdout
    assert not any(name in listed for name in names), listed
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids), [pid for pid in pids if _alive(pid)]


def test_hosts_are_distinct_per_call() -> None:
    with two_hosts() as a, two_hosts() as b:
        assert len({*a.names, *b.names}) == 4
        assert all(len(n) <= 15 for n in (*a.ifnames, *b.ifnames))
        assert a.addrs != b.addrs


ESCAPER = """
import subprocess, sys, time
child = subprocess.Popen(["sleep", "600"], start_new_session=True)  # like torchrun's workers
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(600)
"""


def test_run_timeout_kills_children_in_their_own_session(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    with two_hosts() as hosts:
        start = time.monotonic()
        with pytest.raises(subprocess.TimeoutExpired):
            hosts.run(0, [sys.executable, "-c", ESCAPER, str(pid_file)], timeout=2)
        assert time.monotonic() - start < 30  # at the 2 s timeout, not the child's 600 s
        grandchild = int(pid_file.read_text())
        deadline = time.monotonic() + 5
        while _alive(grandchild) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(grandchild)


HOSTNAME_AT = r"""
set -e
hostname {name}
printf '%s {name}\n127.0.0.1 localhost\n' {addr} > {hosts}
mount --bind {hosts} /etc/hosts
exec "$@"
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["trainer", "launch"])
def test_a_single_node_job_listens_on_loopback_only_where_the_hostname_resolves_out(
    tmp_path: Path, how: str
) -> None:
    # seen before: in a namespace whose hostname maps to its veth address, the trainer and
    # distrib.launch (gloo, by the hostname) listened on that address besides 127.0.0.1
    from helpers import ROOT, SMALL_RUN

    scripts = ROOT / "tests" / "scripts"
    job = (
        [sys.executable, "-m", "distrib.train", *SMALL_RUN, "launcher.nproc=2",
         f"hydra.run.dir={tmp_path / 'run'}"]
        if how == "trainer"
        else [sys.executable, "-m", "distrib.launch", "--nproc", "2",
              str(scripts / "ddp_script.py"), "--out", str(tmp_path)]
    )  # fmt: skip
    with two_hosts() as hosts:
        wrap = HOSTNAME_AT.format(name="node0", addr=hosts.addrs[0], hosts=tmp_path / "hosts")
        out = tmp_path / "listening.json"
        res = hosts.run(
            0,
            ["unshare", "--uts", "--mount", "bash", "-c", wrap, "wrap", sys.executable,
             str(scripts / "listening.py"), str(out), "--", *job],
            timeout=240, cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT / "tests"), "WANDB_MODE": "disabled"},
        )  # fmt: skip
        assert res.returncode == 0, res.stderr[-3000:]
    seen = json.loads(out.read_text())
    assert seen["returncode"] == 0
    assert seen["listening"] and set(seen["listening"]) <= {"127.0.0.1", "::1"}, seen
