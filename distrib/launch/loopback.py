"""A c10d rendezvous whose TCP stores listen on 127.0.0.1 only.

torch's stock c10d rendezvous creates its stores with ``TCPStore(host, port, is_master=True)``,
which listens on every interface whatever ``host`` says. For a single-machine job nothing
outside the machine should reach them, so this backend binds the listening sockets to loopback
itself and hands them to ``TCPStore`` through ``master_listen_fd``: both the rendezvous store
and the store the workers' process group bootstraps from.
"""

from __future__ import annotations

import socket
from datetime import timedelta
from typing import Any

BACKEND = "distrib-loopback"
LOOPBACK = "127.0.0.1"


def loopback_store(timeout_s: float = 60.0) -> Any:
    """A TCPStore server listening on 127.0.0.1 at a free port."""
    from torch.distributed import TCPStore

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    store = TCPStore(
        LOOPBACK,
        port,
        is_master=True,
        multi_tenant=True,
        timeout=timedelta(seconds=timeout_s),
        master_listen_fd=sock.detach(),  # the store owns the fd from here on
    )
    return store


def _create_handler(params: Any) -> Any:
    from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import C10dRendezvousBackend
    from torch.distributed.elastic.rendezvous.dynamic_rendezvous import create_handler

    class _Backend(C10dRendezvousBackend):
        @property
        def name(self) -> str:  # torch checks the handler's backend name against ours
            return BACKEND

    store = loopback_store(float(params.get_as_int("read_timeout", 60) or 60))
    handler = create_handler(store, _Backend(store, params.run_id), params)
    # The store the workers bootstrap their process group from (torch shares one per job).
    handler._create_tcp_store_server = lambda addr, port: loopback_store()
    return handler


def register() -> str:
    """Register the backend with torch elastic (idempotent) and return its name."""
    from torch.distributed.elastic.rendezvous import rendezvous_handler_registry

    if BACKEND not in getattr(rendezvous_handler_registry, "_registry", {}):
        rendezvous_handler_registry.register(BACKEND, _create_handler)
    return BACKEND
