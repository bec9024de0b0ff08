"""Dubbo request frames built by the ``dubbo-ssl-python`` client's own encoder, and a reader.

Importing this module imports ``dubbo_ssl`` safely for the tests: its import-time threads use
a deprecated call, and its connection dict is iterated by two threads while a third changes
it, so the dict is swapped for one that hands out copies.
"""

from __future__ import annotations

import socket
import struct
import warnings
from typing import Any

from tests.e2e.servers import recv_exactly

with warnings.catch_warnings():
    # dubbo_ssl starts its reader threads at import with Thread.setDaemon (deprecated).
    warnings.simplefilter("ignore", DeprecationWarning)
    from dubbo_ssl.client import DubboClient  # type: ignore[import-untyped]
    from dubbo_ssl.codec.encoder import Request  # type: ignore[import-untyped]
    from dubbo_ssl.common.exceptions import DubboResponseException  # type: ignore[import-untyped]
    from dubbo_ssl.connection.connections import connection_pool  # type: ignore[import-untyped]

__all__ = [
    "DubboClient",
    "DubboResponseException",
    "connection_pool",
    "read_frame",
    "request_frame",
]


class _SnapshotDict(dict[str, Any]):
    """Iteration over copies: dubbo_ssl's heartbeat and reader threads loop over the dict
    while a caller adds a connection ("dictionary changed size during iteration")."""

    def keys(self) -> Any:
        return list(super().keys())

    def values(self) -> Any:
        return list(super().values())


if not isinstance(connection_pool._connection_pool, _SnapshotDict):
    connection_pool._connection_pool = _SnapshotDict(connection_pool._connection_pool)


def request_frame(interface: str, version: str, method: str, args: list[Any]) -> bytes:
    """A two-way Hessian2 request frame, exactly as dubbo_ssl sends it."""
    request = Request(
        {"dubbo_version": "2.4.10", "version": version, "method": method, "path": interface,
         "arguments": args, "group": "", "context": None}
    )  # fmt: skip
    return bytes(request.encode())


def read_frame(sock: socket.socket) -> tuple[int, int, int, bytes]:
    """(flag, status, request id, body) of one Dubbo frame."""
    header = recv_exactly(sock, 16)
    magic, flag, status, request_id, length = struct.unpack("!HBBqi", header)
    assert magic == 0xDABB, header
    return flag, status, request_id, recv_exactly(sock, length)
