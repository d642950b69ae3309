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

from distrib.errors import explain


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
    except SystemExit as e:
        _exit_without_finalizing(_exit_code(e))
    except BaseException as e:
        # A collective's timeout, explained by the worker side if the script joined a job
        # with distrib.init: which ranks never arrived (the raw error names none).
        e = explain(e)
        # The launcher prints the first failed rank's traceback once; print here only when
        # it cannot (no error file: run outside torch's agent).
        if not write_error_file(e):
            print(_user_frames(e), end="", file=sys.stderr)
        _exit_without_finalizing(1, join_threads=False)
    _exit_without_finalizing(0)


def _exit_code(e: SystemExit) -> int:
    """What the interpreter would exit with for ``sys.exit(e.code)``."""
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    print(e.code, file=sys.stderr)
    return 1


def _exit_without_finalizing(code: int, *, join_threads: bool = True) -> None:
    """Exit as the interpreter would, short of tearing it down.

    Non-daemon threads are joined (not after an error: a thread waiting on a dead peer would
    hang the job), atexit handlers run and the files the script left open are flushed, as in a
    normal exit; then ``os._exit``. Finalization is skipped because a gloo group still alive
    then (held by a DDP model in the script's globals, even after ``destroy_process_group``)
    has worker threads that take the GIL of a dying interpreter: "terminate called without an
    active exception", SIGABRT, which turns a finished or failed worker into a signal death
    that fails the job. Seen after an elastic restart, about one run in ten under load.
    """
    import atexit
    import gc
    import io
    import threading

    if join_threads:
        for thread in threading.enumerate():
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join()
    atexit._run_exitfuncs()
    for obj in gc.get_objects():  # as finalization would, closing them
        if issubclass(type(obj), io.IOBase):  # type(): some objects warn when asked __class__
            with contextlib.suppress(Exception):
                if not obj.closed:
                    obj.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
