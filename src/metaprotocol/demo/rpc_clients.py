"""The demo's Dubbo and Thrift traffic: real frames through the proxy, answers checked.

Dubbo requests are Hessian2 frames built with the dubbo codec's own helpers and sent over
an asyncio stream (the demo's event loop also runs the proxy). Thrift uses a thriftpy2
client (framed, binary); it blocks, so the demo runs it in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any

from metaprotocol.codecs.dubbo import DubboCodec
from metaprotocol.codecs.dubbo.header import (
    FLAG_EVENT,
    FLAG_REQUEST,
    FLAG_TWO_WAY,
    HEADER_SIZE,
    SERIALIZATION_HESSIAN2,
    STATUS_OK,
    STATUS_SERVICE_NOT_FOUND,
    build_header,
    parse_header,
)
from metaprotocol.codecs.dubbo.hessian2 import (
    ReadContext,
    read_int,
    read_string,
    read_value,
    write_string,
    write_string_map,
    write_value,
)
from metaprotocol.core.codec import Side
from metaprotocol.core.message import NEED_DATA, Message
from metaprotocol.demo.report import CodecResult
from metaprotocol.samples.dubbo_provider import ECHO, GREETINGS

if TYPE_CHECKING:
    from metaprotocol.samples.thrift_server import ThriftServer

__all__ = ["DubboClient", "DubboReply", "drive_dubbo", "drive_thrift"]

TIMEOUT = 5.0  # seconds any single reply may take
ROUNDS = 5  # requests per Dubbo route / Thrift method
_REQUEST = FLAG_REQUEST | FLAG_TWO_WAY | SERIALIZATION_HESSIAN2
_HEARTBEAT = _REQUEST | FLAG_EVENT


class DubboReply:
    """A decoded Dubbo response: status, and the value or the error message."""

    def __init__(self, message: Message) -> None:
        frame = message.frame
        header = parse_header(frame)
        self.request_id = header.request_id
        self.status = header.status
        self.event = bool(header.flag & FLAG_EVENT)
        self.value: Any = None
        self.error: str | None = None
        end = len(frame)
        if self.event or end == HEADER_SIZE:
            return
        if self.status != STATUS_OK:
            self.error, _ = read_string(frame, HEADER_SIZE, end)
            return
        flag, pos = read_int(frame, HEADER_SIZE, end)
        if flag in (1, 4):
            self.value, _ = read_value(frame, pos, end, ReadContext())
        elif flag in (0, 3):
            error, _ = read_value(frame, pos, end, ReadContext())
            self.error = f"exception: {error!r}"


class DubboClient:
    """One connection, one request at a time (so each round trip can be timed)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._codec = DubboCodec(Side.UPSTREAM, {}, 8 << 20)
        self._buffer = bytearray()
        self._next_id = 1

    @classmethod
    async def connect(cls, host: str, port: int) -> DubboClient:
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def call(
        self, service: str, version: str, method: str, desc: str, *args: Any
    ) -> DubboReply:
        """Invoke ``service:version`` ``method`` (JVM descriptor ``desc``) and await the reply."""
        body = b"".join(write_string(s) for s in ("2.0.2", service, version, method, desc))
        body += b"".join(write_value(a) for a in args)
        body += write_string_map({"path": service, "interface": service, "version": version})
        return await self._exchange(_REQUEST, body)

    async def heartbeat(self) -> DubboReply:
        return await self._exchange(_HEARTBEAT, b"N")  # the event body is a Hessian2 null

    async def _exchange(self, flag: int, body: bytes) -> DubboReply:
        request_id = self._next_id
        self._next_id += 1
        self._writer.write(build_header(flag, 0, request_id, len(body)) + body)
        async with asyncio.timeout(TIMEOUT):
            await self._writer.drain()
            while True:
                message = self._codec.decode(self._buffer)
                if message is not NEED_DATA:
                    assert isinstance(message, Message)
                    reply = DubboReply(message)
                    if reply.request_id != request_id:
                        raise RuntimeError(
                            f"reply for request id {reply.request_id}, expected {request_id}"
                        )
                    return reply
                data = await self._reader.read(65536)
                if not data:
                    raise ConnectionError("the proxy closed the Dubbo connection")
                self._buffer += data

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


