"""A tRPC echo server and client on plain sockets, for the end-to-end tests.

No tRPC library exists for Python here, so both peers are written from the frame layout of
trpc-group/trpc (docs/protocol_design.md: a 16-byte fixed header, then the protobuf header or
stream meta) with google.protobuf and the official message definitions
(tests/codecs/trpc_proto.py). They never import the codec under test; the golden vectors
check the frames they build (tests/e2e/test_trpc.py).

The server answers a unary call with ``<name>:<body>`` (and ``server: <name>`` in trans_info),
ignores oneway calls, answers a stream INIT, echoes each DATA frame, sends a FEEDBACK window
update every ``FEEDBACK_EVERY`` frames it receives, and closes a stream when the client closes
its side, or by itself after ``SERVER_CLOSE_AFTER`` frames when the func ends in
``/ServerClose``.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.codecs import trpc_proto as pb

__all__ = [
    "FEEDBACK_EVERY",
    "SERVER_CLOSE_AFTER",
    "Frame",
    "TrpcClient",
    "TrpcEchoServer",
    "close_frame",
    "data_frame",
    "feedback_frame",
    "init_frame",
    "request_frame",
    "response_frame",
]

MAGIC = 0x0930
HEADER = struct.Struct(">HBBIHIH")  # magic, data frame type, stream frame type, total size,
# pb header size, stream id, reserved
UNARY, STREAM = 0, 1
INIT, DATA, FEEDBACK, CLOSE = 1, 2, 3, 4
FEEDBACK_EVERY = 100
SERVER_CLOSE_AFTER = 1000


def _frame(data_type: int, stream_type: int, stream_id: int, header: bytes, body: bytes) -> bytes:
    total = HEADER.size + len(header) + len(body)
    fixed = HEADER.pack(MAGIC, data_type, stream_type, total, len(header), stream_id, 0)
    return fixed + header + body


def request_frame(
    request_id: int,
    func: str,
    body: bytes = b"",
    *,
    caller: str = "",
    callee: str = "",
    timeout: int = 0,
    oneway: bool = False,
    trans_info: Mapping[str, bytes] | None = None,
) -> bytes:
    header = pb.RequestProtocol(
        request_id=request_id, timeout=timeout, caller=caller.encode(), callee=callee.encode(),
        func=func.encode(), call_type=1 if oneway else 0,
    )  # fmt: skip
    for key, value in (trans_info or {}).items():
        header.trans_info[key] = value
    return _frame(UNARY, 0, 0, header.SerializeToString(), body)


def response_frame(request_id: int, body: bytes = b"", **fields: Any) -> bytes:
    trans_info = fields.pop("trans_info", {})
    header = pb.ResponseProtocol(request_id=request_id, **fields)
    for key, value in trans_info.items():
        header.trans_info[key] = value
    return _frame(UNARY, 0, 0, header.SerializeToString(), body)


def init_frame(
    stream_id: int,
    func: str = "",
    *,
    caller: str = "",
    trans_info: Mapping[str, bytes] | None = None,
    window: int = 0,
    ret: int | None = None,
) -> bytes:
    """A client's INIT (``func``) or, with ``ret``, a server's answer to one."""
    meta = pb.InitMeta(init_window_size=window)
    if ret is None:
        meta.request_meta.caller = caller.encode()
        meta.request_meta.func = func.encode()
        for key, value in (trans_info or {}).items():
            meta.request_meta.trans_info[key] = value
    else:
        meta.response_meta.SetInParent()
        meta.response_meta.ret = ret
    return _frame(STREAM, INIT, stream_id, b"", meta.SerializeToString())


def data_frame(stream_id: int, payload: bytes) -> bytes:
    return _frame(STREAM, DATA, stream_id, b"", payload)


def feedback_frame(stream_id: int, increment: int) -> bytes:
    meta = pb.FeedBackMeta(window_size_increment=increment)
    return _frame(STREAM, FEEDBACK, stream_id, b"", meta.SerializeToString())


def close_frame(stream_id: int, *, reset: bool = False, ret: int = 0, msg: str = "") -> bytes:
    meta = pb.CloseMeta(close_type=1 if reset else 0, ret=ret, msg=msg.encode())
    return _frame(STREAM, CLOSE, stream_id, b"", meta.SerializeToString())


@dataclass
class Frame:
    data_type: int
    stream_type: int
    stream_id: int
    header: bytes
    body: bytes

    def response(self) -> Any:
        message = pb.ResponseProtocol()
        message.ParseFromString(self.header)
        return message

    def request(self) -> Any:
        message = pb.RequestProtocol()
        message.ParseFromString(self.header)
        return message

    def meta(self, kind: Any) -> Any:
        message = kind()
        message.ParseFromString(self.body)
        return message


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 16))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket) -> Frame | None:
    """One frame from ``sock``, or None at end of stream."""
    head = _recv_exact(sock, HEADER.size)
    if head is None:
        return None
    magic, data_type, stream_type, total, header_size, stream_id, _ = HEADER.unpack(head)
    assert magic == MAGIC, f"bad magic {magic:#x}"
    rest = _recv_exact(sock, total - HEADER.size)
    assert rest is not None, "connection closed inside a frame"
    return Frame(data_type, stream_type, stream_id, rest[:header_size], rest[header_size:])


@dataclass
class _Stream:
    func: str
    received: int = 0


@dataclass
class TrpcEchoServer:
    """The echo server; ``inits`` records every stream INIT's request meta it received."""

    name: str
    port: int = 0
    oneway: int = 0
    feedback: int = 0
    inits: list[Any] = field(default_factory=list)
    client_closes: list[Any] = field(default_factory=list)
    _sock: socket.socket | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def serve(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        streams: dict[int, _Stream] = {}
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                try:
                    frame = read_frame(conn)
                except OSError:
                    return
                if frame is None:
                    return
                out = self._answer(frame, streams)
                if out:
                    try:
                        conn.sendall(out)
                    except OSError:
                        return

    def _answer(self, frame: Frame, streams: dict[int, _Stream]) -> bytes:
        sid = frame.stream_id
        if frame.data_type == UNARY:
            request = frame.request()
            if request.call_type == 1:
                with self._lock:
                    self.oneway += 1
                return b""
            body = self.name.encode() + b":" + frame.body
            return response_frame(
                request.request_id, body, trans_info={"server": self.name.encode()}
            )
        if frame.stream_type == INIT:
            meta = frame.meta(pb.InitMeta)
            with self._lock:
                self.inits.append(meta.request_meta)
            streams[sid] = _Stream(meta.request_meta.func.decode())
            return init_frame(sid, ret=0, window=65536)
        stream = streams.get(sid)
        if stream is None:
            return b""  # a frame for a stream this connection does not have (any more)
        if frame.stream_type == DATA:
            stream.received += 1
            out = data_frame(sid, frame.body)
            if stream.received % FEEDBACK_EVERY == 0:
                out += feedback_frame(sid, FEEDBACK_EVERY * 64)
            if stream.func.endswith("/ServerClose") and stream.received == SERVER_CLOSE_AFTER:
                del streams[sid]
                out += close_frame(sid)
            return out
        if frame.stream_type == FEEDBACK:
            frame.meta(pb.FeedBackMeta)
            with self._lock:
                self.feedback += 1
            return b""
        assert frame.stream_type == CLOSE
        meta = frame.meta(pb.CloseMeta)
        with self._lock:
            self.client_closes.append(meta)
        del streams[sid]
        return b"" if meta.close_type == 1 else close_frame(sid)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
            self._sock.close()


@contextlib.contextmanager
def echo_server(name: str) -> Iterator[TrpcEchoServer]:
    server = TrpcEchoServer(name)
    sock = socket.create_server(("127.0.0.1", 0))
    # Set before the thread starts: a test that ends at once must still close the socket.
    server._sock, server.port = sock, sock.getsockname()[1]
    thread = threading.Thread(target=server.serve, args=(sock,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.close()
        thread.join(timeout=5)


class TrpcClient:
    """A blocking tRPC client connection: write frames, read frames."""

    def __init__(self, port: int, timeout: float) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> Frame:
        frame = read_frame(self.sock)
        assert frame is not None, "the proxy closed the connection"
        return frame

    def close(self) -> None:
        self.sock.close()
