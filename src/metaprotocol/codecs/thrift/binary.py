"""Thrift binary protocol: message headers, resumable struct skipping, exception replies.

Wire format (https://github.com/apache/thrift/blob/master/doc/specs/thrift-binary-protocol.md):
a strict message starts with the i32 ``0x8001_00TT`` (version 1, message type TT), then an
i32-length name and an i32 seqid; an old-style message starts with the i32 name length, the
name, an i8 message type and the i32 seqid. The message body is one struct.
"""

from __future__ import annotations

import struct
from typing import Final

from metaprotocol.core.message import ErrorType, ProtocolError

__all__ = [
    "BinaryHeader",
    "BinaryStructScanner",
    "name_overruns",
    "read_binary_header",
    "reply_is_declared_exception_binary",
    "write_binary_exception",
]

MAX_DEPTH: Final = 64  # nesting bound for struct skipping (Apache's default recursion limit)

_I32: Final = struct.Struct("!i")
_I16: Final = struct.Struct("!h")
_VERSION_1: Final = 0x80010000

# Value types (TType) and the width of the fixed-size ones.
_STOP: Final = 0
_BOOL, _BYTE, _DOUBLE, _I16T, _I32T, _I64T = 2, 3, 4, 6, 8, 10
_STRING, _STRUCT, _MAP, _SET, _LIST, _UUID = 11, 12, 13, 14, 15, 16
_FIXED_WIDTH: Final = {_BOOL: 1, _BYTE: 1, _DOUBLE: 8, _I16T: 2, _I32T: 4, _I64T: 8, _UUID: 16}
_VALID_TYPES: Final = frozenset({*_FIXED_WIDTH, _STRING, _STRUCT, _MAP, _SET, _LIST})

# Scanner stack frames are small lists: [_IN_STRUCT] or [_IN_LIST, elem_type, remaining]
# or [_IN_MAP, key_type, value_type, remaining_values] (keys when remaining is even).
_IN_STRUCT, _IN_LIST, _IN_MAP = 0, 1, 2

# (name, message type, seqid, seqid offset, end of the message header), offsets from ``start``.
BinaryHeader = tuple[bytes, int, int, int, int]


def read_binary_header(
    buf: bytes | bytearray, start: int, end: int, limit: int | None = None
) -> BinaryHeader | None:
    """Parse a strict or old-style message header in ``buf[start:end]``.

    Returns None when more bytes are needed; raises ProtocolError on a bad header. With
    ``limit`` (the offset the message may not pass), a header whose declared name would
    end past it is refused as soon as the name length is read, without waiting for it.
    """
    if end - start < 4:
        return None
    (word,) = _I32.unpack_from(buf, start)
    if word < 0:
        if word & 0xFFFF0000 != _VERSION_1:
            raise ProtocolError(f"thrift binary: bad version word 0x{word & 0xFFFFFFFF:08x}")
        mtype = word & 0xFF
        if end - start < 8:
            return None
        (name_len,) = _I32.unpack_from(buf, start + 4)
        if name_len < 0:
            raise ProtocolError("thrift binary: negative method name length")
        name_at = start + 8
        name_end = seqid_at = name_at + name_len
        header_end = seqid_at + 4
        if limit is not None and header_end > limit:
            raise name_overruns(name_len, limit - start)
        if header_end > end:
            return None
    else:
        name_len = word
        name_at = start + 4
        name_end = name_at + name_len
        if limit is not None and name_end + 5 > limit:
            raise name_overruns(name_len, limit - start)
        if name_end + 5 > end:
            return None
        mtype = buf[name_end]
        seqid_at = name_end + 1
        header_end = seqid_at + 4
    if not 1 <= mtype <= 4:
        raise ProtocolError(f"thrift binary: bad message type {mtype}")
    (seqid,) = _I32.unpack_from(buf, seqid_at)
    return bytes(buf[name_at:name_end]), mtype, seqid, seqid_at, header_end


def name_overruns(name_len: int, room: int) -> ProtocolError:
    """A message header declaring a name longer than the message may be (fatal: the
    proxy refuses it from the header instead of waiting for the name)."""
    return ProtocolError(
        f"thrift: message declares a method name of {name_len} bytes, "
        f"more than its limit of {room} bytes",
        ErrorType.MESSAGE_TOO_LARGE,
    )


def reply_is_declared_exception_binary(buf: bytes | bytearray, at: int, end: int) -> bool:
    """True when the result struct at ``at`` starts with a field other than id 0 (success)."""
    if at >= end:
        raise ProtocolError("thrift binary: reply has no result struct")
    if buf[at] == _STOP:
        return False
    if at + 3 > end:
        raise ProtocolError("thrift binary: truncated reply field header")
    return bool(_I16.unpack_from(buf, at + 1)[0] != 0)


