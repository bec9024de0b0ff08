"""Parse time per byte, from 1 KiB to max_message_size, for each codec's worst-case input.

Run ``python benchmarks/parse_scaling.py [--max 8MiB] [--case NAME ...]``. Each case builds
one message of the given size out of the smallest elements its codec walks (header lines,
chunks, RESP elements, Hessian2 map entries, Thrift structs), feeds it to a fresh codec in
64 KiB reads (as an adapter does) and times the decode calls in CPU time of the thread
(``time.thread_time``: wall-clock time on a busy machine mostly measures the scheduler).
A flat ``ns/byte`` column means the work is linear in the bytes read: no single
message can hold the event loop for longer than its size says. HTTP runs with
``max_header_count`` / ``max_header_size`` raised to the message size, to time the parser
itself (with the defaults a head over 100 fields or 60 KiB is refused with 431 before it
is parsed). Prints a Markdown table (docs/benchmarks.md keeps a run).
"""

from __future__ import annotations

import argparse
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from metaprotocol.codecs.dubbo import DubboCodec
from metaprotocol.codecs.dubbo.header import build_header
from metaprotocol.codecs.dubbo.hessian2 import write_int, write_string, write_string_map
from metaprotocol.codecs.http1 import Http1Codec
from metaprotocol.codecs.redis import RedisCodec
from metaprotocol.codecs.thrift import ThriftCodec
from metaprotocol.configfile import parse_size
from metaprotocol.core.codec import Side
from metaprotocol.core.message import NEED_DATA, Message

READ = 64 * 1024
SIZES = (1 << 10, 16 << 10, 256 << 10, 1 << 20, 8 << 20)


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[int], bytes]  # a message of about this many bytes
    codec: Callable[[int], Any]  # a fresh codec for a message of this size


