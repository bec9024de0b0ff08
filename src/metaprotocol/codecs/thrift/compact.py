"""Thrift compact protocol: message headers, resumable struct skipping, exception replies.

Wire format (https://github.com/apache/thrift/blob/master/doc/specs/thrift-compact-protocol.md):
a message starts with 0x82, a byte ``type << 5 | 1``, the seqid as an unsigned varint (not
zigzag), a varint name length and the name. Struct fields carry a 4-bit id delta and a 4-bit
type; integers are zigzag varints; the body is one struct.
"""

from __future__ import annotations

from typing import Final

from metaprotocol.core.message import ErrorType, ProtocolError

__all__ = [
    "COMPACT_PROTOCOL_ID",
    "CompactHeader",
    "CompactStructScanner",
    "encode_varint",
    "read_compact_header",
    "reply_is_declared_exception_compact",
    "write_compact_exception",
]

COMPACT_PROTOCOL_ID: Final = 0x82
MAX_DEPTH: Final = 64

_STOP, _TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE = 0, 1, 2, 3, 4, 5, 6, 7
_BINARY, _LIST, _SET, _MAP, _STRUCT, _UUID = 8, 9, 10, 11, 12, 13
_VARINT_TYPES: Final = frozenset({_I16, _I32, _I64})
# Width of fixed-size values inside containers (bools take one byte there, none in fields).
_ELEMENT_WIDTH: Final = {_TRUE: 1, _FALSE: 1, _BYTE: 1, _DOUBLE: 8, _UUID: 16}
_FIELD_WIDTH: Final = {_TRUE: 0, _FALSE: 0, _BYTE: 1, _DOUBLE: 8, _UUID: 16}
_VALID_TYPES: Final = frozenset(range(1, 14))

_IN_STRUCT, _IN_LIST, _IN_MAP = 0, 1, 2

# (name, message type, seqid, seqid offset, seqid length, end of the message header)
CompactHeader = tuple[bytes, int, int, int, int, int]


def _varint(buf: bytes | bytearray, pos: int, end: int, max_bytes: int) -> tuple[int, int]:
    """Read an unsigned varint at ``pos``: (value, next offset), or (-1, -1) if incomplete."""
    value = 0
    shift = 0
    for _ in range(max_bytes):
        if pos >= end:
            return -1, -1
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise ProtocolError("thrift compact: varint too long")