class BinaryStructScanner:
    """Finds where a binary-protocol struct ends, resuming where the last call stopped.

    The buffer may grow between calls (never shrink before the struct is complete), so a
    message arriving in small pieces is scanned once in total, not once per piece.
    """

    __slots__ = ("limit", "pos", "stack")

    def __init__(self, pos: int, limit: int) -> None:
        self.pos = pos
        self.limit = limit  # absolute offset the struct may not pass (max message size)
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
                    vtype = buf[pos]
                    if vtype == _STOP:
                        pos += 1
                        stack.pop()
                        continue
                    if vtype not in _VALID_TYPES:
                        raise ProtocolError(f"thrift binary: unknown field type {vtype}")
                    new = self._value(buf, pos + 3, n, vtype)
                    if new < 0:
                        break
                    pos = new
                elif kind == _IN_LIST:
                    remaining = top[2]
                    if remaining == 0:
                        stack.pop()
                        continue
                    width = _FIXED_WIDTH.get(top[1], 0)
                    if width:
                        take = min(remaining, (n - pos) // width)
                        pos += take * width
                        top[2] = remaining - take
                        if take < remaining:
                            break
                        continue
                    new = self._value(buf, pos, n, top[1])
                    if new < 0:
                        break
                    top[2] = remaining - 1
                    pos = new
                else:
                    remaining = top[3]
                    if remaining == 0:
                        stack.pop()
                        continue
                    new = self._value(buf, pos, n, top[1] if remaining % 2 == 0 else top[2])
                    if new < 0:
                        break
                    top[3] = remaining - 1
                    pos = new
        finally:
            self.pos = pos
        if pos > self.limit:
            raise ProtocolError("thrift: message too large", ErrorType.MESSAGE_TOO_LARGE)
        return not stack

    def _value(self, buf: bytes | bytearray, pos: int, n: int, vtype: int) -> int:
        """Consume one value's head starting at ``pos``; -1 when more bytes are needed.

        Scalars and strings are consumed whole; containers push a frame. ``pos`` for a
        struct field already points past its 3-byte field header (which must be present).
        """
        if pos > n:
            return -1
        width = _FIXED_WIDTH.get(vtype)
        if width is not None:
            return pos + width if pos + width <= n else -1
        if vtype == _STRING:
            if pos + 4 > n:
                return -1
            (size,) = _I32.unpack_from(buf, pos)
            self._check_size(size, pos + 4, 1)
            return pos + 4 + size if pos + 4 + size <= n else -1
        if vtype == _STRUCT:
            self._push([_IN_STRUCT])
            return pos
        if vtype in (_LIST, _SET):
            if pos + 5 > n:
                return -1
            etype = buf[pos]
            (size,) = _I32.unpack_from(buf, pos + 1)
            self._check_elements(etype, size, pos + 5)
            self._push([_IN_LIST, etype, size])
            return pos + 5
        if vtype == _MAP:
            if pos + 6 > n:
                return -1
            ktype, vvtype = buf[pos], buf[pos + 1]
            (size,) = _I32.unpack_from(buf, pos + 2)
            self._check_elements(ktype, size, pos + 6)
            self._check_elements(vvtype, size, pos + 6)
            self._push([_IN_MAP, ktype, vvtype, 2 * size])
            return pos + 6
        raise ProtocolError(f"thrift binary: unknown field type {vtype}")

    def _check_size(self, size: int, at: int, unit: int) -> None:
        if size < 0:
            raise ProtocolError("thrift binary: negative size")
        if at + size * unit > self.limit:
            raise ProtocolError("thrift: message too large", ErrorType.MESSAGE_TOO_LARGE)

    def _check_elements(self, etype: int, size: int, at: int) -> None:
        if size and etype not in _VALID_TYPES:
            raise ProtocolError(f"thrift binary: unknown element type {etype}")
        self._check_size(size, at, _FIXED_WIDTH.get(etype, 1))

    def _push(self, frame: list[int]) -> None:
        if len(self.stack) >= MAX_DEPTH:
            raise ProtocolError("thrift binary: structs nested too deeply")
        self.stack.append(frame)


def write_binary_exception(name: bytes, seqid: int, exc_type: int, message: str) -> bytes:
    """A strict binary EXCEPTION message carrying a TApplicationException."""
    text = message.encode("utf-8", "replace")
    return b"".join(
        (
            _I32.pack(_VERSION_1 - 0x100000000 + 3),
            _I32.pack(len(name)),
            name,
            _I32.pack(_to_i32(seqid)),
            b"\x0b\x00\x01",
            _I32.pack(len(text)),
            text,
            b"\x08\x00\x02",
            _I32.pack(exc_type),
            b"\x00",
        )
    )


def _to_i32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - 0x100000000 if value >= 0x80000000 else value
