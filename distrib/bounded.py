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

import threading
from collections.abc import Callable
from typing import Any


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
        return False, None
    if "error" in box:
        raise box["error"]
    return True, box["value"]


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__name__", type(fn).__name__)
