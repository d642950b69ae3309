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
