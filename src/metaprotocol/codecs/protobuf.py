"""Protocol Buffers wire-format helpers for codec authors: varints, tags, fields, rewrites.

Protocols that carry a protobuf header in their frames (tRPC, bRPC, gRPC-like framings) only
need to read a handful of fields, skip the rest and patch one or two values in place; this
module does exactly that, without generated classes or a schema. The wire format is the one of
https://protobuf.dev/programming-guides/encoding/:

    message := field*
    field   := tag value          tag := varint(field_number << 3 | wire_type)
    wire types: 0 VARINT (varint), 1 I64 (8 bytes, little-endian), 2 LEN (varint length, bytes),
                3 SGROUP ... 4 EGROUP (deprecated groups), 5 I32 (4 bytes, little-endian)

Every reader takes ``(data, start, end)`` and checks every length against ``end``: a truncated
varint or field, a varint longer than ten bytes (or above 64 bits), a wire type of 6 or 7, a
field number of 0 or an unbalanced group raises :class:`ProtocolError`, never ``IndexError``.
See docs/writing-a-codec.md for a worked example.
"""

from __future__ import annotations

import enum
from typing import Final

from metaprotocol.core.message import ProtocolError

__all__ = [
    "MAX_FIELD_NUMBER",
    "MAX_VARINT_SIZE",
    "Field",
    "WireType",
    "as_int32",
    "as_int64",
    "encode_len_field",
    "encode_tag",
    "encode_varint",
    "encode_varint_field",
    "read_fields",
    "read_map_entry",
    "read_message",
    "read_tag",
    "read_varint",
    "rewrite_varint",
    "skip_field",
    "splice",
    "varint_size",
    "zigzag_decode",
    "zigzag_encode",
]

MAX_VARINT_SIZE: Final = 10  # 64 bits in 7-bit groups
MAX_FIELD_NUMBER: Final = (1 << 29) - 1
_MAX_GROUP_DEPTH: Final = 64  # nested groups deeper than this are refused (bounded recursion)
_U64: Final = (1 << 64) - 1


class WireType(enum.IntEnum):
    VARINT = 0
    I64 = 1
    LEN = 2
    SGROUP = 3
    EGROUP = 4
    I32 = 5


_WIRE_TYPES: Final = (
    WireType.VARINT,
    WireType.I64,
    WireType.LEN,
    WireType.SGROUP,
    WireType.EGROUP,
    WireType.I32,
)


# --- varints -----------------------------------------------------------------------------------