def encode_varint(value: int) -> bytes:
    """Unsigned varint encoding (``value`` must be >= 0)."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_compact_header(
    buf: bytes | bytearray, start: int, end: int, limit: int | None = None
) -> CompactHeader | None:
    """Parse a compact message header in ``buf[start:end]``; None when more bytes are needed.

    With ``limit``, a declared name ending past that offset is refused at once."""
    if end - start < 2:
        return None
    if buf[start] != COMPACT_PROTOCOL_ID:
        raise ProtocolError(f"thrift compact: bad protocol id 0x{buf[start]:02x}")
    version_type = buf[start + 1]
    if version_type & 0x1F != 1:
        raise ProtocolError(f"thrift compact: bad version {version_type & 0x1F}")
    mtype = version_type >> 5
    if not 1 <= mtype <= 4:
        raise ProtocolError(f"thrift compact: bad message type {mtype}")
    seqid_at = start + 2
    seqid, name_len_at = _varint(buf, seqid_at, end, 5)
    if seqid < 0:
        return None
    if seqid > 0xFFFFFFFF:
        raise ProtocolError("thrift compact: seqid out of range")
    name_len, name_at = _varint(buf, name_len_at, end, 5)
    if name_len < 0:
        return None
    if name_len > 0x7FFFFFFF:
        raise ProtocolError("thrift compact: method name length out of range")
    header_end = name_at + name_len
    if limit is not None and header_end > limit:
        raise ProtocolError(
            f"thrift: message declares a method name of {name_len} bytes, "
            f"more than its limit of {limit - start} bytes",
            ErrorType.MESSAGE_TOO_LARGE,
        )
    if header_end > end:
        return None
    if seqid >= 0x80000000:
        seqid -= 0x100000000
    name = bytes(buf[name_at:header_end])
    return name, mtype, seqid, seqid_at, name_len_at - seqid_at, header_end


def reply_is_declared_exception_compact(buf: bytes | bytearray, at: int, end: int) -> bool:
    """True when the result struct at ``at`` starts with a field other than id 0 (success)."""
    if at >= end:
        raise ProtocolError("thrift compact: reply has no result struct")
    head = buf[at]
    if head == _STOP:
        return False
    if head >> 4:
        return True  # a delta from field id 0 means a field id above 0
    zigzag, _ = _varint(buf, at + 1, end, 3)
    if zigzag < 0:
        raise ProtocolError("thrift compact: truncated reply field header")
    return zigzag != 0


class CompactStructScanner:
    """Finds where a compact-protocol struct ends, resuming where the last call stopped."""

    __slots__ = ("limit", "pos", "stack")

    def __init__(self, pos: int, limit: int) -> None:
        self.pos = pos
        self.limit = limit
        self.stack: list[list[int]] = [[_IN_STRUCT]]

    def advance(self, buf: bytes | bytearray) -> bool:
        """Scan what is buffered; True when the struct is complete (``pos`` is then its end)."""
        n = len(buf)
        pos = self.pos
        stack = self.stack
        try:
            while stack:
                top = stack[-1]
                kind = top[0]
                if kind == _IN_STRUCT:
                    if pos >= n:
                        break
                    head = buf[pos]
                    if head == _STOP:
                        pos += 1
                        stack.pop()
                        continue
                    at = pos + 1
                    if not head >> 4:  # long form: zigzag i16 field id follows
                        _, at = _varint(buf, at, n, 3)
                        if at < 0:
                            break
                    new = self._value(buf, at, n, head & 0x0F, _FIELD_WIDTH)
                elif kind == _IN_LIST:
                    remaining = top[2]
                    if remaining == 0:
                        stack.pop()
                        continue
                    width = _ELEMENT_WIDTH.get(top[1], 0)
                    if width:
                        take = min(remaining, (n - pos) // width)
                        pos += take * width
                        top[2] = remaining - take
                        if take < remaining:
                            break
                        continue
                    new = self._value(buf, pos, n, top[1], _ELEMENT_WIDTH)
                    if new >= 0:
                        top[2] = remaining - 1
                else:
                    remaining = top[3]
                    if remaining == 0:
                        stack.pop()
                        continue
                    etype = top[1] if remaining % 2 == 0 else top[2]
                    new = self._value(buf, pos, n, etype, _ELEMENT_WIDTH)
                    if new >= 0:
                        top[3] = remaining - 1
                if new < 0:
                    break
                pos = new
        finally:
            self.pos = pos
        if pos > self.limit:
            raise ProtocolError("thrift: message too large", ErrorType.MESSAGE_TOO_LARGE)
        return not stack

    def _value(
        self, buf: bytes | bytearray, pos: int, n: int, vtype: int, widths: dict[int, int]
    ) -> int:
        """Consume one value's head at ``pos``; -1 when more bytes are needed."""
        width = widths.get(vtype)
        if width is not None:
            return pos + width if pos + width <= n else -1
        if vtype in _VARINT_TYPES:
            _, new = _varint(buf, pos, n, 10)
            return new
        if vtype == _BINARY:
            size, at = _varint(buf, pos, n, 5)
            if size < 0:
                return -1
            self._check_size(size, at, 1)
            return at + size if at + size <= n else -1
        if vtype == _STRUCT:
            self._push([_IN_STRUCT])
            return pos
        if vtype in (_LIST, _SET):
            if pos >= n:
                return -1
            head = buf[pos]
            etype = head & 0x0F
            size = head >> 4
            at = pos + 1
            if size == 15:
                size, at = _varint(buf, at, n, 5)
                if size < 0:
                    return -1
            self._check_elements(etype, size, at)
            self._push([_IN_LIST, etype, size])
            return at
        if vtype == _MAP:
            size, at = _varint(buf, pos, n, 5)
            if size < 0:
                return -1
            if size == 0:
                return at
            if at >= n:
                return -1
            ktype, vvtype = buf[at] >> 4, buf[at] & 0x0F
            self._check_elements(ktype, size, at + 1)
            self._check_elements(vvtype, size, at + 1)
            self._push([_IN_MAP, ktype, vvtype, 2 * size])
            return at + 1
        raise ProtocolError(f"thrift compact: unknown type {vtype}")

    def _check_size(self, size: int, at: int, unit: int) -> None:
        if size > 0x7FFFFFFF:
            raise ProtocolError("thrift compact: size out of range")
        if at + size * unit > self.limit:
            raise ProtocolError("thrift: message too large", ErrorType.MESSAGE_TOO_LARGE)

    def _check_elements(self, etype: int, size: int, at: int) -> None:
        if size and etype not in _VALID_TYPES:
            raise ProtocolError(f"thrift compact: unknown element type {etype}")
        self._check_size(size, at, _ELEMENT_WIDTH.get(etype, 1))

    def _push(self, frame: list[int]) -> None:
        if len(self.stack) >= MAX_DEPTH:
            raise ProtocolError("thrift compact: structs nested too deeply")
        self.stack.append(frame)


def write_compact_exception(name: bytes, seqid: int, exc_type: int, message: str) -> bytes:
    """A compact EXCEPTION message carrying a TApplicationException."""
    text = message.encode("utf-8", "replace")
    zigzag = (exc_type << 1) ^ (exc_type >> 31)
    return b"".join(
        (
            bytes((COMPACT_PROTOCOL_ID, (3 << 5) | 1)),
            encode_varint(seqid & 0xFFFFFFFF),
            encode_varint(len(name)),
            name,
            b"\x18",  # field 1 (delta 1), binary
            encode_varint(len(text)),
            text,
            b"\x15",  # field 2 (delta 1), i32
            encode_varint(zigzag & 0xFFFFFFFF),
            b"\x00",
        )
    )
