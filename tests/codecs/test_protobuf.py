"""The protobuf field helper against google.protobuf's own encoder and parser (the oracle).

A message type with a field of every scalar kind, a nested message, a packed repeated field
and a map is declared as a descriptor; hypothesis fills it, google.protobuf serialises it and
the helper must read back the same values (and the other way round). Truncations, overlong
varints, bad wire types and groups are checked by hand.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from hypothesis import given, settings
from hypothesis import strategies as st

from metaprotocol.codecs.protobuf import (
    Field,
    WireType,
    as_int32,
    as_int64,
    encode_len_field,
    encode_tag,
    encode_varint,
    encode_varint_field,
    read_fields,
    read_map_entry,
    read_message,
    read_tag,
    read_varint,
    rewrite_varint,
    skip_field,
    splice,
    varint_size,
    zigzag_decode,
    zigzag_encode,
)
from metaprotocol.core.message import ProtocolError

_F = descriptor_pb2.FieldDescriptorProto


def _sample_class() -> Any:
    file = descriptor_pb2.FileDescriptorProto(name="sample.proto", package="t", syntax="proto3")
    inner = file.message_type.add(name="Inner")
    inner.field.add(name="n", number=1, type=_F.TYPE_UINT32, label=_F.LABEL_OPTIONAL)
    message = file.message_type.add(name="Sample")
    kinds = [
        ("u64", 1, _F.TYPE_UINT64), ("i32", 2, _F.TYPE_INT32), ("i64", 3, _F.TYPE_INT64),
        ("s32", 4, _F.TYPE_SINT32), ("s64", 5, _F.TYPE_SINT64), ("f32", 6, _F.TYPE_FIXED32),
        ("f64", 7, _F.TYPE_FIXED64), ("sf32", 8, _F.TYPE_SFIXED32), ("data", 9, _F.TYPE_BYTES),
        ("text", 10, _F.TYPE_STRING), ("dbl", 13, _F.TYPE_DOUBLE),
        ("big", 536870911, _F.TYPE_UINT32),
    ]  # fmt: skip
    for name, number, kind in kinds:
        message.field.add(name=name, number=number, type=kind, label=_F.LABEL_OPTIONAL)
    message.field.add(
        name="inner", number=11, type=_F.TYPE_MESSAGE, type_name=".t.Inner",
        label=_F.LABEL_OPTIONAL,
    )  # fmt: skip
    message.field.add(name="packed", number=12, type=_F.TYPE_UINT32, label=_F.LABEL_REPEATED)
    entry = message.nested_type.add(name="MEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=_F.TYPE_BYTES, label=_F.LABEL_OPTIONAL)
    message.field.add(
        name="m", number=14, type=_F.TYPE_MESSAGE, type_name=".t.Sample.MEntry",
        label=_F.LABEL_REPEATED,
    )  # fmt: skip
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Sample"))


Sample = _sample_class()

U32 = st.integers(0, 2**32 - 1)
samples = st.fixed_dictionaries(
    {},
    optional={
        "u64": st.integers(0, 2**64 - 1),
        "i32": st.integers(-(2**31), 2**31 - 1),
        "i64": st.integers(-(2**63), 2**63 - 1),
        "s32": st.integers(-(2**31), 2**31 - 1),
        "s64": st.integers(-(2**63), 2**63 - 1),
        "f32": U32,
        "f64": st.integers(0, 2**64 - 1),
        "sf32": st.integers(-(2**31), 2**31 - 1),
        "data": st.binary(max_size=300),
        "text": st.text(max_size=50),
        "dbl": st.floats(allow_nan=False),
        "big": U32,
        "inner": U32,
        "packed": st.lists(U32, max_size=10),
        "m": st.dictionaries(st.text(max_size=10), st.binary(max_size=20), max_size=4),
    },
)


def _build(values: dict[str, Any]) -> Any:
    message = Sample()
    for name, value in values.items():
        if name == "inner":
            message.inner.n = value
        elif name == "packed":
            message.packed.extend(value)
        elif name == "m":
            for key, item in value.items():
                message.m[key] = item
        else:
            setattr(message, name, value)
    return message


def _is_default(value: Any) -> bool:
    """proto3 leaves default values off the wire (but -0.0 has a bit set, so it is sent)."""
    if isinstance(value, float):
        return struct.pack("<d", value) == bytes(8)
    return value in (0, b"", "", [], {})


@settings(max_examples=300, deadline=None)
@given(samples)
def test_reads_what_google_protobuf_writes(values: dict[str, Any]) -> None:
    message = _build(values)
    data = message.SerializeToString()
    fields = read_message(data)
    got: dict[str, Any] = {}
    for number, found in fields.items():
        last = found[-1]
        if number == 1:
            got["u64"] = last.int_value
        elif number == 2:
            got["i32"] = as_int32(last.int_value)
        elif number == 3:
            got["i64"] = as_int64(last.int_value)
        elif number == 4:
            got["s32"] = zigzag_decode(last.int_value)
        elif number == 5:
            got["s64"] = zigzag_decode(last.int_value)
        elif number == 6:
            assert last.wire_type is WireType.I32
            got["f32"] = last.int_value
        elif number == 7:
            assert last.wire_type is WireType.I64
            got["f64"] = last.int_value
        elif number == 8:
            got["sf32"] = struct.unpack("<i", struct.pack("<I", last.int_value))[0]
        elif number == 9:
            got["data"] = last.bytes_value
        elif number == 10:
            got["text"] = last.text()
        elif number == 13:
            got["dbl"] = struct.unpack("<d", struct.pack("<Q", last.int_value))[0]
        elif number == 536870911:
            got["big"] = last.int_value
        elif number == 11:
            inner = read_message(last.bytes_value)
            got["inner"] = inner[1][-1].int_value if 1 in inner else 0
        elif number == 12:  # packed: one LEN field of varints
            payload = last.bytes_value
            pos, items = 0, []
            while pos < len(payload):
                item, pos = read_varint(payload, pos, len(payload))
                items.append(item)
            got["packed"] = items
        elif number == 14:
            got["m"] = {k.decode(): v for k, v in map(read_map_entry, found)}
    expected = {k: v for k, v in values.items() if not _is_default(v)}
    if values.get("inner") == 0 and "inner" in values:
        expected["inner"] = 0  # an empty nested message is still sent
    assert got == expected
    # Every field is found exactly where google.protobuf put it, and nothing else is there.
    assert b"".join(data[f.offset : f.end] for f in read_fields(data)) == data


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 2**29 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(-(2**63), -1),
    st.binary(max_size=200),
)
def test_google_protobuf_reads_what_the_helper_writes(
    number: int, unsigned: int, negative: int, payload: bytes
) -> None:
    del number
    data = (
        encode_varint_field(1, unsigned)
        + encode_varint_field(3, negative)
        + encode_varint_field(5, zigzag_encode(negative))
        + encode_len_field(9, payload)
        + encode_len_field(11, encode_varint_field(1, unsigned & 0xFFFF_FFFF))
        + encode_len_field(14, encode_len_field(1, b"k") + encode_len_field(2, payload))
    )
    message = Sample()
    message.ParseFromString(data)
    assert message.u64 == unsigned
    assert message.i64 == negative
    assert message.s64 == negative
    assert message.data == payload
    assert message.inner.n == unsigned & 0xFFFF_FFFF
    assert dict(message.m) == {"k": payload}
    assert len(encode_varint(unsigned)) == varint_size(unsigned)
    assert len(encode_varint(negative)) == varint_size(negative) == 10


@settings(max_examples=200, deadline=None)
@given(samples, st.integers(0, 2**64 - 1))
def test_rewrite_varint_changes_only_that_field(values: dict[str, Any], new: int) -> None:
    values = {**values, "u64": values.get("u64", 0) or 1}  # field 1 present
    data = _build(values).SerializeToString()
    # Put the varint in the middle so the bytes after it move.
    data = data + encode_len_field(9, b"after")
    field = read_message(data)[1][-1]
    rewritten, delta = rewrite_varint(data, field, new)
    assert (
        len(rewritten) - len(data) == delta == varint_size(new) - (field.end - field.value_offset)
    )
    before, after = Sample(), Sample()
    before.ParseFromString(data)
    after.ParseFromString(rewritten)
    assert after.u64 == new
    after.u64 = before.u64
    assert after == before


def test_every_prefix_is_a_message_or_a_protocol_error() -> None:
    message = _build(
        {"u64": 2**63, "i32": -5, "f64": 7, "f32": 9, "data": b"x" * 200, "inner": 300,
         "packed": [1, 300, 70000], "m": {"a": b"b"}, "big": 5}
    )  # fmt: skip
    data = message.SerializeToString()
    complete = {0} | {f.end for f in read_fields(data)}
    for length in range(len(data)):
        if length in complete:
            ends = [f.end for f in read_fields(data, 0, length)]
            assert ends == sorted(e for e in complete if 0 < e <= length)
            continue
        with pytest.raises(ProtocolError):
            read_fields(data, 0, length)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x80", "truncated"),
        (b"\xff" * 10 + b"\x01", "longer than 10"),
        (b"\xff" * 9 + b"\x02", "above 64"),
    ],
)
def test_bad_varints(data: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        read_varint(data, 0, len(data))


def test_varint_limits_and_zigzag() -> None:
    assert read_varint(b"\xff" * 9 + b"\x01", 0, 10) == (2**64 - 1, 10)
    assert read_varint(b"\x80\x00", 0, 2) == (0, 2)  # not minimal, still valid protobuf
    assert read_varint(b"\x96\x01\xff", 0, 2) == (150, 2)  # stops at ``end``, not at len
    with pytest.raises(ProtocolError):
        read_varint(b"\x96\x01", 0, 1)
    assert [zigzag_encode(v) for v in (0, -1, 1, -2, 2**31 - 1, -(2**31))] == [
        0, 1, 2, 3, 2**32 - 2, 2**32 - 1,
    ]  # fmt: skip
    for value in (0, -1, 1, -(2**63), 2**63 - 1):
        assert zigzag_decode(zigzag_encode(value)) == value
    with pytest.raises(ValueError):
        encode_varint(2**64)
    with pytest.raises(ValueError):
        encode_tag(0, WireType.VARINT)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x0e\x00", "wire type 6"),
        (b"\x0f\x00", "wire type 7"),
        (b"\x00\x00", "field number 0"),
        (b"\x0a\x05abc", "runs past"),
        (b"\x0d\x01\x02", "runs past"),  # I32 with 2 bytes
        (b"\x09" + b"\x00" * 7, "runs past"),  # I64 with 7 bytes
        (b"\x0b\x08\x01", "truncated"),  # group never ended
        (b"\x0b\x14", "ended by 2"),  # group 1 ended by the end of group 2
        (b"\x0c", "without its start"),
        (b"\x0b" * 65 + b"\x0c" * 65, "too deep"),
    ],
)
def test_malformed_messages(data: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        read_fields(data)


def test_skipping_unknown_fields_of_every_wire_type() -> None:
    unknown = (
        encode_varint_field(20, 2**63)
        + encode_tag(21, WireType.I64) + b"\x01" * 8
        + encode_len_field(22, b"skip me")
        + encode_tag(23, WireType.SGROUP) + encode_varint_field(1, 5)
        + encode_tag(24, WireType.SGROUP) + encode_tag(24, WireType.EGROUP)
        + encode_tag(23, WireType.EGROUP)
        + encode_tag(25, WireType.I32) + b"\x02" * 4
    )  # fmt: skip
    data = unknown + encode_varint_field(1, 42)
    pos, numbers = 0, []
    while pos < len(data):
        number, wire, pos = read_tag(data, pos, len(data))
        numbers.append(number)
        if number == 1:
            break
        pos = skip_field(data, pos, len(data), wire, number)
    assert numbers == [20, 21, 22, 23, 25, 1]
    fields = read_fields(data)
    assert [f.wire_type for f in fields][:5] == [
        WireType.VARINT, WireType.I64, WireType.LEN, WireType.SGROUP, WireType.I32,
    ]  # fmt: skip
    # google.protobuf keeps the unknown fields and agrees on the known one.
    message = Sample()
    message.ParseFromString(data)
    assert message.u64 == 42


def test_field_accessors_refuse_the_wrong_wire_type() -> None:
    varint, text = read_fields(encode_varint_field(1, 7) + encode_len_field(2, b"\xff"))
    with pytest.raises(ProtocolError):
        _ = varint.bytes_value
    with pytest.raises(ProtocolError):
        _ = text.int_value
    with pytest.raises(ProtocolError, match="UTF-8"):
        text.text()
    with pytest.raises(ProtocolError):
        rewrite_varint(b"", text, 1)
    assert isinstance(varint, Field) and "VARINT" in repr(varint)
    with pytest.raises(ProtocolError):
        read_fields(b"\x08\x01", 0, 5)  # bounds outside the buffer


def test_splice_returns_the_size_delta() -> None:
    assert splice(b"abcdef", 2, 4, b"XYZ") == (b"abXYZef", 1)
    assert splice(b"abcdef", 1, 5, b"") == (b"af", -4)
    with pytest.raises(ValueError):
        splice(b"ab", 1, 3, b"")
