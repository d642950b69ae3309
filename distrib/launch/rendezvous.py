"""torch's c10d rendezvous, twice: on loopback for one machine, and across nodes.

Both registered backends are torch's dynamic c10d rendezvous with one change: a fresh bootstrap
store for every round. Workers of a restarted group read keys without an attempt prefix (torch
assumes "a new TCPStore for every retry"), and in the store torch shares across rounds they
found the dead group's gloo addresses: ``Gloo connectFullMesh failed ... Connection refused``,
or a restarted pair waiting on them forever.

``distrib-loopback`` (one machine) also binds both of its TCP stores to 127.0.0.1: torch's stock
c10d creates them with ``TCPStore(host, port, is_master=True)``, which listens on every
interface whatever ``host`` says. This backend binds the listening sockets itself and hands them
to ``TCPStore`` through ``master_listen_fd``. ``distrib-c10d`` (several nodes) must be reachable
from the other nodes, so it listens as torch does.
"""

from __future__ import annotations

import socket
from datetime import timedelta
from typing import Any

LOOPBACK_BACKEND = "distrib-loopback"
C10D_BACKEND = "distrib-c10d"
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


def _named_backend(name: str) -> type:
    from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import C10dRendezvousBackend

    class Backend(C10dRendezvousBackend):
        @property
        def name(self) -> str:  # torch checks the handler's backend name against ours
            return name

    return Backend


def _fresh_store_per_round(handler: Any) -> Any:
    join = handler.next_rendezvous

    def next_rendezvous() -> Any:
        handler._shared_tcp_store_server = None  # rank 0 of the round makes a new one
        handler._bootstrap_store_info = None
        return join()

    handler.next_rendezvous = next_rendezvous
    return handler


def _create_loopback_handler(params: Any) -> Any:
    from torch.distributed.elastic.rendezvous.dynamic_rendezvous import create_handler

    store = loopback_store(float(params.get_as_int("read_timeout", 60) or 60))
    backend = _named_backend(LOOPBACK_BACKEND)(store, params.run_id)
    handler = create_handler(store, backend, params)
    handler._create_tcp_store_server = lambda addr, port: loopback_store()
    return _fresh_store_per_round(handler)


def _create_c10d_handler(params: Any) -> Any:
    from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import create_backend
    from torch.distributed.elastic.rendezvous.dynamic_rendezvous import create_handler

    _, store = create_backend(params)
    backend = _named_backend(C10D_BACKEND)(store, params.run_id)
    return _fresh_store_per_round(create_handler(store, backend, params))


def register() -> tuple[str, str]:
    """Register both backends with torch elastic (idempotent); return (loopback, c10d) names."""
    from torch.distributed.elastic.rendezvous import rendezvous_handler_registry

    known = getattr(rendezvous_handler_registry, "_registry", {})
    if LOOPBACK_BACKEND not in known:
        rendezvous_handler_registry.register(LOOPBACK_BACKEND, _create_loopback_handler)
    if C10D_BACKEND not in known:
        rendezvous_handler_registry.register(C10D_BACKEND, _create_c10d_handler)
    return LOOPBACK_BACKEND, C10D_BACKEND
