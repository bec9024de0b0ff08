"""Lengths a header declares: refused from the header alone, and reported as declared.

Dubbo's body length is a signed 32-bit int; Thrift's method name length (strict or
old-style binary, compact) and frame length are checked against the limits as soon as
they are read, instead of waiting for bytes that can never make the message valid.
"""

from __future__ import annotations

import struct

import pytest
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TCompactProtocol import TCompactProtocol
from thrift.Thrift import TMessageType
from thrift.transport.TTransport import TMemoryBuffer

from metaprotocol.codecs.dubbo import DubboCodec
from metaprotocol.codecs.dubbo.header import build_header, parse_header
from metaprotocol.codecs.thrift import ThriftCodec
from metaprotocol.core.codec import Side
from metaprotocol.core.message import NEED_DATA, ErrorType, Message, ProtocolError

# -- Dubbo ------------------------------------------------------------------------------------


def test_dubbo_all_ones_length_is_reported_as_declared() -> None:
    header = b"\xda\xbb\xc2\x00" + (7).to_bytes(8, "big") + b"\xff\xff\xff\xff"
    codec = DubboCodec(Side.DOWNSTREAM, {}, 1 << 20)
    with pytest.raises(ProtocolError) as info:
        codec.decode(bytearray(header))
    text = str(info.value)
    assert "-1" in text and "0xffffffff" in text and "15 bytes" not in text
    assert info.value.fatal
    reply = codec.encode_error(info.value.request, info.value.error_type, text)
    assert reply is not None and parse_header(reply).request_id == 7


def test_dubbo_oversize_names_the_declared_body_length() -> None:
    codec = DubboCodec(Side.DOWNSTREAM, {}, 1024)
    with pytest.raises(ProtocolError) as info:
        codec.decode(bytearray(build_header(0xC2, 0, 1, 0x7FFFFFFF)))
    assert info.value.error_type is ErrorType.MESSAGE_TOO_LARGE
    assert "body of 2147483647 bytes" in str(info.value)
    assert "max_message_size 1024" in str(info.value)


# -- Thrift -----------------------------------------------------------------------------------

LIMIT = 1 << 20


def message_header(protocol: str, name: str) -> bytes:
    """A CALL header written by Apache Thrift (no body: only the header matters here)."""
    memory = TMemoryBuffer()
    proto = (TBinaryProtocol if protocol == "binary" else TCompactProtocol)(memory)
    proto.writeMessageBegin(name, TMessageType.CALL, 1)
    value: bytes = memory.getvalue()
    return value


def test_old_style_binary_declaring_a_2gib_name_is_refused_at_once() -> None:
    # Old-style (non-strict) binary: i32 name length first; 0x7fffffff with a few name bytes.
    data = struct.pack("!i", 0x7FFFFFFF) + b"getUser"
    codec = ThriftCodec(Side.DOWNSTREAM, {}, LIMIT)
    with pytest.raises(ProtocolError) as info:
        codec.decode(bytearray(data))
    assert info.value.fatal and info.value.error_type is ErrorType.MESSAGE_TOO_LARGE
    assert "2147483647" in str(info.value)
    assert codec.encode_error(None, info.value.error_type, str(info.value))


@pytest.mark.parametrize("protocol", ["binary", "compact"])
def test_unframed_name_over_max_message_size_is_refused_at_once(protocol: str) -> None:
    header = message_header(protocol, "m" * 2000)
    codec = ThriftCodec(Side.DOWNSTREAM, {"transport": "unframed"}, 1000)
    with pytest.raises(ProtocolError) as info:
        codec.decode(bytearray(header[:20]))  # the name length is in; the name is not
    assert info.value.error_type is ErrorType.MESSAGE_TOO_LARGE


@pytest.mark.parametrize("protocol", ["binary", "compact"])
def test_framed_name_longer_than_its_frame_is_refused_before_the_frame_ends(
    protocol: str,
) -> None:
    # A frame of 100 bytes whose message header declares a name of 2000: only 20 sent.
    header = message_header(protocol, "m" * 2000)
    data = struct.pack("!i", 100) + header[:16]
    for options in ({}, {"transport": "framed"}):
        codec = ThriftCodec(Side.DOWNSTREAM, options, LIMIT)
        with pytest.raises(ProtocolError) as info:
            codec.decode(bytearray(data))
        assert info.value.fatal and info.value.error_type is ErrorType.MESSAGE_TOO_LARGE


@pytest.mark.parametrize("protocol", ["binary", "compact"])
def test_a_name_that_fits_still_waits_for_the_rest(protocol: str) -> None:
    header = message_header(protocol, "getUser")
    frame = struct.pack("!i", len(header) + 1) + header + b"\x00"
    codec = ThriftCodec(Side.DOWNSTREAM, {}, LIMIT)
    buffer = bytearray()
    for byte in frame[:-1]:
        buffer.append(byte)
        assert codec.decode(buffer) is NEED_DATA
    buffer += frame[-1:]
    message = codec.decode(buffer)
    assert isinstance(message, Message) and message.properties["method"] == "getUser"
