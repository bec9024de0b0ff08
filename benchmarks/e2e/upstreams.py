"""Tiny canned Thrift and Dubbo servers for the end-to-end benchmark (uvloop when present).

``python benchmarks/e2e/upstreams.py thrift|dubbo --port N``. Each request frame gets a
canned success reply carrying the request's own id (Thrift seqid, Dubbo request id); nothing
else of the request is parsed, so the server costs as little CPU as a Python server can and
the benchmark measures the proxy. Thrift: framed transport, strict binary protocol. Dubbo:
Hessian2 response flag 1 (RESPONSE_VALUE) with a short string.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
from typing import cast

__all__ = ["DubboServer", "ThriftServer", "dubbo_reply", "main", "thrift_reply"]

_U32 = struct.Struct(">I")
# A Thrift result struct: field 0 (success), type STRING, "ok", then STOP.
_THRIFT_RESULT = b"\x0b\x00\x00" + _U32.pack(2) + b"ok" + b"\x00"
# Dubbo response body (Hessian2): int 1 (RESPONSE_VALUE) then the string "ok".
_DUBBO_BODY = b"\x91\x02ok"


def thrift_reply(frame: bytes) -> bytes:
    """The REPLY frame for one framed strict-binary CALL frame (length prefix included)."""
    name_len = _U32.unpack_from(frame, 8)[0]
    end = 12 + name_len + 4  # name, then the 4-byte seqid
    message = b"\x80\x01\x00\x02" + frame[8:end] + _THRIFT_RESULT
    return _U32.pack(len(message)) + message


def dubbo_reply(header: bytes) -> bytes:
    """A status-20 response to the request whose 16-byte header is given."""
    return b"\xda\xbb\x02\x14" + header[4:12] + _U32.pack(len(_DUBBO_BODY)) + _DUBBO_BODY


class _Server(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.get_extra_info("socket").setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
        )

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        replies = self.answer()
        if replies:
            assert self.transport is not None
            self.transport.write(b"".join(replies))

    def answer(self) -> list[bytes]:
        raise NotImplementedError


class ThriftServer(_Server):
    def answer(self) -> list[bytes]:
        buf, out = self.buffer, []
        while len(buf) >= 4:
            size = 4 + _U32.unpack_from(buf, 0)[0]
            if len(buf) < size:
                break
            out.append(thrift_reply(bytes(buf[:size])))
            del buf[:size]
        return out


class DubboServer(_Server):
    def answer(self) -> list[bytes]:
        buf, out = self.buffer, []
        while len(buf) >= 16:
            size = 16 + _U32.unpack_from(buf, 12)[0]
            if len(buf) < size:
                break
            if buf[2] & 0x40:  # two-way: answer it
                out.append(dubbo_reply(bytes(buf[:16])))
            del buf[:size]
        return out


async def _serve(kind: str, host: str, port: int) -> None:
    factory = ThriftServer if kind == "thrift" else DubboServer
    server = await asyncio.get_running_loop().create_server(factory, host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("thrift", "dubbo"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(args.kind, args.host, args.port))
    else:
        uvloop.run(_serve(args.kind, args.host, args.port))


if __name__ == "__main__":
    main()
