"""``python -m distrib.launch.script [-m] TARGET [args...]``: run a user's script as a worker.

What `distrib.launch` starts in each worker instead of ``python script.py``: the script runs
exactly as it would under torchrun (``__main__``, ``sys.argv``, ``sys.path[0]``), and an uncaught
exception is written, with its traceback and a precise time, to the error file torch's agent
gives each worker (``TORCHELASTIC_ERROR_FILE``, the format of torch's ``@record``). Without it
a plain script leaves the agent nothing but an exit code, and a rank whose peer raised first
can be blamed for the peer's error. Imports nothing heavy: the script pays for its own torch.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import runpy
import signal
import sys
import time
import traceback


def die_with_parent() -> None:
    """SIGKILL this worker if the agent that started it dies (Linux ``PR_SET_PDEATHSIG``).

    An agent killed with SIGKILL (an OOM kill, a scheduler, a test's timeout) cannot tear its
    workers down; without this they live on, holding GPUs and ports. Elsewhere: a no-op.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return


def _user_frames(error: BaseException) -> str:
    """The traceback from the user's code on: this runner's and runpy's frames say nothing."""
    tb = error.__traceback__
    while tb is not None and (
        tb.tb_frame.f_code.co_filename in (__file__, "<frozen runpy>")
        or tb.tb_frame.f_code.co_filename.endswith("runpy.py")
    ):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(error), error, tb))


def write_error_file(error: BaseException) -> bool:
    """Record ``error`` where the agent looks for this worker's failure; False if it can't."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return False
    now = time.time()
    data = {
        "message": {
            "message": f"{type(error).__name__}: {error}",
            "extraInfo": {
                "py_callstack": _user_frames(error),
                "timestamp": str(int(now)),
                "time": repr(now),
            },
        }
    }
    try:
        with open(path, "w") as f:
            json.dump(data, f)
    except OSError:
        return False  # reporting must never hide the error itself
    return True


_kept: dict = {}
"""The script's globals, alive until the interpreter exits, as they would be under ``python
script.py``. Freed on return from runpy instead, a DDP model's gloo group was destroyed while
this thread held the GIL and its worker thread needed it to finish a barrier: a deadlock at
exit (seen after an elastic restart)."""


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] not in ("-m", "--"):
        sys.exit("usage: python -m distrib.launch.script (-m MODULE | -- SCRIPT) [args...]")
    die_with_parent()
    module, target, args = argv[0] == "-m", argv[1], argv[2:]
    sys.argv = [target, *args]
    try:
        if module:  # sys.path[0] is already the working directory, as for `python -m`
            _kept.update(runpy.run_module(target, run_name="__main__", alter_sys=True))
        else:  # as `python script.py`: the script's directory first, not the working one
            sys.path[0] = os.path.dirname(os.path.abspath(target))
            _kept.update(runpy.run_path(target, run_name="__main__"))
    except SystemExit:
        raise
    except BaseException as e:
        # The launcher prints the first failed rank's traceback once; print here only when
        # it cannot (no error file: run outside torch's agent).
        if not write_error_file(e):
            print(_user_frames(e), end="", file=sys.stderr)
        _exit_after_error(1)


def _exit_after_error(code: int) -> None:
    """Exit now, after the atexit handlers and with the streams flushed, but without tearing
    down the interpreter: a live gloo group destroyed at finalization after an uncaught error
    can abort the process ("terminate called without an active exception", SIGABRT), turning
    the worker's real error into a signal death."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
