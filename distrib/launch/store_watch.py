"""The agent's rendezvous calls given a deadline: a node cut off from the store still ends.

torch's agent asks its rendezvous handler, every monitor interval while the workers run, how
many nodes wait to join (``num_nodes_waiting``): a read from the rendezvous store on node 0.
When a network partition cuts this node off, that read never returns (the TCPStore client
has no timeout while packets are dropped), so the agent never looks at its workers again: the
worker that timed out in its collective ended, and the node ran for good. `watched` wraps the
handler so that this read, the restart's rendezvous and the shutdown, past a deadline, give up:

- ``num_nodes_waiting`` waits ``answer_s`` at most (one read at a time) and says 0 while the
  store is silent, so the agent goes on to see its workers end;
- a rendezvous (a restart) with the store silent for longer than that fails at once, in one
  line naming the endpoint and how long it has been silent;
- ``shutdown`` waits ``answer_s`` at most.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from distrib.bounded import call_within


class StoreSilent(TimeoutError):
    """The rendezvous store stopped answering this node (a partition, or node 0 is gone)."""


def watched(handler: Any, endpoint: str, answer_s: float = 5.0) -> Any:
    """``handler`` (a torch RendezvousHandler) with its store reads bounded (module docstring)."""
    return _Watched(handler, endpoint, answer_s)


class _Watched:
    def __init__(self, handler: Any, endpoint: str, answer_s: float) -> None:
        self._handler, self._endpoint, self._answer_s = handler, endpoint, answer_s
        self._pending: threading.Thread | None = None
        self._silent_since: float | None = None
        self._waiting = 0

    def __getattr__(self, name: str) -> Any:  # the rest of the handler, as it is
        return getattr(self._handler, name)

    def silent_s(self) -> float:
        """How long the store has not answered a read (0: it answers)."""
        return 0.0 if self._silent_since is None else time.monotonic() - self._silent_since

    def num_nodes_waiting(self) -> int:
        if self._pending is not None and self._pending.is_alive():
            return 0  # the last read is still out: nobody is known to wait
        box: dict[str, Any] = {}

        def read() -> None:
            try:
                box["n"] = self._handler.num_nodes_waiting()
            except BaseException as e:  # raised in the agent's thread, as torch's own would be
                box["error"] = e

        self._pending = threading.Thread(target=read, name="distrib-rdzv-watch", daemon=True)
        self._pending.start()
        self._pending.join(self._answer_s)
        if self._pending.is_alive():
            self._silent_since = self._silent_since or time.monotonic() - self._answer_s
            return 0
        self._silent_since = None
        if "error" in box:
            raise box["error"]
        return box["n"]

    def next_rendezvous(self) -> Any:
        if self.silent_s() > self._answer_s:
            raise StoreSilent(
                f"the rendezvous store at {self._endpoint} has not answered this node for "
                f"{self.silent_s():.0f} s: a network partition, or its node is gone"
            )
        return self._handler.next_rendezvous()

    def shutdown(self) -> bool:
        if self.silent_s():
            return False  # its close would wait on the silent store for ever
        done, closed = call_within(self._answer_s, self._handler.shutdown)
        return bool(closed) if done else False
