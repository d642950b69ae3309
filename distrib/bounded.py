"""A blocking call given a deadline: ``call_within(seconds, fn, *args)``.

Some calls block with no timeout at all: torch's TCPStore client waits for its server's
answer for ever when the server's host is cut off (a network partition drops packets, no RST
comes back), and the same holds for the first request to an endpoint where another service
listens. Such a call runs here in a daemon thread (it holds no lock of ours and releases the
GIL while it waits); past the deadline it is left there and the caller goes on to fail in one
line instead of hanging the job. Example::

    done, value = call_within(5.0, store.get, "key")
    if not done:
        raise TimeoutError("the store did not answer within 5 s")
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

_left: list[threading.Thread] = []
"""The calls left running past their deadline, in this process."""


def call_within(
    seconds: float, fn: Callable[..., Any], *args: Any, more: Callable[[], float] | None = None
) -> tuple[bool, Any]:
    """``(True, fn(*args))``, or ``(False, None)`` when it has not returned after ``seconds``
    (then it goes on in its thread). An exception of ``fn`` is raised here. ``more``, called
    once at the deadline, may grant more seconds (it looks at why the call is slow)."""
    box: dict[str, Any] = {}

    def call() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=call, name=f"distrib-bounded-{_name(fn)}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive() and more is not None:
        thread.join(more())
    if thread.is_alive():
        _left.append(thread)
        return False, None
    if "error" in box:
        raise box["error"]
    return True, box["value"]


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def leave(code: int | str | None) -> None:
    """Exit with ``code`` as ``sys.exit`` would; but where a call was left running past its
    deadline, flush stdout/stderr and ``os._exit``: such a call, returning (or failing) in its
    thread while the interpreter is torn down, takes the GIL of a dying interpreter and the
    process dies of "terminate called without an active exception" (SIGABRT) instead of the
    one-line error it printed. Seen in CI: -6 in place of 1."""
    if not any(t.is_alive() for t in _left):
        sys.exit(code)
    if isinstance(code, str):
        print(code, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)
