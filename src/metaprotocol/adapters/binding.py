"""Listening sockets: binding one, and what a reload does to a set of them (bind what a
new config adds or moves, all or none)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from metaprotocol.core.config import Config

__all__ = [
    "ListenerChanges",
    "bind_listener_changes",
    "bind_socket",
    "bound_address",
    "peer_text",
    "set_nodelay",
    "take_backlog",
]


def set_nodelay(sock: socket.socket | None) -> None:
    """Turn Nagle off on a TCP socket (requests and answers are small and waited for)."""
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def peer_text(peer: object) -> str:
    """A peer address for ``Accepted``: ``host:port``, or as the loop gave it."""
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")


def bind_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A non-blocking listening TCP socket on ``host:port`` (its first address)."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def take_backlog(sock: socket.socket) -> list[tuple[socket.socket, Any]]:
    """The clients (and their addresses) the kernel connected on listening ``sock`` and
    nobody accepted yet (closing ``sock`` would reset them), accepted without waiting."""
    accepted: list[tuple[socket.socket, Any]] = []
    while True:
        try:
            client, peer = sock.accept()
        except OSError:  # BlockingIOError: the backlog is empty; or the socket is closed
            return accepted
        client.setblocking(False)
        accepted.append((client, peer))


@dataclass(frozen=True)
class ListenerChanges:
    """What a reload does to the listening sockets: ``removed`` names stop accepting (an
    address change is a removal and an addition); ``added`` are bound, all or none."""

    removed: tuple[str, ...]
    added: dict[str, socket.socket]

    def close(self) -> None:
        for sock in self.added.values():
            sock.close()

    def update(self, addresses: dict[str, tuple[str, int]]) -> None:
        """Bring a handle's listener name -> bound address map up to date."""
        for name in self.removed:
            addresses.pop(name, None)
        for name, sock in self.added.items():
            addresses[name] = bound_address(sock.getsockname())


def bind_listener_changes(old: Config | None, new: Config, reuse_port: bool) -> ListenerChanges:
    """Bind the listeners ``new`` adds (or moves) over ``old``. Raises OSError (naming the
    listener) or ValueError, with nothing left bound, if any of them cannot be bound or one
    would turn TLS on or off at its address."""
    before = {} if old is None else {lst.name: (lst.host, lst.port) for lst in old.listeners}
    after = {lst.name: (lst.host, lst.port) for lst in new.listeners}
    removed = tuple(name for name, address in before.items() if after.get(name) != address)
    if old is not None:  # a listening socket is plaintext or TLS for its whole life
        secure = {lst.name: lst.tls is not None for lst in old.listeners}
        for lst in new.listeners:
            if before.get(lst.name) == after[lst.name] and secure[lst.name] != (
                lst.tls is not None
            ):
                raise ValueError(
                    f"listener {lst.name!r}: turning TLS on or off takes a new address "
                    "(or a restart)"
                )
    added: dict[str, socket.socket] = {}
    try:
        for name, (host, port) in after.items():
            if before.get(name) == (host, port):
                continue
            if reuse_port and port == 0:
                raise ValueError(f"listener {name!r}: --workers needs fixed ports, not port 0")
            try:
                added[name] = bind_socket(host, port, reuse_port)
            except OSError as exc:
                raise OSError(f"listener {name!r} on {host}:{port}: {exc}") from exc
    except BaseException:
        ListenerChanges((), added).close()
        raise
    return ListenerChanges(removed, added)


def bound_address(sockname: Any) -> tuple[str, int]:
    """``(host, port)`` from a socket name (IPv6 names carry two more fields)."""
    return str(sockname[0]), int(sockname[1])
