"""What a Thrift reply says, for the access log: OK, a declared (user) exception, or the
type of a TApplicationException (lib/py/src/Thrift.py names; the struct's field 2, i32)."""

from __future__ import annotations

import struct
from typing import Final

from metaprotocol.core.message import Message, ResponseStatus

from .transport import WireProtocol

__all__ = ["APPLICATION_EXCEPTION_TYPES", "reply_status_of"]

APPLICATION_EXCEPTION_TYPES: Final = (
    "UNKNOWN",
    "UNKNOWN_METHOD",
    "INVALID_MESSAGE_TYPE",
    "WRONG_METHOD_NAME",
    "BAD_SEQUENCE_ID",
    "MISSING_RESULT",
    "INTERNAL_ERROR",
    "PROTOCOL_ERROR",
    "INVALID_TRANSFORM",
    "INVALID_PROTOCOL",
    "UNSUPPORTED_CLIENT_TYPE",
)
_I16: Final = struct.Struct("!h").unpack_from
_I32: Final = struct.Struct("!i").unpack_from
_BINARY_STRING: Final = 11
_BINARY_I32: Final = 8
_COMPACT_BINARY: Final = 8
_COMPACT_I32: Final = 5


def reply_status_of(message: Message, payload: bytes, protocol: WireProtocol) -> str:
    """``OK``, ``USER_EXCEPTION``, or a TApplicationException type (``EXCEPTION`` when the
    struct does not say which); ``message`` was decoded from a reply or exception."""
    kind = message.properties.get("message_type")
    if kind == "reply":
        return "OK" if message.status is ResponseStatus.OK else "USER_EXCEPTION"
    if kind != "exception":
        return ""
    end = len(payload)
    start = end - message.body_size  # the struct's first byte
    code = (
        _binary_type(payload, start, end)
        if protocol is WireProtocol.BINARY
        else _compact_type(payload, start, end)
    )
    if code is None:
        return "EXCEPTION"
    if 0 <= code < len(APPLICATION_EXCEPTION_TYPES):
        return APPLICATION_EXCEPTION_TYPES[code]
    return str(code)


def _binary_type(data: bytes, pos: int, end: int) -> int | None:
    while pos + 3 <= end:
        kind = data[pos]
        if kind == 0:
            return None
        field_id = _I16(data, pos + 1)[0]
        pos += 3
        if pos + 4 > end:
            return None
        if kind == _BINARY_I32:
            if field_id == 2:
                return int(_I32(data, pos)[0])
            pos += 4
        elif kind == _BINARY_STRING:
            pos += 4 + _I32(data, pos)[0]
        else:
            return None
    return None


def _compact_type(data: bytes, pos: int, end: int) -> int | None:
    last = 0
    while pos < end:
        head = data[pos]
        pos += 1
        delta, kind = head >> 4, head & 0x0F
        if head == 0 or delta == 0:
            return None  # the end of the struct, or a long-form field id (not in this struct)
        last += delta
        value, pos = _varint(data, pos, end)
        if value is None:
            return None
        if kind == _COMPACT_I32:
            if last == 2:
                return (value >> 1) ^ -(value & 1)  # zigzag
        elif kind == _COMPACT_BINARY:
            pos += value
        else:
            return None
    return None


def _varint(data: bytes, pos: int, end: int) -> tuple[int | None, int]:
    value = shift = 0
    while pos < end and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    return None, pos