def read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """The unsigned varint at ``pos`` and the offset after it (ProtocolError if bad)."""
    if pos < end:
        first = data[pos]
        if first < 0x80:  # the common case: one byte
            return first, pos + 1
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise ProtocolError("protobuf: truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if result > _U64:
                raise ProtocolError("protobuf: varint above 64 bits")
            return result, pos
        shift += 7
        if shift >= 7 * MAX_VARINT_SIZE:
            raise ProtocolError("protobuf: varint longer than 10 bytes")


def encode_varint(value: int) -> bytes:
    """``value`` as a varint; negative values as 64-bit two's complement (int32/int64)."""
    if value < 0:
        if value < -(1 << 63):
            raise ValueError(f"varint out of range: {value}")
        value &= _U64
    elif value > _U64:
        raise ValueError(f"varint out of range: {value}")
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def varint_size(value: int) -> int:
    """How many bytes ``encode_varint(value)`` takes."""
    if value < 0:
        return MAX_VARINT_SIZE
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


def zigzag_encode(value: int) -> int:
    """A signed integer as the unsigned one ``sint32``/``sint64`` fields carry."""
    return (value << 1) if value >= 0 else ((-value) << 1) - 1


def zigzag_decode(value: int) -> int:
    return (value >> 1) if not value & 1 else -((value + 1) >> 1)


def as_int32(value: int) -> int:
    """A raw varint read from an ``int32`` field, as the signed value (the low 32 bits)."""
    value &= 0xFFFF_FFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def as_int64(value: int) -> int:
    """A raw varint read from an ``int64`` field, as the signed value."""
    value &= _U64
    return value - (1 << 64) if value >= 1 << 63 else value


# --- tags and fields ---------------------------------------------------------------------------


def encode_tag(number: int, wire_type: WireType) -> bytes:
    if not 1 <= number <= MAX_FIELD_NUMBER:
        raise ValueError(f"bad field number {number}")
    return encode_varint(number << 3 | wire_type)


def encode_varint_field(number: int, value: int) -> bytes:
    return encode_tag(number, WireType.VARINT) + encode_varint(value)


def encode_len_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: strings, bytes, nested messages, map entries."""
    return encode_tag(number, WireType.LEN) + encode_varint(len(payload)) + payload


def read_tag(data: bytes, pos: int, end: int) -> tuple[int, WireType, int]:
    """The field number and wire type of the tag at ``pos``, and the offset after it."""
    key, pos = read_varint(data, pos, end)
    wire = key & 7
    if wire > 5:
        raise ProtocolError(f"protobuf: invalid wire type {wire}")
    number = key >> 3
    if number < 1 or number > MAX_FIELD_NUMBER:
        raise ProtocolError(f"protobuf: invalid field number {number}")
    return number, _WIRE_TYPES[wire], pos


def skip_field(data: bytes, pos: int, end: int, wire_type: WireType, number: int) -> int:
    """The offset after the value of a field whose tag ended at ``pos`` (any wire type)."""
    return _skip(data, pos, end, wire_type, number, 0)


def _skip(data: bytes, pos: int, end: int, wire_type: WireType, number: int, depth: int) -> int:
    if wire_type is WireType.VARINT:
        return read_varint(data, pos, end)[1]
    if wire_type is WireType.I64:
        after = pos + 8
    elif wire_type is WireType.I32:
        after = pos + 4
    elif wire_type is WireType.LEN:
        length, pos = read_varint(data, pos, end)
        after = pos + length
    elif wire_type is WireType.SGROUP:
        if depth >= _MAX_GROUP_DEPTH:
            raise ProtocolError("protobuf: groups nested too deep")
        while True:
            inner, inner_wire, pos = read_tag(data, pos, end)
            if inner_wire is WireType.EGROUP:
                if inner != number:
                    raise ProtocolError(f"protobuf: group {number} ended by {inner}")
                return pos
            pos = _skip(data, pos, end, inner_wire, inner, depth + 1)
    else:
        raise ProtocolError(f"protobuf: end of group {number} without its start")
    if after > end:
        raise ProtocolError(f"protobuf: field {number} runs past the end")
    return after


class Field:
    """One field as it lies in a buffer: where its tag, its value and the field end.

    ``value`` is the integer for VARINT, I64 and I32 fields (unsigned; see ``as_int32``,
    ``as_int64``, ``zigzag_decode``), the payload for LEN fields, and the raw contents
    between the start and end tags for groups. For a LEN field ``value_offset`` is where the
    payload starts (after its length), so ``data[value_offset:end]`` is the payload.
    """

    __slots__ = ("end", "number", "offset", "value", "value_offset", "wire_type")

    def __init__(
        self,
        number: int,
        wire_type: WireType,
        offset: int,
        value_offset: int,
        end: int,
        value: int | bytes,
    ) -> None:
        self.number: Final = number
        self.wire_type: Final = wire_type
        self.offset: Final = offset
        self.value_offset: Final = value_offset
        self.end: Final = end
        self.value: Final = value

    def __repr__(self) -> str:
        return (
            f"Field(number={self.number}, wire_type={self.wire_type.name}, "
            f"offset={self.offset}, value_offset={self.value_offset}, end={self.end}, "
            f"value={self.value!r})"
        )

    @property
    def int_value(self) -> int:
        """The value of a VARINT, I64 or I32 field (ProtocolError for another wire type)."""
        value = self.value
        if isinstance(value, int):
            return value
        raise ProtocolError(f"protobuf: field {self.number} is not an integer")

    @property
    def bytes_value(self) -> bytes:
        """The payload of a LEN field (ProtocolError for another wire type)."""
        value = self.value
        if isinstance(value, bytes) and self.wire_type is WireType.LEN:
            return value
        raise ProtocolError(f"protobuf: field {self.number} is not length-delimited")

    def text(self) -> str:
        """The payload of a string field (ProtocolError if it is not UTF-8)."""
        try:
            return self.bytes_value.decode()
        except UnicodeDecodeError:
            raise ProtocolError(f"protobuf: field {self.number} is not UTF-8") from None


def read_fields(data: bytes, start: int = 0, end: int | None = None) -> list[Field]:
    """Every field of the message in ``data[start:end]``, in wire order (repeats included)."""
    stop = len(data) if end is None else end
    if stop > len(data) or start < 0 or start > stop:
        raise ProtocolError("protobuf: message bounds outside the buffer")
    fields: list[Field] = []
    pos = start
    while pos < stop:
        key = data[pos]
        if key < 0x80 and key >= 8 and key & 7 < 6:  # a one-byte tag (fields 1 to 15)
            number = key >> 3
            wire = _WIRE_TYPES[key & 7]
            value_pos = pos + 1
        else:
            number, wire, value_pos = read_tag(data, pos, stop)
        value: int | bytes
        if wire is WireType.VARINT:
            value, after = read_varint(data, value_pos, stop)
        elif wire is WireType.LEN:
            length, value_pos = read_varint(data, value_pos, stop)
            after = value_pos + length
            if after > stop:
                raise ProtocolError(f"protobuf: field {number} runs past the end")
            value = data[value_pos:after]
        elif wire is WireType.I64 or wire is WireType.I32:
            after = value_pos + (8 if wire is WireType.I64 else 4)
            if after > stop:
                raise ProtocolError(f"protobuf: field {number} runs past the end")
            value = int.from_bytes(data[value_pos:after], "little")
        else:
            after = _skip(data, value_pos, stop, wire, number, 0)
            value = data[value_pos:after]
        fields.append(Field(number, wire, pos, value_pos, after, value))
        pos = after
    return fields


def read_message(data: bytes, start: int = 0, end: int | None = None) -> dict[int, list[Field]]:
    """The fields of ``data[start:end]`` grouped by number (for a scalar, the last one counts;
    a repeated or map field keeps every occurrence in order)."""
    grouped: dict[int, list[Field]] = {}
    for field in read_fields(data, start, end):
        same = grouped.get(field.number)
        if same is None:
            grouped[field.number] = [field]
        else:
            same.append(field)
    return grouped


def read_map_entry(field: Field) -> tuple[bytes, bytes]:
    """The key and value of one entry of a ``map<string|bytes, string|bytes>`` field (absent
    ones are empty, as protobuf defines; the last occurrence wins)."""
    key = b""
    value = b""
    for inner in read_fields(field.bytes_value):
        if inner.number == 1:
            key = inner.bytes_value
        elif inner.number == 2:
            value = inner.bytes_value
    return key, value


# --- rewriting in place ------------------------------------------------------------------------


def splice(data: bytes, start: int, end: int, replacement: bytes) -> tuple[bytes, int]:
    """``data`` with ``data[start:end]`` replaced; and how much longer it got (may be < 0)."""
    if not 0 <= start <= end <= len(data):
        raise ValueError(f"bad splice range {start}:{end} of {len(data)} bytes")
    return data[:start] + replacement + data[end:], len(replacement) - (end - start)


def rewrite_varint(data: bytes, field: Field, value: int) -> tuple[bytes, int]:
    """``data`` with the VARINT ``field`` (read from ``data``) set to ``value``, everything
    else untouched; and the size delta, to patch the lengths that enclose the field (a frame
    size, a header size, the length of a nested message)."""
    if field.wire_type is not WireType.VARINT:
        raise ProtocolError(f"protobuf: field {field.number} is not a varint")
    return splice(data, field.value_offset, field.end, encode_varint(value))