async def drive_dubbo(result: CodecResult, host: str, port: int) -> None:
    """Greetings v1 and v2 (routed by version), echo, a heartbeat, and an unrouted service."""
    client = await DubboClient.connect(host, port)
    try:
        string = "Ljava/lang/String;"
        cases = [
            ("1.0.0", GREETINGS, "sayHi", "alice", "hi, alice"),
            ("2.0.0", GREETINGS, "sayHi", "alice", "hello alice, from v2"),
            ("", ECHO, "echo", "ping", "ping"),
        ]
        for version, service, method, arg, want in cases:
            for _ in range(ROUNDS):
                with result.timed():
                    reply = await client.call(service, version, method, string, arg)
                if result.check(
                    reply.status == STATUS_OK and reply.value == want,
                    f"{service.rsplit('.', 1)[-1]}:{version or '-'} {method}: status "
                    f"{reply.status}, value {reply.value!r}, error {reply.error!r}; "
                    f"expected {want!r}",
                ):
                    result.ok += 1
            if version:
                result.note(f"version {version}", f"{method}({arg!r}) -> {want!r}")

        with result.timed():
            beat = await client.heartbeat()
        if result.check(
            beat.event and beat.status == STATUS_OK,
            f"heartbeat: expected an event reply with status 20, got flag event={beat.event} "
            f"status {beat.status}",
        ):
            result.ok += 1
            result.note("heartbeat", "answered by the proxy itself (never sent upstream)")

        missing = "org.apache.dubbo.samples.api.MissingService"
        with result.timed():
            reply = await client.call(missing, "1.0.0", "find", string, "x")
        if result.check(
            reply.status == STATUS_SERVICE_NOT_FOUND,
            f"{missing}: expected status 60 SERVICE_NOT_FOUND from the proxy, got "
            f"{reply.status} ({reply.error!r})",
        ):
            result.expect_error("no route -> status 60 SERVICE_NOT_FOUND")
    finally:
        await client.aclose()


def drive_thrift(result: CodecResult, host: str, port: int, server_a: ThriftServer) -> None:
    """Calculator calls routed by method (``whoami`` to thrift-b, the rest to thrift-a),
    a declared exception, and a oneway call (blocking: run it in a thread). Needs
    thriftpy2 (the ``demo`` extra)."""
    from thriftpy2.protocol import TBinaryProtocolFactory
    from thriftpy2.rpc import make_client
    from thriftpy2.transport import TFramedTransportFactory

    from metaprotocol.samples.thrift_server import calculator

    binary: Any = TBinaryProtocolFactory  # thriftpy2 is untyped
    framed: Any = TFramedTransportFactory
    client: Any = make_client(
        calculator.Calculator,
        host,
        port,
        proto_factory=binary(),
        trans_factory=framed(),
        timeout=int(TIMEOUT * 1000),
    )
    try:
        calls: list[tuple[str, Any, Any]] = [
            ("ping", lambda: client.ping(), None),
            ("add", lambda: client.add(20, 22), 42),
            ("echo", lambda: client.echo("héllo"), "héllo"),
            ("whoami", lambda: client.whoami(), "thrift-b"),
        ]
        for method, call, want in calls:
            for _ in range(ROUNDS):
                with result.timed():
                    got = call()
                if result.check(got == want, f"{method}: got {got!r}, expected {want!r}"):
                    result.ok += 1
        result.note("by method", "whoami() answered by 'thrift-b'; ping/add/echo by 'thrift-a'")

        with result.timed():
            try:
                client.divide(1, 0)
            except calculator.DivideByZero:
                result.expect_error("divide(1, 0) -> declared DivideByZero from the server")
            else:
                result.check(False, "divide(1, 0): expected DivideByZero, got a value")

        client.zip("sent one-way")
        if result.check(
            _wait_for(lambda: "sent one-way" in server_a.handler.zipped, TIMEOUT),
            "oneway zip(): thrift-a never received it",
        ):
            result.ok += 1
            result.note("oneway", "zip() reached thrift-a; no reply expected, none sent")
    finally:
        client.close()


def _wait_for(condition: Any, timeout: float) -> bool:
    """Poll ``condition`` (a server thread updates it) until true or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    event = threading.Event()
    while not condition():
        if time.monotonic() >= deadline:
            return False
        event.wait(0.01)
    return True
