"""Thrift transports: framed, unframed and THeader framing, and auto-detection of both layers.

THeader layout (https://github.com/apache/thrift/blob/master/doc/specs/HeaderFormatSpec.md)::

    i32 length | u16 0x0FFF | u16 flags | i32 seqid | u16 header words (x4 bytes) |
    varint protocol id | varint transform count | transform ids | info headers | padding |
    payload (transformed by the listed transforms)
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass, field
from typing import Final

from metaprotocol.core.message import ErrorType, ProtocolError

from .compact import COMPACT_PROTOCOL_ID, encode_varint

__all__ = [
    "HEADER_MAGIC",
    "HeaderInfo",
    "Transport",
    "WireProtocol",
    "build_header_frame",
    "detect_protocol",
    "detect_transport",
    "new_header_frame",
    "parse_header_frame",
]

HEADER_MAGIC: Final = 0x0FFF
_HEADER_PROTOCOL_IDS: Final = {0: "binary", 2: "compact"}
_ZLIB: Final = 1
_INFO_KEY_VALUE: Final = 1
_I32: Final = struct.Struct("!i")
_HEADER_FIXED: Final = struct.Struct("!HHiH")  # magic, flags, seqid, header words


class Transport(enum.Enum):
    FRAMED = "framed"
    UNFRAMED = "unframed"
    HEADER = "header"


class WireProtocol(enum.Enum):
    BINARY = "binary"
    COMPACT = "compact"


@dataclass(frozen=True, slots=True)
class HeaderInfo:
    """What a THeader frame says around its payload (``payload`` is already untransformed)."""

    flags: int
    seqid: int
    protocol: WireProtocol
    transforms: tuple[int, ...]
    info: dict[str, str] = field(default_factory=dict)
    header_bytes: bytes = b""  # from the magic up to the end of the padded header
    payload: bytes = b""


def detect_transport(buf: bytes | bytearray) -> Transport | None:
    """Guess the transport from a stream's first bytes; None when more bytes are needed.

    0x8001 or 0x82 first: unframed. Otherwise the first word is a frame length and the next
    bytes say which: 0x0FFF header, 0x80 / 0x82 / 0x00 (an old-style name length) framed.
    Any other byte there is taken as an old-style unframed message, whose first word is the
    method name length and the name follows.
    """
    if not buf:
        return None
    first = buf[0]
    if first == 0x80 or first == COMPACT_PROTOCOL_ID:
        return Transport.UNFRAMED
    if first > 0x7F:
        raise ProtocolError(f"thrift: cannot detect transport (first byte 0x{first:02x})")
    if len(buf) < 6:
        return None
    fifth = buf[4]
    if fifth == 0x0F and buf[5] == 0xFF:
        return Transport.HEADER
    if fifth == 0x80 or fifth == COMPACT_PROTOCOL_ID or fifth == 0x00:
        return Transport.FRAMED
    return Transport.UNFRAMED


def detect_protocol(buf: bytes | bytearray, at: int) -> WireProtocol | None:
    """Binary (strict or old-style) or compact from a message's first byte."""
    if at >= len(buf):
        return None
    first = buf[at]
    if first == COMPACT_PROTOCOL_ID:
        return WireProtocol.COMPACT
    if first == 0x80 or first < 0x80:
        return WireProtocol.BINARY
    raise ProtocolError(f"thrift: cannot detect protocol (first byte 0x{first:02x})")


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 35, 7):
        if pos >= end:
            raise ProtocolError("thrift header: truncated varint", fatal=False)
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
    raise ProtocolError("thrift header: varint too long", fatal=False)


def _string(buf: bytes, pos: int, end: int) -> tuple[str, int]:
    size, pos = _varint(buf, pos, end)
    if pos + size > end:
        raise ProtocolError("thrift header: info header overruns the header", fatal=False)
    return buf[pos : pos + size].decode("utf-8", "replace"), pos + size


def parse_header_frame(frame: bytes, max_payload: int) -> HeaderInfo:
    """Parse a whole THeader frame (with its length word). Errors are non-fatal: the frame
    length still delimits the stream."""
    end = len(frame)
    if end < 14:
        raise ProtocolError("thrift header: frame shorter than the fixed header", fatal=False)
    magic, flags, seqid, words = _HEADER_FIXED.unpack_from(frame, 4)
    if magic != HEADER_MAGIC:
        raise ProtocolError("thrift header: bad magic", fatal=False)
    header_end = 14 + 4 * words
    if header_end > end:
        raise ProtocolError("thrift header: header larger than the frame", fatal=False)
    protocol_id, pos = _varint(frame, 14, header_end)
    protocol_name = _HEADER_PROTOCOL_IDS.get(protocol_id)
    if protocol_name is None:
        raise ProtocolError(f"thrift header: unsupported protocol id {protocol_id}", fatal=False)
    count, pos = _varint(frame, pos, header_end)
    transforms = []
    for _ in range(count):
        transform, pos = _varint(frame, pos, header_end)
        if transform != _ZLIB:
            raise ProtocolError(f"thrift header: unsupported transform {transform}", fatal=False)
        transforms.append(transform)
    info: dict[str, str] = {}
    while pos < header_end:
        kind, pos = _varint(frame, pos, header_end)
        if kind != _INFO_KEY_VALUE:
            break  # 0 is padding; other kinds are skipped, as Apache and fbthrift do
        pairs, pos = _varint(frame, pos, header_end)
        for _ in range(pairs):
            key, pos = _string(frame, pos, header_end)
            value, pos = _string(frame, pos, header_end)
            info[key] = value
    payload = frame[header_end:]
    for _ in transforms:
        payload = _inflate(payload, max_payload)
    return HeaderInfo(
        flags=flags,
        seqid=seqid,
        protocol=WireProtocol(protocol_name),
        transforms=tuple(transforms),
        info=info,
        header_bytes=frame[4:header_end],
        payload=payload,
    )


def _inflate(data: bytes, max_size: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, max_size + 1)
    except zlib.error as exc:
        raise ProtocolError(f"thrift header: bad zlib payload ({exc})", fatal=False) from None
    if len(out) > max_size or inflater.unconsumed_tail:
        raise ProtocolError(
            "thrift header: inflated payload too large", ErrorType.MESSAGE_TOO_LARGE, fatal=False
        )
    if not inflater.eof:
        raise ProtocolError("thrift header: truncated zlib payload", fatal=False)
    return out


def build_header_frame(
    header_bytes: bytes, seqid: int, transforms: tuple[int, ...], payload: bytes
) -> bytes:
    """Re-frame ``payload`` under an existing THeader (seqid replaced, transforms re-applied)."""
    for _ in transforms:
        payload = zlib.compress(payload)
    head = bytearray(header_bytes)
    head[4:8] = (seqid & 0xFFFFFFFF).to_bytes(4, "big")
    return _I32.pack(len(head) + len(payload)) + bytes(head) + payload


def new_header_frame(protocol: WireProtocol, seqid: int, payload: bytes) -> bytes:
    """A fresh THeader frame (no transforms, no info headers) around ``payload``."""
    header = bytearray(encode_varint(0 if protocol is WireProtocol.BINARY else 2))
    header += b"\x00"  # no transforms
    header += b"\x00" * (-len(header) % 4)
    fixed = _HEADER_FIXED.pack(HEADER_MAGIC, 0, 0, len(header) // 4)
    return build_header_frame(fixed + bytes(header), seqid, (), payload)
