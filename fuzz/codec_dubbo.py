"""Dubbo harnesses: requests decoded downstream, responses decoded upstream.

Selector bits: 0 ``unsupported_serialization: reject``, 1 ``max_depth: 4``, 2 a small
``max_message_size`` (512 bytes instead of 64 KiB).
"""

from __future__ import annotations

from typing import Any

from metaprotocol.codecs.dubbo import DubboCodec
from metaprotocol.core.codec import Side
from metaprotocol.core.message import NEED_DATA, Message, Mutation, ProtocolError

from .common import Finding, check_encodes, check_error, drive, split_input, vectors

__all__ = ["request", "request_seeds", "response", "response_seeds"]

MUTATION = Mutation(add=(("x-fuzz", "1"), ("version", "2.0")), remove=("sw8",))


def _setup(selector: int) -> tuple[dict[str, Any], int]:
    options: dict[str, Any] = {}
    if selector & 1:
        options["unsupported_serialization"] = "reject"
    if selector & 2:
        options["max_depth"] = 4
    return options, 512 if selector & 4 else 64 * 1024


def _decode_one(side: Side, options: dict[str, Any], limit: int, frame: bytes) -> Message | None:
    try:
        result = DubboCodec(side, options, limit).decode(bytearray(frame))
    except ProtocolError as exc:
        check_error(exc)
        return None
    return None if result is NEED_DATA else result


def _run(data: bytes, side: Side) -> None:
    selector, chunk, wire = split_input(data)
    options, limit = _setup(selector)
    codec = DubboCodec(side, options, limit)
    # What carries the message on to the other hop: the other side's codec.
    other = DubboCodec(Side.UPSTREAM if side is Side.DOWNSTREAM else Side.DOWNSTREAM, options)

    def redecode(frame: bytes) -> Message | None:
        return _decode_one(side, options, 1 << 20, frame)

    def on_message(message: Message) -> None:
        check_encodes(other, message, passthrough=True, rewrite=redecode)
        try:
            mutated = other.encode(message, mutation=MUTATION)
        except ProtocolError as exc:
            check_error(exc)
            return
        again = redecode(mutated)
        if again is None or again.request_id != message.request_id:
            raise Finding(f"a mutated frame does not decode to the same request: {again!r}")

    drive(codec, wire, chunk, limit, on_message=on_message)


def request(data: bytes) -> None:
    _run(data, Side.DOWNSTREAM)


def response(data: bytes) -> None:
    _run(data, Side.UPSTREAM)


def _heartbeat(flag: int, status: int, body: bytes) -> bytes:
    return (
        b"\xda\xbb"
        + bytes([flag, status])
        + (7).to_bytes(8, "big")
        + len(body).to_bytes(4, "big")
        + body
    )


def request_seeds() -> list[bytes]:
    frames = [*vectors("dubbo", ("request",)), _heartbeat(226, 0, b"N"), _heartbeat(162, 0, b"")]
    return [bytes([s, c]) + f for f in frames for s, c in ((0, 0), (5, 7))]


def response_seeds() -> list[bytes]:
    frames = [*vectors("dubbo", ("response",)), _heartbeat(34, 20, b"N")]
    return [bytes([s, c]) + f for f in frames for s, c in ((0, 0), (6, 5))]
