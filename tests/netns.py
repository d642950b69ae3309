"""Two hosts on one machine: a pair of Linux network namespaces joined by a veth cable.

Multi-node code paths (torchrun's c10d rendezvous, a static ``MASTER_ADDR``, gloo choosing an
interface) only show their real behaviour when the nodes have *separate network stacks*: on
loopback every process shares one stack, so a worker that binds 127.0.0.1, resolves the
hostname to itself, or talks to the wrong interface still "works". Here each host is its own
namespace with its own interface and address, and only the veth pair connects them, so such
bugs fail as they would on two machines.

Usage::

    with two_hosts() as hosts:
        server = hosts.popen(0, [sys.executable, "-m", "http.server", "-b", hosts.addrs[0]])
        probe = f"echo > /dev/tcp/{hosts.addrs[0]}/8000"  # no ping/curl needed
        hosts.run(1, ["bash", "-c", probe], timeout=10, check=True)

Running torchrun across the two hosts (tested with c10d and static rendezvous): the hostname
resolves to 127.0.0.1 inside every namespace, so name the addresses explicitly. Host 0 passes
``--rdzv_endpoint={addrs[0]}:PORT --local_addr={addrs[0]}`` (c10d also
``--rdzv_conf=is_host=true``, host 1 ``is_host=false`` and ``--local_addr={addrs[1]}``), and
every host sets ``GLOO_SOCKET_IFNAME={ifnames[i]}``, or gloo binds loopback. ``lo`` must be up:
a namespace reaches even its own veth address through it. torchrun starts workers in sessions
of their own, so they outlive a killed torchrun; leaving ``two_hosts()`` kills them anyway.

Needs root and iproute2 (``tests/system_deps.sh`` installs it). Tests call ``skip_reason()``
and skip when it names a reason; under ``CI=true`` it raises instead, since CI must run them.
Only addresses the helper assigns inside its own namespaces are used (10.77.<n>.1/.2); nothing
is added to, or routed through, the root namespace.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_counter = itertools.count()
_MAX_IFNAME = 15  # IFNAMSIZ - 1


def _ip_binary() -> str | None:
    """``ip``, also where a non-root PATH leaves out the sbin directories."""
    found = shutil.which("ip")
    if found:
        return found
    for candidate in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    ip = _ip_binary()
    if ip is None:
        raise FileNotFoundError("iproute2 `ip` not found (run tests/system_deps.sh)")
    result = subprocess.run(
        [ip, *args], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


@functools.cache
def _probe() -> str | None:
    """Why namespaces with a veth pair cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if _ip_binary() is None:
        return "iproute2 `ip` is not installed (run tests/system_deps.sh)"
    name = f"dp{os.getpid()}"
    added = _ip("netns", "add", name, check=False)
    if added.returncode != 0:
        return f"`ip netns add` fails: {added.stderr.strip()}"
    try:
        veth = _ip(
            "-n", name, "link", "add", f"{name}a", "type", "veth", "peer", "name", f"{name}b",
            check=False,
        )  # fmt: skip
        if veth.returncode != 0:
            return f"cannot create a veth pair: {veth.stderr.strip()}"
    finally:
        _ip("netns", "del", name, check=False)
    return None


def skip_reason() -> str | None:
    """Why ``two_hosts()`` cannot work on this machine, or None when it can.

    Under ``CI=true`` a reason is an error, not a skip: CI runs as root with iproute2 installed
    by ``tests/system_deps.sh``, so a missing capability there must fail the run.
    """
    reason = _probe()
    if reason is not None and _in_ci():
        raise RuntimeError(f"CI=true but two_hosts() cannot run: {reason}")
    return reason


