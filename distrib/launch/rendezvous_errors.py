"""A rendezvous that fails says so in one line: where, why, and who joined.

torch's c10d store prints its C++ warnings straight to the process's stderr (fd 2), each with
a 30-frame C++ stack: an unreachable endpoint printed 42-114 lines before our one. While the
store connects and while the nodes meet, fd 2 is captured here (`captured_stderr`); on failure
its first error line goes into ours and the frames are dropped, on success what it said is
passed on without the frames. A lone node that waits out ``rdzv_timeout_s`` says how many of
the nodes it waited for joined, and which; a run id that an ended job used on a store that
outlived it says so, where torch says only ``RendezvousClosedError`` (`describe`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any


def is_rendezvous_error(error: BaseException) -> bool:
    import torch.distributed as dist
    from torch.distributed.elastic.rendezvous.api import RendezvousError

    kinds: tuple[type, ...] = (RendezvousError, TimeoutError, ConnectionError)
    kinds += tuple(
        k
        for k in (getattr(dist, "DistNetworkError", None), getattr(dist, "DistStoreError", None))
        if k is not None
    )
    return isinstance(error, kinds)


class Captured:
    """What fd 2 received inside `captured_stderr` (filled in when the block ends)."""

    text = ""

    def errors(self) -> list[str]:
        """The C++ ``[E...]`` lines, their ``[E<time> file:line] [c10d]`` prefix cut."""
        out = []
        for line in self.text.splitlines():
            if line.startswith("[E"):
                out.append(line.split("] ", 1)[-1].removeprefix("[c10d] ").strip())
        return out

    def without_frames(self) -> str:
        keep = [
            ln
            for ln in self.text.splitlines()
            if not ln.startswith(("frame #", "Exception raised from")) and ln.strip()
        ]
        return "\n".join(keep) + ("\n" if keep else "")


@contextlib.contextmanager
def captured_stderr() -> Iterator[Captured]:
    """Send fd 2 to a temporary file for the block (no worker runs meanwhile)."""
    box = Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield box
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            box.text = tmp.read().decode(errors="replace")


def describe(error: BaseException, captured: Captured, handler: Any, config: Any) -> str:
    """The one line: ``rendezvous at <endpoint> (<backend>, run id <id>) failed: <why>``."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    cause = error.__cause__ or error.__context__
    if "inner exception" in first and cause is not None:  # torch's wrapper says nothing
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    why = f"{type(error).__name__}: {first}"
    if type(error).__name__ == "RendezvousTimeoutError":
        why = "timed out" + _who_joined(handler, config)
    elif type(error).__name__ == "RendezvousClosedError":  # torch's message is its own name
        why = (
            "closed: a job with this run id has ended on this endpoint (its rendezvous is "
            "closed for good); give this job a new id (--rdzv-id, launcher.rdzv_id)"
        )
    elif captured.errors() and captured.errors()[0] not in why:
        why += f" ({captured.errors()[0]})"
    return (
        f"rendezvous at {config.rdzv_endpoint} ({config.rdzv_backend}, run id {config.run_id}) "
        f"failed: {why}"
    )


def _who_joined(handler: Any, config: Any) -> str:
    """``: 1 of 2 node(s) joined within 20 s (10.0.0.1)``, from the c10d handler's state."""
    try:  # torch's DynamicRendezvousHandler has no public view of who is there
        me = handler._this_node
        holder = handler._state_holder
        holder.sync()  # this node left on its timeout; the others still waiting are there
        others = {n for n in [*holder.state.participants, *holder.state.wait_list] if n != me}
        joined = [getattr(me, "addr", "this node"), *sorted(n.addr for n in others)]
        timeout = handler._settings.timeout.join.total_seconds()
    except Exception:
        return f" waiting for {config.min_nodes} node(s)"
    return (
        f": {len(joined)} of {config.min_nodes} node(s) joined within {timeout:g} s "
        f"({', '.join(joined)}); the others never reached the endpoint"
    )
