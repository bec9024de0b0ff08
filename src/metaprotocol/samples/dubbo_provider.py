"""A small asyncio Dubbo provider (Hessian2) for the demo and the end-to-end tests.

Services (interface, version -> methods):

- ``org.apache.dubbo.samples.api.GreetingsService`` 1.0.0: ``sayHi(String)`` returns
  ``"hi, NAME"``; ``sayHiSlowly(String, int millis)`` answers after ``millis``.
- the same interface, version 2.0.0: ``sayHi(String)`` returns ``"hello NAME, from v2"``
  (so routing by version is visible), ``sayHiSlowly`` likewise.
- ``org.apache.dubbo.samples.api.EchoService`` (any version): ``echo(x)`` returns its
  argument; ``attachments()`` returns the request's attachments map (to see mutations).

Two-way heartbeats are answered; one-way requests get no answer; an unknown
service or method gets status 70 SERVICE_ERROR with a message. Responses carry
attachments (flag 4) only for clients whose dubbo version is 2.0.2..2.0.99, as
Java Dubbo does. Run it with ``python -m metaprotocol.samples.dubbo_provider
--port N`` or ``await serve(host, port)``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from metaprotocol.codecs.dubbo import DubboCodec
from metaprotocol.codecs.dubbo.body import parse_request
from metaprotocol.codecs.dubbo.header import (
    SERIALIZATION_HESSIAN2,
    STATUS_BAD_REQUEST,
    STATUS_OK,
    STATUS_SERVICE_ERROR,
    build_header,
)
from metaprotocol.codecs.dubbo.hessian2 import (
    Hessian2Error,
    write_int,
    write_string,
    write_string_map,
    write_value,
)
from metaprotocol.core.codec import Side
from metaprotocol.core.message import NEED_DATA, MessageType, ProtocolError

__all__ = ["ECHO", "GREETINGS", "main", "serve"]

GREETINGS = "org.apache.dubbo.samples.api.GreetingsService"
ECHO = "org.apache.dubbo.samples.api.EchoService"

_RESPONSE_VALUE = 1
_RESPONSE_NULL_VALUE = 2
_RESPONSE_VALUE_WITH_ATTACHMENTS = 4


def _supports_response_attachments(dubbo_version: str | None) -> bool:
    """Java's Version.isSupportResponseAttachment: protocol versions 2.0.2 to 2.0.99."""
    try:
        parts = tuple(int(p) for p in (dubbo_version or "").split("."))
    except ValueError:
        return False
    return (2, 0, 2) <= parts[:3] <= (2, 0, 99)


def _reply(request_id: int, status: int, body: bytes) -> bytes:
    return build_header(SERIALIZATION_HESSIAN2, status, request_id, len(body)) + body


class _ProviderProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self._codec = DubboCodec(Side.DOWNSTREAM, {}, 8 << 20)
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self._tasks:
            task.cancel()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._transport is not None:
            try:
                message = self._codec.decode(self._buffer)
            except ProtocolError as exc:
                reply = self._codec.encode_error(None, exc.error_type, str(exc))
                if reply is not None:
                    self._transport.write(reply)
                if exc.fatal:
                    self._transport.close()
                    return
                continue
            if message is NEED_DATA:
                return
            if message.type is MessageType.HEARTBEAT:
                reply = self._codec.encode_heartbeat_reply(message)
                if reply is not None:
                    self._transport.write(reply)
            elif message.type in (MessageType.REQUEST, MessageType.ONEWAY):
                task = asyncio.ensure_future(self._answer(message.frame, message.type))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _answer(self, frame: bytes, kind: MessageType) -> None:
        request_id = int.from_bytes(frame[4:12], "big")
        if frame[2] & 0x1F != SERIALIZATION_HESSIAN2:
            reply = _reply(request_id, STATUS_BAD_REQUEST, write_string("only Hessian2 here"))
        else:
            try:
                reply = await _invoke(frame, request_id)
            except Hessian2Error as exc:
                reply = _reply(request_id, STATUS_BAD_REQUEST, write_string(str(exc)))
        if kind is MessageType.REQUEST and self._transport is not None:
            self._transport.write(reply)


async def _invoke(frame: bytes, request_id: int) -> bytes:
    request = parse_request(frame)
    service, version, method, args = request.service, request.version, request.method, request.args
    result: Any
    if service == GREETINGS and version in ("1.0.0", "2.0.0") and method in _GREETING_METHODS:
        if method == "sayHiSlowly" and len(args) == 2 and isinstance(args[1], int):
            await asyncio.sleep(max(0, args[1]) / 1000)
        name = args[0] if args else None
        result = f"hi, {name}" if version == "1.0.0" else f"hello {name}, from v2"
    elif service == ECHO and method == "echo" and len(args) == 1:
        result = args[0]
    elif service == ECHO and method == "attachments":
        result = {str(k): v for k, v in request.attachments.items()}
    else:
        message = f"Not found exported service: {service}:{version} method {method}"
        return _reply(request_id, STATUS_SERVICE_ERROR, write_string(message))
    try:
        value = write_value(result)
    except TypeError:
        value = write_string(repr(result))
    if _supports_response_attachments(request.dubbo_version):
        flag = _RESPONSE_VALUE_WITH_ATTACHMENTS
        tail = write_string_map({"dubbo": "2.0.2", "provider": "metaprotocol-sample"})
    else:
        flag, tail = (_RESPONSE_NULL_VALUE, b"") if result is None else (_RESPONSE_VALUE, b"")
        value = b"" if result is None else value
    if flag == _RESPONSE_VALUE_WITH_ATTACHMENTS and result is None:
        flag, value = 5, b""
    return _reply(request_id, STATUS_OK, write_int(flag) + value + tail)


_GREETING_METHODS = frozenset({"sayHi", "sayHiSlowly"})


async def serve(host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
    """Start the provider; ``port=0`` picks a free port (see ``server.sockets``)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(_ProviderProtocol, host, port)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=20880)
    options = parser.parse_args(argv)

    async def run() -> None:
        server = await serve(options.host, options.port)
        address = server.sockets[0].getsockname()
        print(f"dubbo sample provider listening on {address[0]}:{address[1]}", flush=True)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
