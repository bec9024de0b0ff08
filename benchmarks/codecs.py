"""Codec throughput benchmark: prints a Markdown table of msgs/s and MB/s per codec.

Run ``python benchmarks/codecs.py [--seconds 0.5] [--codec dubbo ...]``. For each codec it
measures, with ``metaprotocol.testing.codecbench``: decode + metadata of requests on the
downstream side, pass-through encode, mutated encode (codecs with ``supports_mutation``)
and request-id rewrite (MULTIPLEXED codecs). Sample frames are real: the first Dubbo request
of the shared wire vectors (a Java consumer's capture), Thrift frames written by Apache
Thrift's own ``TFramedTransport``, HTTP/1.1 requests written by h11, and Redis commands packed
by redis-py. A codec that is not importable yet is skipped with a note line.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaprotocol.core.codec import CodecFactory, Ordering, Side
from metaprotocol.core.message import Mutation
from metaprotocol.testing.codecbench import Result, measure_decode, measure_encode

__all__ = ["CASES", "GOALS", "Case", "main"]

# dubbo-000 in /work/shared/vectors/wire-vectors.json: UserService.login(String, String),
# Hessian2, request id 22872, captured from a Java Dubbo 2.0.2 consumer (deepflow test pcap).
DUBBO_REQUEST_HEX = (
    "dabbc2000000000000005958000000f805322e302e321b6d792e64656d6f2e736572766963652e5573657253"
    "65727669636505302e302e30056c6f67696e30244c6a6176612f6c616e672f537472696e673b4c6a617661"
    "2f6c616e672f537472696e673b0b3133373830343037363037067833235539264804706174681b6d792e64"
    "656d6f2e736572766963652e55736572536572766963651272656d6f74652e6170706c69636174696f6e08"
    "73686f702d776562057377382d78013003737738000f7377382d636f7272656c6174696f6e0009696e7465"
    "72666163651b6d792e64656d6f2e736572766963652e55736572536572766963650776657273696f6e0530"
    "2e302e305a"
)

MUTATION = Mutation(add=(("x-route-tag", "canary"),))

GOALS: dict[str, int] = {
    "dubbo": 1_000_000,
    "thrift framed binary": 1_500_000,
    "redis": 1_000_000,
    "http1 fast": 500_000,
}
"""Decode goals in messages per second (issue 18; meant for the compiled build), printed
next to the decode results."""


@dataclass(frozen=True)
class Case:
    """One row group: a registered codec, its options and how to build sample requests."""

    label: str
    codec: str
    frames: Callable[[], list[bytes]]
    options: dict[str, Any] = field(default_factory=dict)


def dubbo_frames() -> list[bytes]:
    return [bytes.fromhex(DUBBO_REQUEST_HEX)]


def thrift_frames(protocol: str) -> Callable[[], list[bytes]]:
    def build() -> list[bytes]:
        from thrift.protocol.TBinaryProtocol import TBinaryProtocol
        from thrift.protocol.TCompactProtocol import TCompactProtocol
        from thrift.Thrift import TMessageType, TType
        from thrift.transport.TTransport import TFramedTransport, TMemoryBuffer

        frames = []
        for seqid, (method, user_id, name) in enumerate(
            [("getUser", 42, "alice"), ("updateUser", 7, "bob" * 10)], start=1
        ):
            memory = TMemoryBuffer()
            transport = TFramedTransport(memory)
            proto = (TBinaryProtocol if protocol == "binary" else TCompactProtocol)(transport)
            proto.writeMessageBegin(method, TMessageType.CALL, seqid)
            proto.writeStructBegin(f"{method}_args")
            proto.writeFieldBegin("id", TType.I64, 1)
            proto.writeI64(user_id)
            proto.writeFieldEnd()
            proto.writeFieldBegin("name", TType.STRING, 2)
            proto.writeString(name)
            proto.writeFieldEnd()
            proto.writeFieldStop()
            proto.writeStructEnd()
            proto.writeMessageEnd()
            transport.flush()
            frames.append(bytes(memory.getvalue()))
        return frames

    return build


def http1_frames() -> list[bytes]:
    import h11

    def request(method: str, target: str, body: bytes = b"") -> bytes:
        conn = h11.Connection(h11.CLIENT)
        headers = [
            ("Host", "api.example.com"),
            ("User-Agent", "metaprotocol-bench/1.0"),
            ("Accept", "application/json"),
            ("Accept-Encoding", "gzip, deflate"),
            ("X-Request-Id", "5f0c6c1e-93c4-4d0e-9a63-1d2b7f8e4a10"),
        ]
        if body:
            headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        out = conn.send(h11.Request(method=method, target=target, headers=headers)) or b""
        if body:
            out += conn.send(h11.Data(data=body)) or b""
        return out + (conn.send(h11.EndOfMessage()) or b"")

    return [
        request("GET", "/api/v1/users/42?fields=name,email"),
        request("POST", "/api/v1/orders", b'{"item": "book", "quantity": 2, "price": 12.5}'),
    ]


def redis_frames() -> list[bytes]:
    # Imported by name: mypy 2.4 crashes analysing redis-py 7's own annotations.
    connection: Any = importlib.import_module("redis.connection")
    pack = connection.Connection().pack_command
    commands: list[tuple[str, ...]] = [
        ("GET", "session:9f2c1a"),
        ("SET", "session:9f2c1a", "x" * 64, "EX", "3600"),
        ("HGET", "user:42", "email"),
    ]
    return [b"".join(pack(*command)) for command in commands]


# trpc-090 and trpc-096 in tests/codecs/data/vectors/wire-vectors.json: a unary SayHello
# request written by trpc-go's ClientCodec, and a stream INIT from trpc-go's stream codec tests.
TRPC_UNARY_HEX = (
    "0930000000000091007a000000000000180120e8072a17747270632e6170702e636c69656e742e7365727669"
    "6365321c747270632e746573742e68656c6c6f776f726c642e477265657465723a262f747270632e74657374"
    "2e68656c6c6f776f726c642e477265657465722f53617948656c6c6f4a140a076170702d6b657912096170702d"
    "76616c75650a0568656c6c6f"
)
TRPC_INIT_HEX = (
    "093001010000005300000000006400000a410a17747270632e6170702e7365727665722e7365727669636"
    "51a262f747270632e746573742e68656c6c6f776f726c642e477265657465722f53617948656c6c6f"
)


def trpc_frames() -> list[bytes]:
    return [bytes.fromhex(TRPC_UNARY_HEX)]


def trpc_stream_frames() -> list[bytes]:
    return [bytes.fromhex(TRPC_INIT_HEX)]


def lengthprefixed_frames() -> list[bytes]:
    from metaprotocol.codecs.lengthprefixed import build_frame

    return [
        build_frame(1, 1, {"method": "get", "key": "user:42"}, b""),
        build_frame(1, 2, {"method": "put", "key": "user:43"}, b"x" * 64),
    ]


CASES: list[Case] = [
    Case("dubbo", "dubbo", dubbo_frames),
    Case(
        "thrift framed binary",
        "thrift",
        thrift_frames("binary"),
        {"transport": "framed", "protocol": "binary"},
    ),
    Case(
        "thrift framed compact",
        "thrift",
        thrift_frames("compact"),
        {"transport": "framed", "protocol": "compact"},
    ),
    Case("http1 fast", "http1", http1_frames, {"parser": "fast"}),
    Case("http1 h11", "http1", http1_frames, {"parser": "h11"}),
    Case("redis", "redis", redis_frames),
    Case("trpc unary", "trpc", trpc_frames),
    Case("trpc stream init", "trpc", trpc_stream_frames),
    Case("lengthprefixed", "lengthprefixed", lengthprefixed_frames),
]


def load(name: str) -> CodecFactory:
    from metaprotocol.codecs.registry import get_codec

    return get_codec(name)


def measure_case(case: Case, seconds: float) -> list[Result]:
    factory = load(case.codec)
    frames = case.frames()
    common: dict[str, Any] = {"options": case.options, "seconds": seconds}
    results = [
        measure_decode(factory, Side.DOWNSTREAM, frames, **common),
        measure_encode(factory, Side.DOWNSTREAM, frames, **common),
    ]
    if factory.supports_mutation:
        results.append(
            measure_encode(factory, Side.DOWNSTREAM, frames, mutation=MUTATION, **common)
        )
    if factory.ordering is Ordering.MULTIPLEXED:
        results.append(measure_encode(factory, Side.DOWNSTREAM, frames, rewrite_ids=True, **common))
    return results


def goal_text(case: Case, result: Result) -> str:
    goal = GOALS.get(case.label)
    if goal is None or result.operation != "decode":
        return ""
    verdict = "met" if result.best_msgs_per_s >= goal else "**missed**"
    return f">= {goal:,}/s: {verdict}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--seconds", type=float, default=0.5, help="CPU time per measurement (thread_time)"
    )
    parser.add_argument(
        "--codec", action="append", default=[], help="only these case labels or codec names"
    )
    parser.add_argument(
        "--json", type=Path, help="also write the results there (benchmarks.e2e reads it)"
    )
    args = parser.parse_args(argv)
    selected = [
        case for case in CASES if not args.codec or {case.label, case.codec} & set(args.codec)
    ]
    rows: list[str] = []
    notes: list[str] = []
    records: list[dict[str, Any]] = []
    for case in selected:
        try:
            results = measure_case(case, args.seconds)
        except ImportError as exc:
            notes.append(f"- skipped {case.label}: not importable yet ({exc})")
            continue
        except Exception as exc:  # a codec under development: report and go on
            notes.append(f"- skipped {case.label}: {type(exc).__name__}: {exc}")
            continue
        for result in results:
            records.append(
                {
                    "label": case.label,
                    "operation": result.operation,
                    "best_msgs_per_s": result.best_msgs_per_s,
                    "msgs_per_s": result.msgs_per_s,
                    "mb_per_s": result.mb_per_s,
                }
            )
            operation = "decode + metadata" if result.operation == "decode" else result.operation
            rows.append(
                f"| {case.label} | {operation} | {result.best_msgs_per_s:,.0f} | "
                f"{result.msgs_per_s:,.0f} | {result.mb_per_s:,.1f} | {goal_text(case, result)} |"
            )
        print(f"measured {case.label}", file=sys.stderr)
    print(
        f"Python {sys.version.split()[0]}, {args.seconds}s of CPU time (thread_time) per "
        "measurement, in batches of about 64 KiB; goals are checked on the best batch\n"
    )
    print("| codec | operation | msgs/s (best batch) | msgs/s (mean) | MB/s (mean) | goal |")
    print("|---|---|---:|---:|---:|---|")
    for row in rows:
        print(row)
    if notes:
        print()
        for note in notes:
            print(note)
    if args.json is not None:
        args.json.write_text(json.dumps({"codecs": records, "notes": notes}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
