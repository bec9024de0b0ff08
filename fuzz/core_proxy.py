"""The whole core with a real codec: random events and bytes through ``Proxy.handle``.

Byte 0 picks the listener's codec (``CODECS``); the rest is a program of events, one op
byte each (``op % 9``) with its operands: bytes from a client or a server, a server
connecting or failing to, end of input, a close, a new client, time passing, a write
buffer filling or draining. Closes the core asks for are reported back as the adapters
do. Rules: ``handle`` never raises, and once every connection is closed and the timers
have run, no connection and no request is left.
"""

from __future__ import annotations

from typing import Any

from metaprotocol.codecs.lengthprefixed import build_frame
from metaprotocol.configfile import parse_config
from metaprotocol.core.config import Config
from metaprotocol.core.events import (
    Accepted,
    Closed,
    DataReceived,
    EofReceived,
    Event,
    TimePassed,
    UpstreamConnected,
    UpstreamConnectFailed,
    WriteBufferHigh,
    WriteBufferLow,
)
from metaprotocol.core.outputs import CloseConnection, OpenUpstream
from metaprotocol.core.proxy import Proxy

from .common import Finding, vectors

__all__ = ["CODECS", "harness", "seeds"]

# codec name, the property routes match on, a value that matches
CODECS: list[tuple[str, str, str]] = [
    ("lengthprefixed", "method", "a"),
    ("redis", "command", "G"),
    ("http1", ":path", "/a"),
    ("dubbo", "method", "a"),
    ("thrift", "method", "a"),
    ("trpc", "func", "/a"),
]
_MAX_CLIENTS = 4
_configs: dict[str, Config] = {}


def _config(codec: str, key: str, prefix: str) -> Config:
    config = _configs.get(codec)
    if config is None:
        data: dict[str, Any] = {
            "listeners": [
                {
                    "name": "main",
                    "address": "127.0.0.1:0",
                    "codec": codec,
                    "max_message_size": 2048,
                    "max_pending_requests": 8,
                    "request_timeout": "1s",
                    "idle_timeout": "5s",
                    "routes": [
                        {
                            "name": "a",
                            "match": {"metadata": {key: {"prefix": prefix}}},
                            "route": {"cluster": "a", "retries": {"attempts": 2}},
                        },
                        {"name": "rest", "route": {"cluster": "b"}},
                    ],
                }
            ],
            "clusters": [
                {"name": "a", "endpoints": ["10.0.0.1:1", "10.0.0.2:1"]},
                {"name": "b", "endpoints": ["10.0.0.3:1"], "connect_timeout": "1s"},
            ],
        }
        config = _configs[codec] = parse_config(data, "fuzz")
    return config


class _Run:
    """One program: the proxy, the connections it knows and the clock."""

    def __init__(self, codec: int) -> None:
        name, key, prefix = CODECS[codec % len(CODECS)]
        self.proxy = Proxy(_config(name, key, prefix), now=0.0, random=lambda: 0.5)
        self.now = 0.0
        self.clients: list[int] = []
        self.servers: list[int] = []  # opened by the proxy, in order
        self.next_client = 1

    def handle(self, event: Event) -> None:
        closes: list[int] = []
        for out in self.proxy.handle(event, self.now):
            if isinstance(out, OpenUpstream):
                self.servers.append(out.conn)
            elif isinstance(out, CloseConnection):
                closes.append(out.conn)
        for conn in closes:  # the adapter closes it and reports it closed
            self.forget(conn)
            self.handle(Closed(conn))

    def forget(self, conn: int) -> None:
        if conn in self.clients:
            self.clients.remove(conn)
        if conn in self.servers:
            self.servers.remove(conn)

    def accept(self) -> None:
        if len(self.clients) < _MAX_CLIENTS:
            conn = self.next_client
            self.next_client += 1
            self.clients.append(conn)
            self.handle(Accepted(conn, "main"))

    def close_all(self) -> None:
        for _ in range(64):  # a retry may open another server connection: close it too
            if not self.clients and not self.servers:
                break
            for conn in [*self.clients, *self.servers]:
                self.forget(conn)
                self.handle(Closed(conn))
        self.now += 1000.0
        self.handle(TimePassed())


def _pick(conns: list[int], byte: int) -> int | None:
    return conns[byte % len(conns)] if conns else None


def harness(data: bytes) -> None:
    if not data:
        return
    run = _Run(data[0])
    run.accept()
    at = 1
    while at < len(data):
        op = data[at] % 9
        arg = data[at + 1] if at + 1 < len(data) else 0
        at += 2
        if op in (0, 1):  # bytes from a client (0) or a server (1): arg bytes of them
            chunk = data[at : at + arg]
            at += arg
            conn = _pick(run.clients if op == 0 else run.servers, data[at - arg - 2] >> 4)
            if conn is not None:
                run.handle(DataReceived(conn, chunk))
        elif op in (2, 3):
            conn = _pick(run.servers, arg)
            if conn is not None:
                run.handle(UpstreamConnected(conn) if op == 2 else UpstreamConnectFailed(conn))
        elif op in (4, 5):
            conn = _pick([*run.clients, *run.servers], arg)
            if conn is not None:
                if op == 5:
                    run.forget(conn)
                run.handle(EofReceived(conn) if op == 4 else Closed(conn))
        elif op == 6:
            run.accept()
        elif op == 7:
            run.now += arg / 16
            run.handle(TimePassed())
        else:
            conn = _pick([*run.clients, *run.servers], arg)
            if conn is not None:
                run.handle(WriteBufferHigh(conn) if arg & 1 else WriteBufferLow(conn))
    run.close_all()
    if run.proxy.connection_count() or run.proxy.request_count():
        raise Finding(
            f"left behind: {run.proxy.connection_count()} connections, "
            f"{run.proxy.request_count()} requests"
        )


def _program(codec: int, request: bytes, response: bytes) -> bytes:
    """A client sends ``request``, the server connects and answers with ``response``."""
    out = bytes([codec])
    for at in range(0, len(request), 255):
        piece = request[at : at + 255]
        out += bytes([0, len(piece)]) + piece
    out += bytes([2, 0])
    for at in range(0, len(response), 255):
        piece = response[at : at + 255]
        out += bytes([1, len(piece)]) + piece
    return out + bytes([7, 200, 5, 0])


def _resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def seeds() -> list[bytes]:
    dubbo = vectors("dubbo", ("request",))[:2] + vectors("dubbo", ("response",))[:2]
    thrift = vectors("thrift", ("request",))[:2] + vectors("thrift", ("response",))[:2]
    trpc = [
        *vectors("trpc", ("request",))[:1],
        *vectors("trpc", ("response",))[:1],
        *vectors("trpc", ("client-to-server",))[:1],
        *vectors("trpc", ("server-to-client",))[:1],
    ]
    return [
        _program(0, build_frame(1, 1, {"method": "a"}, b"x"), build_frame(2, 1, {}, b"ok")),
        _program(0, build_frame(1, 1, {"method": "b"}), build_frame(2, 1)),
        _program(1, _resp(b"GET", b"k") * 2, b"$1\r\nv\r\n$-1\r\n"),
        _program(2, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n"),
        _program(2, b"GET /b HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        _program(3, dubbo[0], dubbo[2]),
        _program(3, dubbo[1], dubbo[3]),
        _program(4, thrift[0], thrift[2]),
        _program(4, thrift[1], thrift[3]),
        _program(5, trpc[0], trpc[1]),
        _program(5, trpc[2], trpc[3]),
    ]
