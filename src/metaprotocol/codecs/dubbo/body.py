"""Dubbo request and response bodies in Hessian2: routing fields, attachments, rewriting.

A request body (DubboCodec.encodeRequestData) is a Hessian2 stream of:
dubbo version, service path, service version, method name, parameter-types
descriptor (JVM descriptors such as ``Ljava/lang/String;I``), one value per
parameter, then the attachments map. The args are skipped, never built.

A response body with status 20 starts with an int flag:
0 exception, 1 value, 2 null value, 3/4/5 the same followed by an attachments map.
Any other status carries a Hessian2 string (the error message).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, NamedTuple

from metaprotocol.codecs.dubbo.header import HEADER_SIZE, DubboHeader, parse_header
from metaprotocol.codecs.dubbo.hessian2 import (
    DEFAULT_MAX_DEPTH,
    SCALAR_SIZE,
    Hessian2Error,
    ReadContext,
    read_int,
    read_string,
    read_value,
    skip_type,
    skip_value,
    write_string,
)

__all__ = [
    "RESPONSE_FLAGS_WITH_ATTACHMENTS",
    "DubboRequest",
    "ScanMemo",
    "count_parameters",
    "parse_request",
    "response_properties",
    "rewrite_attachments",
    "scan_request",
    "skip_response_value",
]

RESPONSE_FLAGS_WITH_ATTACHMENTS: Final = frozenset({3, 4, 5})

_MAX_DESC_CACHE: Final = 256


def count_parameters(desc: str) -> int:
    """Count the parameters in a JVM parameter descriptor (``[`` arrays, ``L...;`` classes)."""
    count = 0
    i = 0
    n = len(desc)
    while i < n:
        c = desc[i]
        while c == "[":
            i += 1
            if i >= n:
                raise Hessian2Error(f"bad parameter descriptor {desc!r}")
            c = desc[i]
        if c == "L":
            i = desc.find(";", i)
            if i < 0:
                raise Hessian2Error(f"bad parameter descriptor {desc!r}")
        elif c not in "ZBCDFIJSV":
            raise Hessian2Error(f"bad parameter descriptor {desc!r}")
        i += 1
        count += 1
    return count


def _is_string_tag(b: int) -> bool:
    return b < 0x20 or 0x30 <= b <= 0x33 or b == 0x52 or b == 0x53


def _is_plain_tag(b: int) -> bool:
    """A value that takes no reference number and defines no class: a scalar, a string or
    bytes. Anything else (map, list, object, class definition, back-reference) is tied to
    the stream's numbering of earlier values."""
    return (
        b in SCALAR_SIZE
        or _is_string_tag(b)
        or 0x20 <= b <= 0x2F
        or 0x34 <= b <= 0x37
        or (b == 0x41 or b == 0x42)
    )


class ScanMemo:
    """The last request scanned on a connection: its prefix and attachments bytes, parsed.

    Requests on one connection usually repeat the same dubbo version, service,
    version, method and descriptor, and often the same attachments. Equal
    bytes parse to equal results, so a byte comparison (one C call) replaces
    the parse. Only an attachments map whose parse needed no class
    definitions or references (plain strings and scalars) is remembered.
    """

    __slots__ = ("attachments", "fixed", "map_props", "nargs", "prefix")

    def __init__(self) -> None:
        self.prefix = b""
        self.fixed: list[str | None] = []
        self.nargs = 0
        self.attachments = b""
        self.map_props: dict[str, str] = {}


def _fast_string(frame: bytes, text: str, pos: int, end: int) -> tuple[str | None, int]:
    """A short or medium ASCII string straight from ``text``; else the general reader."""
    b = frame[pos]
    if b < 0x20:
        start = pos + 1
        stop = start + b
    elif 0x30 <= b <= 0x33:
        start = pos + 2
        stop = start + (((b - 0x30) << 8) | frame[pos + 1])
    else:
        return read_string(frame, pos, end)
    s = text[start:stop]
    if s.isascii() and stop <= end:
        return s, stop
    return read_string(frame, pos, end)


def scan_request(
    frame: bytes,
    desc_counts: dict[str, int],
    max_depth: int = DEFAULT_MAX_DEPTH,
    memo: ScanMemo | None = None,
) -> tuple[dict[str, str], int]:
    """Extract routing properties from a Hessian2 request frame; return them and the
    offset of the attachments map (``len(frame)`` when the body has none).

    Strings are sliced from ``frame.decode("latin-1")``: ``str.isascii()`` is
    O(1), so a short ASCII string costs one slice. IndexError is how a short
    body shows up on the fast paths.
    """
    end = len(frame)
    text = ""
    try:
        # Slice comparisons, not bytes.startswith: compiled, a method called by name parses
        # its arguments from a tuple, which costs more than the slice.
        if (
            memo is not None
            and memo.prefix
            and frame[HEADER_SIZE : HEADER_SIZE + len(memo.prefix)] == memo.prefix
        ):
            pos = HEADER_SIZE + len(memo.prefix)
            fixed = memo.fixed
            nargs = memo.nargs
        else:
            text = frame.decode("latin-1")
            pos = HEADER_SIZE
            fixed = []
            for _ in range(5):  # dubbo version, path, version, method, descriptor
                b = frame[pos]
                if b < 0x20:
                    stop = pos + 1 + b
                    s = text[pos + 1 : stop]
                    if s.isascii() and stop <= end:
                        fixed.append(s)
                        pos = stop
                        continue
                field, pos = _fast_string(frame, text, pos, end)
                fixed.append(field)
            desc = fixed[4] or ""
            found = desc_counts.get(desc)
            if found is None:
                found = count_parameters(desc)
                if len(desc_counts) < _MAX_DESC_CACHE:
                    desc_counts[desc] = found
            nargs = found
            if memo is not None:
                memo.prefix = frame[HEADER_SIZE:pos]
                memo.fixed = fixed
                memo.nargs = nargs
        ctx: ReadContext | None = None
        for _ in range(nargs):
            b = frame[pos]
            if b < 0x20 and frame[pos + 1 : pos + 1 + b].isascii():
                pos += 1 + b
            elif 0x80 <= b <= 0xBF:
                pos += 1
            else:
                if ctx is None:
                    ctx = ReadContext(max_depth)
                pos = skip_value(frame, pos, end, ctx)
        if pos > end:
            raise Hessian2Error("truncated Hessian2 value")
        attach_start = pos
        if (
            memo is not None
            and memo.attachments
            and end - pos == len(memo.attachments)
            and frame[pos:] == memo.attachments
        ):
            props = memo.map_props.copy()
        elif pos < end:
            if not text:
                text = frame.decode("latin-1")
            props = {}
            cacheable = True
            b = frame[pos]
            if b == 0x48:
                pos += 1
            elif b == 0x4D:
                pos = skip_type(frame, pos + 1, end)
            else:
                raise Hessian2Error(f"expected the attachments map, got byte 0x{b:02x}")
            while (b := frame[pos]) != 0x5A:
                key: str | None
                if b < 0x20 or 0x30 <= b <= 0x33 or b == 0x52 or b == 0x53:
                    key, pos = _fast_string(frame, text, pos, end)
                else:
                    key = None
                    cacheable = False
                    if ctx is None:
                        ctx = ReadContext(max_depth)
                    pos = skip_value(frame, pos, end, ctx)
                b = frame[pos]
                value: str | None = None
                if b < 0x20 or 0x30 <= b <= 0x33 or b == 0x52 or b == 0x53:
                    value, pos = _fast_string(frame, text, pos, end)
                elif (size := SCALAR_SIZE.get(b)) is not None:
                    pos += size  # a scalar: int, long, double, date, bool, null
                else:
                    cacheable = False
                    if ctx is None:
                        ctx = ReadContext(max_depth)
                    pos = skip_value(frame, pos, end, ctx)
                if key is not None and value is not None:
                    props[key.lower()] = value
            if pos + 1 > end:
                raise Hessian2Error("truncated attachments map")
            if memo is not None:
                if cacheable and pos + 1 == end:
                    memo.attachments = frame[attach_start:]
                    memo.map_props = props.copy()
                else:
                    memo.attachments = b""
        else:
            props = {}
    except IndexError:
        raise Hessian2Error("truncated Dubbo request body") from None
    # The body's fields win over same-named attachments.
    if fixed[1] is not None:
        props["interface"] = fixed[1]
    if fixed[2]:
        props["version"] = fixed[2]
    if fixed[3] is not None:
        props["method"] = fixed[3]
    return props, attach_start


class DubboRequest(NamedTuple):
    """Everything a Hessian2 request body says, read as plain data (for tests and tools)."""

    header: DubboHeader
    dubbo_version: str | None
    service: str | None
    version: str | None
    method: str | None
    param_desc: str
    args: list[Any]
    attachments: dict[Any, Any]


def parse_request(frame: bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> DubboRequest:
    """Read a whole Hessian2 request frame with the general reader (slow, complete)."""
    header = parse_header(frame)
    end = HEADER_SIZE + header.body_length
    if len(frame) < end:
        raise Hessian2Error("truncated Dubbo frame")
    ctx = ReadContext(max_depth)
    fields: list[str | None] = []
    pos = HEADER_SIZE
    for _ in range(5):
        value, pos = read_string(frame, pos, end)
        fields.append(value)
    desc = fields[4] or ""
    args = []
    for _ in range(count_parameters(desc)):
        arg, pos = read_value(frame, pos, end, ctx)
        args.append(arg)
    attachments: dict[Any, Any] = {}
    if pos < end:
        found, pos = read_value(frame, pos, end, ctx)
        if not isinstance(found, dict):
            raise Hessian2Error("attachments are not a map")
        attachments = found
    return DubboRequest(header, fields[0], fields[1], fields[2], fields[3], desc, args, attachments)


def skip_response_value(frame: bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> tuple[int, int]:
    """For a status-20 Hessian2 response: return (response flag, offset after the value)."""
    end = len(frame)
    ctx = ReadContext(max_depth)
    flag, pos = read_int(frame, HEADER_SIZE, end)
    if flag in (0, 1, 3, 4):
        pos = skip_value(frame, pos, end, ctx)
    elif flag not in (2, 5):
        raise Hessian2Error(f"unknown Dubbo response flag {flag}")
    return flag, pos


def response_properties(frame: bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> dict[str, str]:
    """The string attachments of a status-20 response with flag 3/4/5, lower-cased keys."""
    end = len(frame)
    ctx = ReadContext(max_depth)
    flag, pos = skip_response_value(frame, max_depth)
    if flag not in RESPONSE_FLAGS_WITH_ATTACHMENTS or pos >= end:
        return {}
    b = frame[pos]
    if b == 0x48:
        pos += 1
    elif b == 0x4D:
        pos = skip_type(frame, pos + 1, end)
    else:
        raise Hessian2Error(f"expected the attachments map, got byte 0x{b:02x}")
    props: dict[str, str] = {}
    while True:
        if pos >= end:
            raise Hessian2Error("truncated attachments map")
        if frame[pos] == 0x5A:
            return props
        key: str | None = None
        if _is_string_tag(frame[pos]):
            key, pos = read_string(frame, pos, end)
        else:
            pos = skip_value(frame, pos, end, ctx)
        value: str | None = None
        if pos < end and _is_string_tag(frame[pos]):
            value, pos = read_string(frame, pos, end)
        else:
            pos = skip_value(frame, pos, end, ctx)
        if key is not None and value is not None:
            props[key.lower()] = value


def rewrite_attachments(
    frame: bytes,
    map_start: int,
    add: Iterable[tuple[str, str]],
    remove: Iterable[str],
    ctx: ReadContext,
) -> tuple[bytes, int]:
    """Re-serialise the attachments map starting at ``map_start``.

    Entries keep their original bytes unless replaced; an added key replaces
    an existing key that matches it case-insensitively (keeping that key's
    spelling and position), new keys go at the end; removal is
    case-insensitive. ``map_start == len(frame)`` means "no map yet": a new
    ``H`` map is written. Returns (new map bytes, offset after the old map).

    Hessian2 numbers every map, list and object as it appears and refers back to them
    (and to class definitions) by number. Dropping a replaced or removed value that holds
    any of those would renumber what follows, so when a later kept entry could refer
    back (its key or value is not plain) this raises Hessian2Error instead of
    producing a body that decodes to different values.
    """
    end = len(frame)
    pending = {k.lower(): (k, v) for k, v in add}
    removed = {k.lower() for k in remove}
    out: list[bytes] = []
    if map_start >= end:
        out.append(b"H")
        map_end = end
    else:
        b = frame[map_start]
        if b == 0x48:
            pos = map_start + 1
        elif b == 0x4D:
            pos = skip_value(frame, map_start + 1, end, ctx)
        else:
            raise Hessian2Error(f"expected the attachments map, got byte 0x{b:02x}")
        out.append(frame[map_start:pos])
        done: set[str] = set()
        dropped_numbered: str | None = None  # a dropped entry whose value was numbered
        while True:
            if pos >= end:
                raise Hessian2Error("truncated attachments map")
            if frame[pos] == 0x5A:
                map_end = pos + 1
                break
            entry_start = pos
            key: str | None = None
            if _is_string_tag(frame[pos]):
                key, pos = read_string(frame, pos, end)
            else:
                pos = skip_value(frame, pos, end, ctx)
            if pos >= end:
                raise Hessian2Error("truncated attachments map")
            tag = frame[pos]
            plain = key is not None and _is_plain_tag(tag)
            pos = skip_value(frame, pos, end, ctx)
            lower = key.lower() if key is not None else None
            dropped = lower is not None and (lower in pending or lower in removed)
            if dropped and not plain and tag != 0x51:  # a back-reference takes no number
                dropped_numbered = key
            elif not dropped and not plain and dropped_numbered is not None:
                raise Hessian2Error(
                    f"dropping attachment {dropped_numbered!r} would renumber the values "
                    f"later entries refer back to"
                )
            if lower is not None and lower in pending:
                if lower not in done:
                    done.add(lower)
                    out.append(write_string(key or "") + write_string(pending[lower][1]))
                continue
            if lower is not None and lower in removed:
                continue
            out.append(frame[entry_start:pos])
        for lower in done:
            del pending[lower]
    for key, value in pending.values():
        out.append(write_string(key) + write_string(value))
    out.append(b"Z")
    return b"".join(out), map_end