@dataclass(frozen=True)
class Hosts:
    """Two namespaces ``names``, with addresses ``addrs`` on veth interfaces ``ifnames``."""

    names: tuple[str, str]
    addrs: tuple[str, str]
    ifnames: tuple[str, str]
    _procs: list[subprocess.Popen] = field(default_factory=list, repr=False, compare=False)

    def popen(self, i: int, argv: list[str], **popen_kwargs: Any) -> subprocess.Popen:
        """Start ``argv`` inside namespace ``i``, as the leader of a new session/process group."""
        popen_kwargs.setdefault("start_new_session", True)
        ip = _ip_binary()
        assert ip is not None
        proc = subprocess.Popen([ip, "netns", "exec", self.names[i], *argv], **popen_kwargs)
        self._procs.append(proc)
        return proc

    def run(
        self,
        i: int,
        argv: list[str],
        timeout: float,
        *,
        check: bool = False,
        input: str | bytes | None = None,
        **popen_kwargs: Any,
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` inside namespace ``i`` to completion; kill its tree after ``timeout``.

        ``stdout``/``stderr`` default to captured text.
        """
        popen_kwargs.setdefault("stdout", subprocess.PIPE)
        popen_kwargs.setdefault("stderr", subprocess.PIPE)
        popen_kwargs.setdefault("text", True)
        if input is not None:
            popen_kwargs["stdin"] = subprocess.PIPE
        else:
            popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = self.popen(i, argv, **popen_kwargs)
        try:
            out, err = proc.communicate(input=input, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(proc)
            try:
                proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:  # an escaped process still holds the pipes
                for pipe in (proc.stdin, proc.stdout, proc.stderr):
                    if pipe is not None:
                        pipe.close()
                proc.wait()
            raise
        result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        if check:
            result.check_returncode()
        return result

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL ``proc`` (started by `popen`) and everything it started."""
        _kill_tree(proc)

    def dump_stacks(self) -> None:
        """SIGABRT every process in both namespaces: those run with ``PYTHONFAULTHANDLER=1``
        print every thread's stack to their stderr first, which says where a hang sits."""
        for i in (0, 1):
            for pid in self.pids(i):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGABRT)

    def pids(self, i: int) -> list[int]:
        """Processes now running inside namespace ``i``."""
        listed = _ip("netns", "pids", self.names[i], check=False)
        return [int(p) for p in listed.stdout.split() if p.isdigit()]


def _descendants(root: int) -> list[int]:
    """Every live descendant of ``root``, from /proc (children first found, then theirs)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``, its process group and all its descendants.

    The group alone is not enough: torchrun starts each worker in a session of its own, so
    killing torchrun's group orphans the workers, which keep running and keep its pipes open.
    """
    if proc.poll() is not None:
        return
    pids = _descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in [proc.pid, *pids]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _kill_everything(hosts: Hosts) -> None:
    """SIGKILL every process group started via ``popen`` and every process in both namespaces."""
    for proc in hosts._procs:
        _kill_tree(proc)
    # A process may fork between listing and killing; repeat until both namespaces are empty.
    for _ in range(50):
        pids = [pid for i in (0, 1) for pid in hosts.pids(i)]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    for proc in hosts._procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


@contextlib.contextmanager
def two_hosts() -> Iterator[Hosts]:
    """Make two namespaces joined by a veth pair; on exit kill everything in them and delete them.

    Host ``i`` has interface ``ifnames[i]`` with address ``addrs[i]``/24, and ``lo`` up (so
    each host also has its own 127.0.0.1). Names carry this process's pid and a counter, so
    parallel test runs do not collide.
    """
    reason = skip_reason()
    if reason is not None:
        raise RuntimeError(f"two_hosts() cannot run here: {reason}")
    pid = os.getpid()
    made: list[str] = []
    try:
        # Find a free pair of names; a stale pair may survive a killed run whose pid is reused.
        for _ in range(100):
            k = next(_counter)
            tag = f"dn{pid}x{k}"
            names = (f"{tag}a", f"{tag}b")
            if _ip("netns", "add", names[0], check=False).returncode != 0:
                continue
            made.append(names[0])
            if _ip("netns", "add", names[1], check=False).returncode != 0:
                _ip("netns", "del", made.pop(), check=False)
                continue
            made.append(names[1])
            break
        else:
            raise RuntimeError("could not create a pair of network namespaces")
        # The addresses live only inside these namespaces, so any subnet would do; varying it
        # per call just keeps logs from different pairs apart.
        subnet = (pid * 7 + k) % 250 + 1
        addrs = (f"10.77.{subnet}.1", f"10.77.{subnet}.2")
        ifnames = names  # each veth end is named after its namespace
        assert all(len(n) <= _MAX_IFNAME for n in ifnames), ifnames
        # Create the pair inside namespace 0 with its peer directly in namespace 1: nothing
        # ever appears in the root namespace.
        _ip(
            "-n", names[0], "link", "add", ifnames[0], "type", "veth",
            "peer", "name", ifnames[1], "netns", names[1],
        )  # fmt: skip
        for name, ifname, addr in zip(names, ifnames, addrs, strict=True):
            _ip("-n", name, "addr", "add", f"{addr}/24", "dev", ifname)
            _ip("-n", name, "link", "set", ifname, "up")
            _ip("-n", name, "link", "set", "lo", "up")
        hosts = Hosts(names=names, addrs=addrs, ifnames=ifnames)
        try:
            yield hosts
        finally:
            _kill_everything(hosts)
    finally:
        for name in made:
            _ip("netns", "del", name, check=False)
