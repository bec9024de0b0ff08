"""A bounded Hessian 2.0 reader, skipper and small writer: plain data only, never user objects.

Byte codes follow the Hessian 2.0 serialization grammar
(http://hessian.caucho.com/doc/hessian-serialization.html, section 3 and the
"bytecode map" of section 6). Parsing never imports or instantiates anything
named on the wire: a typed object (class definition ``C`` + instance ``O`` /
``0x60``-``0x6f``) is either skipped or read as a :class:`HessianObject`, a
plain record holding the class *name* as a string.

Every function takes ``(data, pos, end)`` and returns the new position; they
raise :class:`Hessian2Error` on truncated or malformed input. Work is linear in
the input: each element consumes at least one byte and declared counts are
checked against the bytes left before looping; nesting is bounded by
``max_depth``.

String lengths count UTF-16 code units (as Java writes them): a character
outside the BMP is two units, written either as a CESU-8 surrogate pair
(Java) or as one 4-byte UTF-8 sequence.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "SCALAR_SIZE",
    "Hessian2Error",
    "HessianDate",
    "HessianObject",
    "ReadContext",
    "read_int",
    "read_string",
    "read_value",
    "skip_type",
    "skip_value",
    "write_int",
    "write_long",
    "write_string",
    "write_string_map",
    "write_value",
]

DEFAULT_MAX_DEPTH: Final = 64

_I32: Final = struct.Struct(">i")
_I64: Final = struct.Struct(">q")
_F64: Final = struct.Struct(">d")
_F32I: Final = struct.Struct(">i")  # 0x5f: double as int32 thousandths (hessian-lite, Dubbo)
_H16: Final = struct.Struct(">H")
_H16S: Final = struct.Struct(">h")


class Hessian2Error(ValueError):
    """The bytes are not a valid (or are a too deeply nested) Hessian 2.0 value."""


@dataclass(frozen=True, slots=True)
class HessianObject:
    """A typed object read as plain data: the Java class name and its fields, nothing more."""

    class_name: str
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class HessianDate:
    """A Hessian date: milliseconds since the epoch, UTC."""

    millis: int


@dataclass(slots=True)
class ReadContext:
    """Per-stream state: class definitions seen so far (and, when reading values, refs)."""

    max_depth: int = DEFAULT_MAX_DEPTH
    class_fields: list[int] = field(default_factory=list)  # field count per class definition
    class_defs: list[tuple[str, list[str]]] = field(default_factory=list)  # read_value only
    refs: list[Any] = field(default_factory=list)  # read_value only


def _truncated() -> Hessian2Error:
    return Hessian2Error("truncated Hessian2 value")


# ---------------------------------------------------------------- numbers


def read_int(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """Read an int (any int or long encoding, as Java's ``readInt`` accepts)."""
    if pos >= end:
        raise _truncated()
    b = data[pos]
    if 0x80 <= b <= 0xBF:
        return b - 0x90, pos + 1
    if 0xC0 <= b <= 0xCF:
        if pos + 2 > end:
            raise _truncated()
        return ((b - 0xC8) << 8) | data[pos + 1], pos + 2
    if 0xD0 <= b <= 0xD7:
        if pos + 3 > end:
            raise _truncated()
        return ((b - 0xD4) << 16) | (data[pos + 1] << 8) | data[pos + 2], pos + 3
    if b == 0x49 or b == 0x59:  # 'I', 'Y'
        if pos + 5 > end:
            raise _truncated()
        return _I32.unpack_from(data, pos + 1)[0], pos + 5
    if 0xD8 <= b <= 0xEF:
        return b - 0xE0, pos + 1
    if 0xF0 <= b <= 0xFF:
        if pos + 2 > end:
            raise _truncated()
        return ((b - 0xF8) << 8) | data[pos + 1], pos + 2
    if 0x38 <= b <= 0x3F:
        if pos + 3 > end:
            raise _truncated()
        return ((b - 0x3C) << 16) | (data[pos + 1] << 8) | data[pos + 2], pos + 3
    if b == 0x4C:  # 'L'
        if pos + 9 > end:
            raise _truncated()
        return _I64.unpack_from(data, pos + 1)[0], pos + 9
    raise Hessian2Error(f"expected an int, got byte 0x{b:02x}")


def _count(value: int, pos: int, end: int) -> int:
    """Check a declared element count against the bytes left (each element takes >= 1 byte)."""
    if value < 0 or value > end - pos:
        raise Hessian2Error(f"declared count {value} exceeds the {end - pos} bytes left")
    return value


# ---------------------------------------------------------------- strings


def _utf8_span(data: bytes, pos: int, end: int, units: int) -> int:
    """Return the position after ``units`` UTF-16 code units of (modified) UTF-8 at ``pos``."""
    stop = pos + units
    if stop <= end and data[pos:stop].isascii():
        return stop
    while units > 0:
        if pos >= end:
            raise _truncated()
        b = data[pos]
        if b < 0x80:
            pos += 1
            units -= 1
        elif 0xC0 <= b < 0xE0:
            pos += 2
            units -= 1
        elif 0xE0 <= b < 0xF0:
            pos += 3
            units -= 1
        elif 0xF0 <= b < 0xF8:
            pos += 4
            units -= 2
        else:
            raise Hessian2Error(f"invalid UTF-8 lead byte 0x{b:02x}")
    if pos > end or units < 0:
        raise _truncated() if pos > end else Hessian2Error("string splits a character")
    return pos


def _string_chunk(data: bytes, pos: int, end: int) -> tuple[int, int, bool]:
    """Parse one string chunk header: (start of UTF-8, UTF-16 unit count, is final chunk)."""
    if pos >= end:
        raise _truncated()
    b = data[pos]
    if b < 0x20:
        return pos + 1, b, True
    if 0x30 <= b <= 0x33:
        if pos + 2 > end:
            raise _truncated()
        return pos + 2, ((b - 0x30) << 8) | data[pos + 1], True
    if b == 0x53 or b == 0x52:  # 'S' final, 'R' non-final
        if pos + 3 > end:
            raise _truncated()
        return pos + 3, _H16.unpack_from(data, pos + 1)[0], b == 0x53
    raise Hessian2Error(f"expected a string chunk, got byte 0x{b:02x}")


def _skip_string(data: bytes, pos: int, end: int) -> int:
    final = False
    while not final:
        start, units, final = _string_chunk(data, pos, end)
        pos = _utf8_span(data, start, end, units)
    return pos


def _decode_utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    # Java writes characters outside the BMP as CESU-8 surrogate pairs.
    try:
        text = raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise Hessian2Error("invalid UTF-8 in string") from exc
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def read_string(data: bytes, pos: int, end: int) -> tuple[str | None, int]:
    """Read a string (chunked or not) or null; anything else is an error."""
    if pos >= end:
        raise _truncated()
    b = data[pos]
    if b < 0x20:  # fast path: short string
        stop = pos + 1 + b
        raw = data[pos + 1 : stop]
        if stop <= end and raw.isascii():
            return raw.decode("ascii"), stop
    elif b == 0x4E:
        return None, pos + 1
    parts: list[bytes] = []
    final = False
    while not final:
        start, units, final = _string_chunk(data, pos, end)
        pos = _utf8_span(data, start, end, units)
        parts.append(data[start:pos])
    return _decode_utf8(b"".join(parts)), pos


# ---------------------------------------------------------------- skipping


def skip_type(data: bytes, pos: int, end: int) -> int:
    """A type is a string (the name) or an int (index into the stream's type list)."""
    if pos >= end:
        raise _truncated()
    b = data[pos]
    if b < 0x20 or 0x30 <= b <= 0x33 or b == 0x52 or b == 0x53:
        return _skip_string(data, pos, end)
    return read_int(data, pos, end)[1]


def _skip_binary(data: bytes, pos: int, end: int) -> int:
    while True:
        if pos >= end:
            raise _truncated()
        b = data[pos]
        if 0x20 <= b <= 0x2F:
            pos += 1 + b - 0x20
            final = True
        elif 0x34 <= b <= 0x37:
            if pos + 2 > end:
                raise _truncated()
            pos += 2 + (((b - 0x34) << 8) | data[pos + 1])
            final = True
        elif b == 0x41 or b == 0x42:  # 'A' non-final, 'B' final
            if pos + 3 > end:
                raise _truncated()
            pos += 3 + _H16.unpack_from(data, pos + 1)[0]
            final = b == 0x42
        else:
            raise Hessian2Error(f"expected a binary chunk, got byte 0x{b:02x}")
        if pos > end:
            raise _truncated()
        if final:
            return pos


# Fixed-size values by leading byte: total size in bytes (including the tag).
SCALAR_SIZE: dict[int, int] = {
    0x4E: 1,  # N null
    0x54: 1,  # T
    0x46: 1,  # F
    0x5B: 1,  # double 0.0
    0x5C: 1,  # double 1.0
    0x5D: 2,  # double as byte
    0x5E: 3,  # double as short
    0x5F: 5,  # double as int (thousandths)
    0x44: 9,  # D double
    0x4A: 9,  # date, 64-bit millis
    0x4B: 5,  # date, 32-bit minutes
    0x49: 5,  # I int
    0x59: 5,  # Y long as int
    0x4C: 9,  # L long
}
for _b in range(0x80, 0xC0):
    SCALAR_SIZE[_b] = 1
for _b in range(0xC0, 0xD0):
    SCALAR_SIZE[_b] = 2
for _b in range(0xD0, 0xD8):
    SCALAR_SIZE[_b] = 3
for _b in range(0xD8, 0xF0):
    SCALAR_SIZE[_b] = 1
for _b in range(0xF0, 0x100):
    SCALAR_SIZE[_b] = 2
for _b in range(0x38, 0x40):
    SCALAR_SIZE[_b] = 3
del _b


def skip_value(data: bytes, pos: int, end: int, ctx: ReadContext, depth: int = 0) -> int:
    """Return the position after one Hessian2 value, building nothing from it."""
    if pos >= end:
        raise _truncated()
    b = data[pos]
    size = SCALAR_SIZE.get(b)
    if size is not None:
        pos += size
        if pos > end:
            raise _truncated()
        return pos
    if b < 0x20 or 0x30 <= b <= 0x33 or b == 0x52 or b == 0x53:
        return _skip_string(data, pos, end)
    if 0x20 <= b <= 0x2F or 0x34 <= b <= 0x37 or b == 0x41 or b == 0x42:
        return _skip_binary(data, pos, end)
    if b == 0x51:  # 'Q' reference: an int, nothing to follow
        return read_int(data, pos + 1, end)[1]
    if depth >= ctx.max_depth:
        raise Hessian2Error(f"Hessian2 value nested deeper than {ctx.max_depth}")
    depth += 1
    if b == 0x48 or b == 0x4D:  # 'H' untyped map, 'M' typed map
        pos = pos + 1 if b == 0x48 else skip_type(data, pos + 1, end)
        while True:
            if pos >= end:
                raise _truncated()
            if data[pos] == 0x5A:
                return pos + 1
            pos = skip_value(data, pos, end, ctx, depth)
            pos = skip_value(data, pos, end, ctx, depth)
    if 0x70 <= b <= 0x7F or b == 0x56 or b == 0x58:  # fixed-length lists
        pos += 1
        if 0x70 <= b <= 0x77 or b == 0x56:
            pos = skip_type(data, pos, end)
        if b >= 0x78:
            count = b - 0x78
        elif b >= 0x70:
            count = b - 0x70
        else:
            count, pos = read_int(data, pos, end)
        for _ in range(_count(count, pos, end)):
            pos = skip_value(data, pos, end, ctx, depth)
        return pos
    if b == 0x55 or b == 0x57:  # 'U' typed / 'W' untyped variable-length list
        pos = skip_type(data, pos + 1, end) if b == 0x55 else pos + 1
        while True:
            if pos >= end:
                raise _truncated()
            if data[pos] == 0x5A:
                return pos + 1
            pos = skip_value(data, pos, end, ctx, depth)
    if b == 0x43:  # 'C' class definition, then the value that follows it
        pos = _skip_string(data, pos + 1, end)
        nfields, pos = read_int(data, pos, end)
        for _ in range(_count(nfields, pos, end)):
            pos = _skip_string(data, pos, end)
        ctx.class_fields.append(nfields)
        ctx.class_defs.append(("", []))
        return skip_value(data, pos, end, ctx, depth)
    if 0x60 <= b <= 0x6F or b == 0x4F:  # object instance
        if b == 0x4F:
            index, pos = read_int(data, pos + 1, end)
        else:
            index, pos = b - 0x60, pos + 1
        if not 0 <= index < len(ctx.class_fields):
            raise Hessian2Error(f"object refers to undefined class definition {index}")
        for _ in range(_count(ctx.class_fields[index], pos, end)):
            pos = skip_value(data, pos, end, ctx, depth)
        return pos
    raise Hessian2Error(f"unexpected Hessian2 byte 0x{b:02x}")


# ---------------------------------------------------------------- reading plain values


def read_value(
    data: bytes, pos: int, end: int, ctx: ReadContext, depth: int = 0
) -> tuple[Any, int]:
    """Read one value as plain Python data (None, bool, int, float, str, bytes, list, dict,
    HessianDate, HessianObject). Typed maps and lists lose their type name."""
    if pos >= end:
        raise _truncated()
    b = data[pos]
    if b < 0x20 or 0x30 <= b <= 0x33 or b == 0x52 or b == 0x53 or b == 0x4E:
        return read_string(data, pos, end)
    if b == 0x54 or b == 0x46:
        return b == 0x54, pos + 1
    if b >= 0x80 or 0x38 <= b <= 0x3F or b in (0x49, 0x4C, 0x59):
        return read_int(data, pos, end)
    if b in (0x5B, 0x5C, 0x5D, 0x5E, 0x5F, 0x44):
        return _read_double(data, pos, end)
    if b == 0x4A or b == 0x4B:
        stop = skip_value(data, pos, end, ctx, depth)
        if b == 0x4A:
            return HessianDate(_I64.unpack_from(data, pos + 1)[0]), stop
        return HessianDate(_I32.unpack_from(data, pos + 1)[0] * 60_000), stop
    if 0x20 <= b <= 0x2F or 0x34 <= b <= 0x37 or b == 0x41 or b == 0x42:
        return _read_binary(data, pos, end)
    if b == 0x51:
        index, pos = read_int(data, pos + 1, end)
        if not 0 <= index < len(ctx.refs):
            raise Hessian2Error(f"reference {index} to an unknown value")
        return ctx.refs[index], pos
    if depth >= ctx.max_depth:
        raise Hessian2Error(f"Hessian2 value nested deeper than {ctx.max_depth}")
    depth += 1
    if b == 0x48 or b == 0x4D:
        pos = pos + 1 if b == 0x48 else skip_type(data, pos + 1, end)
        result: dict[Any, Any] = {}
        ctx.refs.append(result)
        while True:
            if pos >= end:
                raise _truncated()
            if data[pos] == 0x5A:
                return result, pos + 1
            key, pos = read_value(data, pos, end, ctx, depth)
            value, pos = read_value(data, pos, end, ctx, depth)
            try:
                result[key] = value
            except TypeError:
                # An unhashable key (a list or map) is named, not printed: through
                # back-references a few bytes can stand for a value whose repr is huge.
                result[f"<{type(key).__name__} key {len(result)}>"] = value
    if 0x70 <= b <= 0x7F or b in (0x55, 0x56, 0x57, 0x58):
        items: list[Any] = []
        ctx.refs.append(items)
        pos += 1
        if 0x70 <= b <= 0x77 or b == 0x55 or b == 0x56:
            pos = skip_type(data, pos, end)
        if b == 0x55 or b == 0x57:
            while True:
                if pos >= end:
                    raise _truncated()
                if data[pos] == 0x5A:
                    return items, pos + 1
                item, pos = read_value(data, pos, end, ctx, depth)
                items.append(item)
        if b >= 0x78:
            count = b - 0x78
        elif b >= 0x70:
            count = b - 0x70
        else:
            count, pos = read_int(data, pos, end)
        for _ in range(_count(count, pos, end)):
            item, pos = read_value(data, pos, end, ctx, depth)
            items.append(item)
        return items, pos
    if b == 0x43:
        name, pos = read_string(data, pos + 1, end)
        nfields, pos = read_int(data, pos, end)
        names: list[str] = []
        for _ in range(_count(nfields, pos, end)):
            fname, pos = read_string(data, pos, end)
            names.append(fname or "")
        ctx.class_fields.append(nfields)
        ctx.class_defs.append((name or "", names))
        return read_value(data, pos, end, ctx, depth)
    if 0x60 <= b <= 0x6F or b == 0x4F:
        if b == 0x4F:
            index, pos = read_int(data, pos + 1, end)
        else:
            index, pos = b - 0x60, pos + 1
        if not 0 <= index < len(ctx.class_defs):
            raise Hessian2Error(f"object refers to undefined class definition {index}")
        class_name, field_names = ctx.class_defs[index]
        fields: dict[str, Any] = {}
        obj = HessianObject(class_name, fields)
        ctx.refs.append(obj)
        # A definition met by skip_value kept only its field count: name fields by position.
        for i in range(_count(ctx.class_fields[index], pos, end)):
            fname = field_names[i] if i < len(field_names) else f"_{i}"
            fields[fname], pos = read_value(data, pos, end, ctx, depth)
        return obj, pos
    raise Hessian2Error(f"unexpected Hessian2 byte 0x{b:02x}")


def _read_double(data: bytes, pos: int, end: int) -> tuple[float, int]:
    b = data[pos]
    size = SCALAR_SIZE[b]
    if pos + size > end:
        raise _truncated()
    if b == 0x5B:
        value = 0.0
    elif b == 0x5C:
        value = 1.0
    elif b == 0x5D:
        value = float(data[pos + 1] - 256 if data[pos + 1] > 127 else data[pos + 1])
    elif b == 0x5E:
        value = float(_H16S.unpack_from(data, pos + 1)[0])
    elif b == 0x5F:
        value = _F32I.unpack_from(data, pos + 1)[0] * 0.001
    else:
        value = _F64.unpack_from(data, pos + 1)[0]
    return value, pos + size


def _read_binary(data: bytes, pos: int, end: int) -> tuple[bytes, int]:
    parts: list[bytes] = []
    while True:
        b = data[pos] if pos < end else -1
        if 0x20 <= b <= 0x2F:
            start, pos, final = pos + 1, pos + 1 + b - 0x20, True
        elif 0x34 <= b <= 0x37 and pos + 2 <= end:
            start = pos + 2
            pos, final = start + (((b - 0x34) << 8) | data[pos + 1]), True
        elif (b == 0x41 or b == 0x42) and pos + 3 <= end:
            start = pos + 3
            pos, final = start + _H16.unpack_from(data, pos + 1)[0], b == 0x42
        else:
            raise _truncated() if b < 0 else Hessian2Error("bad binary chunk")
        if pos > end:
            raise _truncated()
        parts.append(data[start:pos])
        if final:
            return b"".join(parts), pos


# ---------------------------------------------------------------- writing


def write_int(value: int) -> bytes:
    """Encode a 32-bit int in its shortest form."""
    if -0x10 <= value <= 0x2F:
        return bytes((0x90 + value,))
    if -0x800 <= value <= 0x7FF:
        return bytes((0xC8 + (value >> 8), value & 0xFF))
    if -0x40000 <= value <= 0x3FFFF:
        return bytes((0xD4 + (value >> 16), (value >> 8) & 0xFF, value & 0xFF))
    if -(2**31) <= value < 2**31:
        return b"I" + _I32.pack(value)
    raise ValueError(f"{value} does not fit a 32-bit int")


def write_long(value: int) -> bytes:
    """Encode a 64-bit long in its shortest form."""
    if -0x08 <= value <= 0x0F:
        return bytes((0xE0 + value,))
    if -0x800 <= value <= 0x7FF:
        return bytes((0xF8 + (value >> 8), value & 0xFF))
    if -0x40000 <= value <= 0x3FFFF:
        return bytes((0x3C + (value >> 16), (value >> 8) & 0xFF, value & 0xFF))
    if -(2**31) <= value < 2**31:
        return b"Y" + _I32.pack(value)
    return b"L" + _I64.pack(value)


def _java_units(text: str) -> str:
    """Split characters outside the BMP into surrogate pairs (Java's UTF-16 view)."""
    if text.isascii() or max(text) <= "\uffff":
        return text
    return "".join(
        chr(0xD800 + ((ord(c) - 0x10000) >> 10)) + chr(0xDC00 + ((ord(c) - 0x10000) & 0x3FF))
        if ord(c) > 0xFFFF
        else c
        for c in text
    )


def write_string(text: str) -> bytes:
    """Encode a string the way Java's Hessian2Output does (chunks of 32768 UTF-16 units)."""
    if len(text) < 0x20 and text.isascii():
        return bytes((len(text),)) + text.encode("ascii")
    units = _java_units(text)
    out = bytearray()
    while len(units) > 0x8000:
        cut = 0x8000
        if 0xD800 <= ord(units[cut - 1]) <= 0xDBFF:  # never split a surrogate pair
            cut -= 1
        out += b"R" + _H16.pack(cut) + units[:cut].encode("utf-8", "surrogatepass")
        units = units[cut:]
    n = len(units)
    if n < 0x20:
        out.append(n)
    elif n < 0x400:
        out += bytes((0x30 + (n >> 8), n & 0xFF))
    else:
        out += b"S" + _H16.pack(n)
    out += units.encode("utf-8", "surrogatepass")
    return bytes(out)


def write_string_map(items: dict[str, str] | list[tuple[str, str]]) -> bytes:
    """Encode an untyped map of strings (``H`` ... ``Z``), as Dubbo writes attachments."""
    pairs = items.items() if isinstance(items, dict) else items
    return b"H" + b"".join(write_string(k) + write_string(v) for k, v in pairs) + b"Z"


def write_value(value: Any) -> bytes:
    """Encode plain data: None, bool, int (int or long), float, str, bytes, list, dict."""
    if value is None:
        return b"N"
    if value is True:
        return b"T"
    if value is False:
        return b"F"
    if isinstance(value, int):
        return write_int(value) if -(2**31) <= value < 2**31 else write_long(value)
    if isinstance(value, float):
        return b"D" + _F64.pack(value)
    if isinstance(value, str):
        return write_string(value)
    if isinstance(value, bytes):
        out = bytearray()
        view = value
        while len(view) > 0x8000:
            out += b"A" + _H16.pack(0x8000) + view[:0x8000]
            view = view[0x8000:]
        if len(view) <= 15:
            out.append(0x20 + len(view))
        else:
            out += b"B" + _H16.pack(len(view))
        return bytes(out + view)
    if isinstance(value, list):
        n = len(value)
        head = bytes((0x78 + n,)) if n <= 7 else b"X" + write_int(n)
        return head + b"".join(write_value(v) for v in value)
    if isinstance(value, dict):
        return b"H" + b"".join(write_value(k) + write_value(v) for k, v in value.items()) + b"Z"
    raise TypeError(f"cannot encode {type(value).__name__} as Hessian2")
