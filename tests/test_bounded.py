"""distrib.bounded: a blocking call given a deadline, and the exit past one left running."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from helpers import ROOT

from distrib.bounded import call_within


def test_a_call_within_its_deadline_returns_or_raises_and_one_past_it_is_left():
    assert call_within(5, lambda: 7) == (True, 7)
    with pytest.raises(KeyError):
        call_within(5, {}.__getitem__, "k")
    begin = time.monotonic()
    assert call_within(0.2, time.sleep, 5) == (False, None)
    assert time.monotonic() - begin < 2
    # more: asked once at the deadline, it may grant the call more time
    assert call_within(0.1, lambda: time.sleep(0.4) or "late", more=lambda: 2.0) == (True, "late")


def test_leaving_past_a_call_left_running_exits_at_once_with_the_code_and_the_output():
    program = (
        "import time; from distrib.bounded import call_within, leave\n"
        "call_within(0.1, time.sleep, 30)\n"
        "print('distrib: error: the one line', end='', flush=False)\n"
        "leave(3)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a pipe: buffered
    begin = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, cwd=ROOT,
        env=env,
    )  # fmt: skip
    assert (res.returncode, res.stdout) == (3, "distrib: error: the one line"), res.stderr
    assert time.monotonic() - begin < 20