def _repeat_to(size: int, head: bytes, unit: bytes, tail: bytes) -> tuple[int, bytes]:
    count = max(1, (size - len(head) - len(tail)) // len(unit))
    return count, head + unit * count + tail


# -- HTTP/1.1 ---------------------------------------------------------------------------------


def http_headers(size: int) -> bytes:
    """One request whose head is all ``a: b`` lines (one repeated name: the join case)."""
    return _repeat_to(size, b"GET / HTTP/1.1\r\nHost: h\r\n", b"a: b\r\n", b"\r\n")[1]


def http_chunks(size: int) -> bytes:
    """One request whose body is all one-byte chunks."""
    head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    return _repeat_to(size, head, b"1\r\na\r\n", b"0\r\n\r\n")[1]


def http_codec(size: int) -> Http1Codec:
    options = {"max_header_count": size, "max_header_size": size}
    return Http1Codec(Side.DOWNSTREAM, options, size + 1024)


# -- Redis ------------------------------------------------------------------------------------


def redis_request(size: int) -> bytes:
    """One command of many one-byte arguments."""
    count = max(1, (size - 16) // 7)
    return b"*%d\r\n$3\r\nSET" % (count + 1) + b"\r\n" + b"$1\r\na\r\n" * count


def redis_reply(size: int) -> bytes:
    """One array reply of many small integers."""
    count = max(1, (size - 16) // 4)
    return b"*%d\r\n" % count + b":1\r\n" * count


def redis_deep_reply(size: int) -> bytes:
    """One array of arrays each nested 60 deep."""
    element = b"*1\r\n" * 60 + b":1\r\n"
    count = max(1, (size - 16) // len(element))
    return b"*%d\r\n" % count + element * count


def redis_down(size: int) -> RedisCodec:
    return RedisCodec(Side.DOWNSTREAM, {}, size + 1024)


def redis_up(size: int) -> RedisCodec:
    return RedisCodec(Side.UPSTREAM, {}, size + 1024)


# -- Dubbo (Hessian2) -------------------------------------------------------------------------


def _dubbo_request(argument: bytes) -> bytes:
    body = b"".join(
        [
            write_string("2.0.2"),
            write_string("org.example.Service"),
            write_string("1.0.0"),
            write_string("call"),
            write_string("Ljava/util/Map;"),
            argument,
            write_string_map({"path": "org.example.Service", "group": "a"}),
        ]
    )
    return build_header(0xC2, 0, 1, len(body)) + body


def dubbo_large_map(size: int) -> bytes:
    """A request whose argument is one untyped map of many small int -> int entries."""
    entry = write_int(7) + write_int(1)
    count = max(1, (size - 120) // len(entry))
    return _dubbo_request(b"H" + entry * count + b"Z")


def dubbo_deep_maps(size: int) -> bytes:
    """A request whose argument is a list of maps each nested 60 deep."""
    deep = b"H\x01a" * 60 + b"\x90" + b"Z" * 60
    count = max(1, (size - 120) // len(deep))
    return _dubbo_request(b"X" + write_int(count) + deep * count)


def dubbo_codec(size: int) -> DubboCodec:
    return DubboCodec(Side.DOWNSTREAM, {}, size + 1024)


# -- Thrift -----------------------------------------------------------------------------------


def thrift_binary_structs(size: int) -> bytes:
    """An unframed strict binary CALL whose argument is a list of many one-field structs."""
    element = b"\x08\x00\x01" + struct.pack("!i", 7) + b"\x00"  # i32 field 1, STOP
    count = max(1, (size - 40) // len(element))
    head = struct.pack("!iI", -0x7FFEFFFF, 4) + b"call" + struct.pack("!i", 1)
    field = b"\x0f\x00\x01\x0c" + struct.pack("!i", count)  # field 1: list<struct>
    return head + field + element * count + b"\x00"


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def thrift_compact_structs(size: int) -> bytes:
    """The same in the compact protocol."""
    element = b"\x15\x0e\x00"  # i32 field 1 (delta 1), zigzag 7, STOP
    count = max(1, (size - 40) // len(element))
    head = b"\x82\x21" + _varint(1) + _varint(4) + b"call"
    field = b"\x19\xfc" + _varint(count)  # field 1: list of structs, size in a varint
    return head + field + element * count + b"\x00"


def thrift_codec(size: int) -> ThriftCodec:
    return ThriftCodec(Side.DOWNSTREAM, {"transport": "unframed"}, size + 1024)


CASES = (
    Case("http1 many headers", http_headers, http_codec),
    Case("http1 one-byte chunks", http_chunks, http_codec),
    Case("redis request, many elements", redis_request, redis_down),
    Case("redis reply, many elements", redis_reply, redis_up),
    Case("redis reply, nested 60 deep", redis_deep_reply, redis_up),
    Case("dubbo large Hessian2 map", dubbo_large_map, dubbo_codec),
    Case("dubbo Hessian2 maps 60 deep", dubbo_deep_maps, dubbo_codec),
    Case("thrift binary, many structs", thrift_binary_structs, thrift_codec),
    Case("thrift compact, many structs", thrift_compact_structs, thrift_codec),
)


def time_decode(case: Case, data: bytes, runs: int) -> float:
    """Best time over ``runs`` to decode ``data`` arriving in READ-sized pieces."""
    best = float("inf")
    for _ in range(runs):
        codec = case.codec(len(data))
        buffer = bytearray()
        elapsed = 0.0
        message: Message | None = None
        for offset in range(0, len(data), READ):
            buffer += data[offset : offset + READ]
            started = time.thread_time()
            result = codec.decode(buffer)
            elapsed += time.thread_time() - started
            if result is not NEED_DATA:
                assert isinstance(result, Message)
                message = result
        if message is None or buffer:
            raise AssertionError(f"{case.name}: {len(data)} bytes did not decode to one message")
        best = min(best, elapsed)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max", default="8MiB", help="largest message (max_message_size)")
    parser.add_argument("--case", action="append", help="run only cases whose name has this")
    args = parser.parse_args(argv)
    largest = parse_size(args.max)
    sizes = [s for s in SIZES if s < largest] + [largest]
    print("| case | " + " | ".join(_label(s) for s in sizes) + " | max / min |")
    print("|---|" + "---|" * (len(sizes) + 1))
    for case in CASES:
        if args.case and not any(c in case.name for c in args.case):
            continue
        per_byte = []
        for size in sizes:
            data = case.build(size)
            runs = 5 if size <= 256 << 10 else 2
            per_byte.append(time_decode(case, data, runs) / len(data) * 1e9)
        cells = " | ".join(f"{v:.1f}" for v in per_byte)
        print(f"| {case.name} | {cells} | {max(per_byte) / min(per_byte):.2f} |", flush=True)
    print(
        f"\nCPU ns per byte of the message, fed in {READ // 1024} KiB reads "
        "(best of 5; of 2 from 1 MiB)"
    )


def _label(size: int) -> str:
    return f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"


if __name__ == "__main__":
    main()
