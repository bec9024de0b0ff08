"""Harnesses of the tutorial length-prefixed codec: requests downstream, responses upstream.

Selector: bit 0 a small ``max_message_size`` (64 bytes instead of 64 KiB).
"""

from __future__ import annotations

from metaprotocol.codecs.lengthprefixed import LengthPrefixedCodec, build_frame
from metaprotocol.core.codec import Side
from metaprotocol.core.message import NEED_DATA, Message, Mutation, ProtocolError

from .common import Finding, check_encodes, check_error, drive, split_input

__all__ = ["request", "request_seeds", "response", "response_seeds"]

MUTATION = Mutation(add=(("x-fuzz", "1"),), remove=("method",))


def _run(data: bytes, side: Side) -> None:
    selector, chunk, wire = split_input(data)
    limit = 64 if selector & 1 else 64 * 1024
    codec = LengthPrefixedCodec(side, {}, limit)
    other = LengthPrefixedCodec(
        Side.UPSTREAM if side is Side.DOWNSTREAM else Side.DOWNSTREAM, {}, limit
    )

    def redecode(frame: bytes) -> Message | None:
        try:
            result = LengthPrefixedCodec(side, {}, 1 << 20).decode(bytearray(frame))
        except ProtocolError as exc:
            check_error(exc)
            return None
        return None if result is NEED_DATA else result

    def on_message(message: Message) -> None:
        check_encodes(other, message, passthrough=True, rewrite=redecode)
        try:
            mutated = other.encode(message, mutation=MUTATION)
        except ProtocolError as exc:
            check_error(exc)
            return
        again = redecode(mutated)
        if again is None or again.properties.get("x-fuzz") != "1":
            raise Finding(f"a mutated frame does not decode with its new header: {mutated!r}")

    drive(codec, wire, chunk, limit, on_message=on_message)


def request(data: bytes) -> None:
    _run(data, Side.DOWNSTREAM)


def response(data: bytes) -> None:
    _run(data, Side.UPSTREAM)


REQUESTS = [
    build_frame(1, 7, {"method": "get", "service": "kv"}, b"body"),
    build_frame(3, 8, {"method": "log"}),
    build_frame(4, 9),
    build_frame(6, 10, {"stream": "1"}) + build_frame(7, 10, {}, b"x") + build_frame(8, 10),
]
RESPONSES = [
    build_frame(2, 7, {}, b"ok"),
    build_frame(2, 7, {"error": "timeout"}, b"late", 6),
    build_frame(5, 9),
]


def request_seeds() -> list[bytes]:
    return [bytes([s, c]) + r for r in REQUESTS for s, c in ((0, 0), (1, 5))]


def response_seeds() -> list[bytes]:
    return [bytes([s, c]) + r for r in RESPONSES for s, c in ((0, 0), (1, 5))]
