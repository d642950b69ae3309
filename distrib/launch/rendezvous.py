"""torch's c10d rendezvous, twice: on loopback for one machine, and across nodes.

Both registered backends are torch's dynamic c10d rendezvous with one change: a fresh bootstrap
store for every round. Workers of a restarted group read keys without an attempt prefix (torch
assumes "a new TCPStore for every retry"), and in the store torch shares across rounds they
found the dead group's gloo addresses: ``Gloo connectFullMesh failed ... Connection refused``,
or a restarted pair waiting on them forever.

Both also bind their TCP stores to one address: torch's stock c10d creates them with
``TCPStore(host, port, is_master=True)``, which listens on every interface whatever ``host``
says. These backends bind the listening sockets themselves and hand them to ``TCPStore``
through ``master_listen_fd``: ``distrib-loopback`` (one machine) to 127.0.0.1,
``distrib-c10d`` (several nodes) to the endpoint's address (the rendezvous store) and to this
node's ``local_addr`` (the per-round store its workers use). The stores have no
authentication (pytorch's SECURITY.md): the rendezvous port must be reachable from the job's
nodes only, and ``DISTRIB_RDZV_SECRET`` makes the rendezvous key unguessable
(`distrib.launch.topology`).
"""

from __future__ import annotations

import socket
from datetime import timedelta
from typing import Any

LOOPBACK_BACKEND = "distrib-loopback"
C10D_BACKEND = "distrib-c10d"
LOOPBACK = "127.0.0.1"


def bound_store(host: str, port: int = 0, timeout_s: float = 60.0) -> Any:
    """A TCPStore server listening on ``host``'s address only (``port`` 0: a free one)."""
    from torch.distributed import TCPStore

    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return TCPStore(
        host,
        sock.getsockname()[1],
        is_master=True,
        multi_tenant=True,
        timeout=timedelta(seconds=timeout_s),
        master_listen_fd=sock.detach(),  # the store owns the fd from here on
    )


def loopback_store(timeout_s: float = 60.0) -> Any:
    """A TCPStore server listening on 127.0.0.1 at a free port."""
    return bound_store(LOOPBACK, 0, timeout_s)


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


def _rendezvous_store(params: Any) -> Any:
    """torch's c10d store for ``params`` (host it when this node is the endpoint, else join),
    the host's bound to the endpoint's address instead of every interface."""
    from torch.distributed import TCPStore
    from torch.distributed.elastic.rendezvous.api import RendezvousConnectionError
    from torch.distributed.elastic.rendezvous.utils import (
        _matches_machine_hostname,
        parse_rendezvous_endpoint,
    )

    host, port = parse_rendezvous_endpoint(params.endpoint, default_port=29400)
    said = params.get_as_bool("is_host")
    is_host = said if said is not None else _matches_machine_hostname(host)
    timeout = float(params.get_as_int("read_timeout", 60) or 60)
    try:
        if is_host:
            try:
                return bound_store(host, port, timeout)
            except OSError:
                if said:  # told to host it, and cannot: say so
                    raise
                # guessed from the hostname: another process of this machine hosts it
        return TCPStore(host, port, is_master=False, multi_tenant=True,
                        timeout=timedelta(seconds=timeout))  # fmt: skip
    except (OSError, RuntimeError, ValueError) as e:
        raise RendezvousConnectionError(
            "The connection to the C10d store has failed. See inner exception for details."
        ) from e


def c10d_handler(store: Any, params: Any, serve: Any = bound_store) -> Any:
    """The ``distrib-c10d`` handler over ``store``; ``serve(addr, port)`` makes rank 0's
    per-round store. Its own function so that ``distrib.bench scale`` runs this very handler
    over a store that counts its operations."""
    from torch.distributed.elastic.rendezvous.dynamic_rendezvous import create_handler

    backend = _named_backend(C10D_BACKEND)(store, params.run_id)
    handler = create_handler(store, backend, params)
    handler._create_tcp_store_server = serve
    return _fresh_store_per_round(handler)


def _create_c10d_handler(params: Any) -> Any:
    return c10d_handler(_rendezvous_store(params), params)


def register() -> tuple[str, str]:
    """Register both backends with torch elastic (idempotent); return (loopback, c10d) names."""
    from torch.distributed.elastic.rendezvous import rendezvous_handler_registry

    known = getattr(rendezvous_handler_registry, "_registry", {})
    if LOOPBACK_BACKEND not in known:
        rendezvous_handler_registry.register(LOOPBACK_BACKEND, _create_loopback_handler)
    if C10D_BACKEND not in known:
        rendezvous_handler_registry.register(C10D_BACKEND, _create_c10d_handler)
    return LOOPBACK_BACKEND, C10D_BACKEND
