"""Each codec's ``reply_status`` hook: the status the client saw, in the protocol's words.

Thrift replies are written by Apache Thrift's own protocols (binary, compact, THeader)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TCompactProtocol import TCompactProtocol
from thrift.protocol.TProtocol import TProtocolBase
from thrift.Thrift import TApplicationException, TMessageType, TType
from thrift.transport.THeaderTransport import THeaderClientType, THeaderTransport
from thrift.transport.TTransport import TFramedTransport, TMemoryBuffer, TTransportBase

from metaprotocol.codecs.dubbo import DubboCodec
from metaprotocol.codecs.http1 import Http1Codec
from metaprotocol.codecs.redis import RedisCodec
from metaprotocol.codecs.thrift import ThriftCodec
from metaprotocol.core.codec import ReportsReplyStatus, Side
from metaprotocol.core.message import ErrorType, Message

MAX = 1 << 20


def _downstream(factory: Callable[[Side, dict[str, str], int], object]) -> ReportsReplyStatus:
    codec = factory(Side.DOWNSTREAM, {}, MAX)
    assert isinstance(codec, ReportsReplyStatus)
    return codec


def test_http_status_code() -> None:
    codec = _downstream(Http1Codec)
    assert codec.reply_status(b"HTTP/1.1 503 Service Unavailable\r\n\r\n") == "503"
    assert codec.reply_status(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n") == "200"
    assert codec.reply_status(b"garbage") == ""


def test_dubbo_status_byte() -> None:
    codec = _downstream(DubboCodec)
    header = bytes([0xDA, 0xBB, 0x02, 70]) + (7).to_bytes(8, "big") + (0).to_bytes(4, "big")
    assert codec.reply_status(header) == "70"
    assert codec.reply_status(header[:10]) == ""


def test_redis_error_prefix_or_ok() -> None:
    codec = _downstream(RedisCodec)
    assert codec.reply_status(b"-WRONGTYPE Operation against a key\r\n") == "WRONGTYPE"
    assert codec.reply_status(b"-ERR\r\n") == "ERR"
    assert codec.reply_status(b"!21\r\nSYNTAX invalid syntax\r\n") == "SYNTAX"  # RESP3 blob
    assert codec.reply_status(b"+OK\r\n") == "OK"
    assert codec.reply_status(b"$1\r\nA\r\n") == "OK"


Writer = Callable[[TTransportBase], TProtocolBase]


def _thrift_reply(protocol: Writer, kind: str, framing: str) -> bytes:
    buf = TMemoryBuffer()
    transport: TTransportBase
    if framing == "header":
        # The header names the payload's protocol (binary 0, compact 2).
        payload = 2 if protocol is TCompactProtocol else 0
        transport = THeaderTransport(buf, [THeaderClientType.HEADERS], payload)
    else:
        transport = TFramedTransport(buf) if framing == "framed" else buf
    out = protocol(transport)
    if kind == "app_exception":
        out.writeMessageBegin("ping", TMessageType.EXCEPTION, 3)
        TApplicationException(TApplicationException.UNKNOWN_METHOD, "no ping").write(out)
    else:
        out.writeMessageBegin("ping", TMessageType.REPLY, 3)
        out.writeStructBegin("ping_result")
        if kind == "ok":
            out.writeFieldBegin("success", TType.I32, 0)
            out.writeI32(1)
        else:  # a declared exception: field 1 of the result struct
            out.writeFieldBegin("oops", TType.STRUCT, 1)
            out.writeStructBegin("Oops")
            out.writeFieldStop()
            out.writeStructEnd()
        out.writeFieldEnd()
        out.writeFieldStop()
        out.writeStructEnd()
    out.writeMessageEnd()
    transport.flush()
    return bytes(buf.getvalue())


@pytest.mark.parametrize("framing", ["framed", "unframed", "header"])
@pytest.mark.parametrize("protocol", [TBinaryProtocol, TCompactProtocol])
@pytest.mark.parametrize(
    ("kind", "status"),
    [("ok", "OK"), ("user_exception", "USER_EXCEPTION"), ("app_exception", "UNKNOWN_METHOD")],
)
def test_thrift_reply_kinds(protocol: Writer, framing: str, kind: str, status: str) -> None:
    codec = _downstream(ThriftCodec)
    assert codec.reply_status(_thrift_reply(protocol, kind, framing)) == status


def test_thrift_local_error_reply_names_its_exception_type() -> None:
    thrift = ThriftCodec(Side.DOWNSTREAM, {}, MAX)
    call = TMemoryBuffer()
    framed = TFramedTransport(call)
    out = TBinaryProtocol(framed)
    out.writeMessageBegin("ping", TMessageType.CALL, 9)
    out.writeStructBegin("ping_args")
    out.writeFieldStop()
    out.writeStructEnd()
    out.writeMessageEnd()
    framed.flush()
    message = thrift.decode(bytearray(call.getvalue()))
    assert isinstance(message, Message)
    reply = thrift.encode_error(message, ErrorType.ROUTE_NOT_FOUND, "no route")
    assert reply is not None
    assert thrift.reply_status(reply) == "UNKNOWN_METHOD"
    assert thrift.reply_status(b"\x00\x00") == ""
