"""One pass over a tRPC protobuf header: its routing properties and its varint fields.

The per-message hot path of the tRPC codec. It reads the wire format with the protobuf
helper's primitives but builds no ``Field`` for the strings and map entries it only needs as
text (``read_fields`` would build one object per field and per map entry); varint fields come
back as ``Field`` objects so an id can be rewritten in place. Same checks as ``read_fields``:
anything malformed raises ``ProtocolError``.
"""

from __future__ import annotations

from collections.abc import Mapping

from metaprotocol.codecs.protobuf import Field, WireType, read_varint, skip_field
from metaprotocol.core.message import ProtocolError

__all__ = ["scan_header"]


def scan_header(
    data: bytes, start: int, end: int, names: Mapping[int, str], trans_info: int
) -> tuple[dict[str, str], dict[int, Field]]:
    """The properties of the message in ``data[start:end]`` (every UTF-8 entry of the
    ``trans_info`` map field, then the string fields ``names`` maps to property names, which
    win) and its varint fields by number (the last of each)."""
    props: dict[str, str] = {}
    named: dict[str, str] = {}
    varints: dict[int, Field] = {}
    pos = start
    while pos < end:
        tag_at = pos
        key = data[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = read_varint(data, pos, end)
        number = key >> 3
        wire = key & 7
        if number == 0 or wire > 5:
            raise ProtocolError(f"protobuf: invalid tag {key}")
        if wire == 0:
            value, after = read_varint(data, pos, end)
            varints[number] = Field(number, WireType.VARINT, tag_at, pos, after, value)
        elif wire == 2:
            length, pos = read_varint(data, pos, end)
            after = pos + length
            if after > end:
                raise ProtocolError(f"protobuf: field {number} runs past the end")
            if number == trans_info:
                _map_entry(data, pos, after, props)
            else:
                name = names.get(number)
                if name is not None:
                    try:
                        named[name] = data[pos:after].decode()
                    except UnicodeDecodeError:
                        raise ProtocolError(f"protobuf: field {number} is not UTF-8") from None
        else:
            after = skip_field(data, pos, end, WireType(wire), number)
        pos = after
    if named:
        props.update(named)
    return props, varints


def _map_entry(data: bytes, pos: int, end: int, props: dict[str, str]) -> None:
    """Add one ``map<string, bytes>`` entry to ``props`` (skipped if it is not UTF-8)."""
    key = b""
    value = b""
    while pos < end:
        tag = data[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = read_varint(data, pos, end)
        number = tag >> 3
        wire = tag & 7
        if number == 0 or wire > 5:
            raise ProtocolError(f"protobuf: invalid tag {tag}")
        if wire == 2:
            length, pos = read_varint(data, pos, end)
            after = pos + length
            if after > end:
                raise ProtocolError(f"protobuf: field {number} runs past the end")
            if number == 1:
                key = data[pos:after]
            elif number == 2:
                value = data[pos:after]
        else:
            after = skip_field(data, pos, end, WireType(wire), number)
        pos = after
    try:
        text_key = key.decode().lower()
        text_value = value.decode()
    except UnicodeDecodeError:
        return  # not text: forwarded untouched, just not routable
    props[text_key] = text_value
