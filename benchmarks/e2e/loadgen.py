"""Closed-loop Thrift / Dubbo load generator: N connections, one request in flight on each.

``python benchmarks/e2e/loadgen.py thrift|dubbo --target 127.0.0.1:9090 --conns 50
--requests 20000``; prints one JSON line: requests, errors, seconds, rps, p50_ms, p99_ms.
Frames are pre-built once and only the id bytes are patched per request, so every request
in flight has a distinct id (Thrift seqid, Dubbo request id) and each reply is checked to
carry the id that was sent. Runs on uvloop when it is installed (less client CPU on a
2-core machine where client, proxy and server share the cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import struct
import time
from functools import partial
from typing import cast

__all__ = ["DUBBO_REQUEST", "THRIFT_REQUEST", "main"]

_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U64 = struct.Struct(">Q")

# A real Dubbo 2.0.2 Hessian2 request (UserService.login(String, String), captured from a
# Java consumer; dubbo-000 of the shared wire vectors, also used by benchmarks/codecs.py).
DUBBO_REQUEST = bytes.fromhex(
    "dabbc2000000000000005958000000f805322e302e321b6d792e64656d6f2e736572766963652e5573657253"
    "65727669636505302e302e30056c6f67696e30244c6a6176612f6c616e672f537472696e673b4c6a617661"
    "2f6c616e672f537472696e673b0b3133373830343037363037067833235539264804706174681b6d792e64"
    "656d6f2e736572766963652e55736572536572766963651272656d6f74652e6170706c69636174696f6e08"
    "73686f702d776562057377382d78013003737738000f7377382d636f7272656c6174696f6e0009696e7465"
    "72666163651b6d792e64656d6f2e736572766963652e55736572536572766963650776657273696f6e0530"
    "2e302e305a"
)
DUBBO_INTERFACE = "my.demo.service.UserService"


def _thrift_call(method: bytes) -> bytes:
    # Strict binary CALL: version|type, name, seqid 0, args {1: string "user-42"}, STOP.
    args = b"\x0b\x00\x01" + _U32.pack(7) + b"user-42" + b"\x00"
    message = b"\x80\x01\x00\x01" + _U32.pack(len(method)) + method + _I32.pack(0) + args
    return _U32.pack(len(message)) + message


THRIFT_METHOD = "getUser"
THRIFT_REQUEST = _thrift_call(THRIFT_METHOD.encode())
_THRIFT_SEQID_AT = 12 + len(THRIFT_METHOD)


class _Client(asyncio.Protocol):
    """One connection; sends the next request when the previous reply is in."""

    def __init__(self, bench: _Bench, index: int) -> None:
        self.bench = bench
        self.base = index << 24  # distinct id ranges per connection
        self.seq = 0
        self.sent_at = 0
        self.expect = 0
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.get_extra_info("socket").setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
        )

    def send_next(self) -> None:
        bench = self.bench
        if bench.issued >= bench.total:
            if not self.done.done():
                self.done.set_result(None)
            return
        bench.issued += 1
        self.seq = (self.seq + 1) & 0xFFFFFF
        self.expect = self.base | self.seq
        frame = bench.frame
        frame[bench.id_at : bench.id_at + bench.id_size] = bench.id_pack(self.expect)
        self.sent_at = time.perf_counter_ns()
        assert self.transport is not None
        self.transport.write(bytes(frame))

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        bench = self.bench
        while len(buf) >= bench.header:
            size = bench.frame_size(buf)
            if len(buf) < size:
                return
            got = bench.reply_id(buf)
            del buf[:size]
            bench.latencies.append(time.perf_counter_ns() - self.sent_at)
            if got != self.expect:
                bench.errors += 1
            self.send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)
            if self.bench.issued < self.bench.total:
                self.bench.errors += 1


class _Bench:
    def __init__(self, kind: str, total: int) -> None:
        self.total = total
        self.issued = 0
        self.errors = 0
        self.latencies: list[int] = []
        if kind == "thrift":
            self.frame = bytearray(THRIFT_REQUEST)
            self.id_at, self.id_size, self.id_pack = _THRIFT_SEQID_AT, 4, _U32.pack
            self.header = 4
        else:
            self.frame = bytearray(DUBBO_REQUEST)
            self.id_at, self.id_size, self.id_pack = 4, 8, _U64.pack
            self.header = 16
        self.kind = kind

    def frame_size(self, buf: bytearray) -> int:
        if self.kind == "thrift":
            return 4 + int(_U32.unpack_from(buf, 0)[0])
        return 16 + int(_U32.unpack_from(buf, 12)[0])

    def reply_id(self, buf: bytearray) -> int:
        if self.kind == "thrift":
            name_len = _U32.unpack_from(buf, 8)[0]
            return int(_U32.unpack_from(buf, 12 + name_len)[0])
        return int(_U64.unpack_from(buf, 4)[0])


async def run(kind: str, host: str, port: int, conns: int, total: int) -> dict[str, float]:
    """Drive ``total`` requests over ``conns`` connections; returns the summary numbers."""
    loop = asyncio.get_running_loop()
    bench = _Bench(kind, total)
    clients: list[_Client] = []
    for i in range(conns):
        _, client = await loop.create_connection(partial(_Client, bench, i + 1), host, port)
        clients.append(client)
    start = time.perf_counter()
    for client in clients:
        client.send_next()
    await asyncio.wait_for(asyncio.gather(*(c.done for c in clients)), timeout=120)
    seconds = time.perf_counter() - start
    for client in clients:
        assert client.transport is not None
        client.transport.close()
    lat = sorted(bench.latencies)
    n = len(lat)

    def pct(p: float) -> float:
        return lat[min(n - 1, int(p * n))] / 1e6 if n else 0.0

    return {
        "requests": float(n),
        "errors": float(bench.errors),
        "seconds": seconds,
        "rps": n / seconds if seconds else 0.0,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("thrift", "dubbo"))
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--conns", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    coro = run(args.kind, host, int(port), args.conns, args.requests)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(coro)
    else:
        result = uvloop.run(coro)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
