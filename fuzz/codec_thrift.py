"""Thrift harnesses: requests decoded downstream, replies decoded upstream, every transport
(framed, unframed, THeader, auto) with every protocol (binary, compact, auto).

Selector: ``selector % 12`` picks the transport x protocol pair (see ``OPTIONS``); bit 4 a
small ``max_message_size`` (512 bytes instead of 64 KiB).
"""

from __future__ import annotations

import itertools

from metaprotocol.codecs.thrift import ThriftCodec
from metaprotocol.codecs.thrift import codec as thrift_codec
from metaprotocol.core.codec import Side
from metaprotocol.core.message import NEED_DATA, Message, ProtocolError

from .common import Finding, check_encodes, check_error, drive, split_input, vectors

__all__ = ["OPTIONS", "request", "request_seeds", "response", "response_seeds"]

OPTIONS: list[dict[str, str]] = [
    {"transport": transport, "protocol": protocol}
    for transport, protocol in itertools.product(
        ("auto", "framed", "unframed", "header"), ("auto", "binary", "compact")
    )
]
_COPIER_LIMIT = 4096  # the codec's module-wide cache of frame copiers must stay bounded


def _run(data: bytes, side: Side) -> None:
    selector, chunk, wire = split_input(data)
    options = OPTIONS[selector % len(OPTIONS)]
    limit = 512 if selector & 16 else 64 * 1024
    codec = ThriftCodec(side, options, limit)
    other = ThriftCodec(
        Side.UPSTREAM if side is Side.DOWNSTREAM else Side.DOWNSTREAM, options, limit
    )

    def redecode(frame: bytes, message: Message) -> Message | None:
        # Pinned to what the message was detected as: auto detection of a lone frame can
        # differ (an old-style unframed binary name length reads as a frame length).
        transport, protocol = message.codec_data[0], message.codec_data[1]
        pinned = {"transport": transport.value, "protocol": protocol.value}
        try:
            result = ThriftCodec(side, pinned, 1 << 20).decode(bytearray(frame))
        except ProtocolError as exc:
            check_error(exc)
            return None
        return None if result is NEED_DATA else result

    def on_message(message: Message) -> None:
        check_encodes(
            other, message, passthrough=True, rewrite=lambda frame: redecode(frame, message)
        )

    drive(codec, wire, chunk, limit, on_message=on_message)
    if len(thrift_codec._COPIERS) > _COPIER_LIMIT:
        raise Finding(f"{len(thrift_codec._COPIERS)} frame copiers cached")


def request(data: bytes) -> None:
    _run(data, Side.DOWNSTREAM)


def response(data: bytes) -> None:
    _run(data, Side.UPSTREAM)


# A nested compact reply and a framed binary call (from tests/codecs/test_thrift_fuzz.py).
_EXTRA_REPLY = bytes.fromhex(
    "82410007676574557365720c0016541805616c6963651928016101621b0185016b021117000000000000f83f0000"
)
_EXTRA_CALL = bytes.fromhex("0000001e800100010000000361646400000001080001000000140800020000001600")


def _seeds(frames: list[bytes]) -> list[bytes]:
    # Each frame under auto detection, whole and in 3-byte pieces, and under every pair.
    out = [bytes([0, c]) + f for f in frames for c in (0, 3)]
    out += [bytes([s, 0]) + f for f in frames for s in range(1, len(OPTIONS))]
    return out


def request_seeds() -> list[bytes]:
    return _seeds([*vectors("thrift", ("request",)), _EXTRA_CALL])


def response_seeds() -> list[bytes]:
    return _seeds([*vectors("thrift", ("response",)), _EXTRA_REPLY])
