"""The script runner each launched worker is: it exits as ``python script.py`` would, without
the interpreter teardown that can turn a finished worker into a SIGABRT."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PY = sys.executable


def run_script(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(body)
    return subprocess.run(
        [PY, "-m", "distrib.launch.script", "--", str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_finished_script_exits_0_even_if_teardown_would_abort(tmp_path: Path):
    # A stand-in for a gloo group held by a DDP model in the script's globals: destroyed
    # during interpreter finalization, its threads abort the process (SIGABRT, seen after an
    # elastic restart). The runner exits before finalization, as a finished worker must.
    res = run_script(
        tmp_path,
        "import os, threading, time\n"
        "class HeldGroup:\n"
        "    def __del__(self):\n"
        "        os.abort()\n"
        "group = HeldGroup()\n"
        "log = open('left-open.txt', 'w')\n"
        "log.write('buffered, never flushed')\n"
        "def late():\n"
        "    time.sleep(0.5)\n"
        "    open('thread-done.txt', 'w').write('yes')\n"
        "threading.Thread(target=late).start()\n"
        "import atexit\n"
        "atexit.register(lambda: open('atexit-ran.txt', 'w').write('yes'))\n",
    )
    assert res.returncode == 0, res.stderr
    # what a normal exit does is still done: threads joined, atexit run, open files flushed
    assert (tmp_path / "left-open.txt").read_text() == "buffered, never flushed"
    assert (tmp_path / "thread-done.txt").read_text() == "yes"
    assert (tmp_path / "atexit-ran.txt").read_text() == "yes"


@pytest.mark.parametrize(
    ("call", "code", "stderr"),
    [("sys.exit()", 0, ""), ("sys.exit(3)", 3, ""), ("sys.exit('bye')", 1, "bye\n")],
)
def test_sys_exit_gives_the_code_python_would(tmp_path: Path, call: str, code: int, stderr: str):
    res = run_script(tmp_path, f"import sys\nprint('out', flush=False)\n{call}\n")
    assert res.returncode == code
    assert res.stdout == "out\n"
    assert res.stderr == stderr


def test_an_uncaught_error_exits_1_with_the_users_traceback_only(tmp_path: Path):
    res = run_script(tmp_path, "def f():\n    raise ValueError('boom')\nf()\n")
    assert res.returncode == 1
    assert res.stderr.splitlines()[-1] == "ValueError: boom"
    assert "runpy" not in res.stderr and "launch/script.py" not in res.stderr


HUNG_SCRIPT = """
import os, time, torch, distrib
ctx = distrib.init(timeout_s=10)
open(f"rank{ctx.rank}.pid", "w").write(str(os.getpid()))
if ctx.rank == 1:
    time.sleep(120)  # hung before the collective
{collective}(torch.ones(1))
"""


@pytest.mark.waits
@pytest.mark.parametrize("collective", ["distrib.reduce_sum", "torch.distributed.all_reduce"])
def test_a_rank_hung_before_a_collective_in_an_own_script_is_named(tmp_path: Path, collective: str):
    import pickle
    import time

    from helpers import run_cli, wait_gone

    # distrib's collective names the rank itself; a raw one is explained by the script runner
    (tmp_path / "hung.py").write_text(HUNG_SCRIPT.replace("{collective}", collective))
    start = time.monotonic()
    res = run_cli(PY, "-m", "distrib.launch", "--nproc", "2", "hung.py", cwd=tmp_path, timeout=90)
    took, ended = time.monotonic() - start, time.time()
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert "a collective timed out on rank 0 after 10 s: rank(s) 1 never arrived" in last, last
    # the 10 s timeout, not the 120 s sleep: under 30 s from the moment rank 1 hangs (its pid
    # file), and at all (a start-up on two loaded cores: CI once took 30.03 s overall)
    hung_for = ended - (tmp_path / "rank1.pid").stat().st_mtime
    assert hung_for < 30, (hung_for, took)
    assert took < 60, took
    pids = [int((tmp_path / f"rank{r}.pid").read_text()) for r in (0, 1)]
    assert wait_gone(pids, timeout=10), "a worker outlived its job"
    # rank 0's flight record: the all_reduce it waited in, which torchfrtrace reads
    record = tmp_path / "flight_recorder" / "rank_0"
    assert f"flight record: {record}" in last
    entries = pickle.loads(record.read_bytes())["entries"]
    assert entries[-1]["profiling_name"] == "gloo:all_reduce"
    trace = run_cli("torchfrtrace", str(record.parent), "-p", "rank_", "--allow-incomplete-ranks")
    assert "missed FR dumps from ranks ({1})" in trace.stdout + trace.stderr
