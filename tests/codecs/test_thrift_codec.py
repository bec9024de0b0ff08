"""Thrift codec against golden frames from Apache thrift, thriftpy2 and the shared wire vectors."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import thriftpy2
import thriftpy2.protocol
import thriftpy2.transport
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TCompactProtocol import TCompactProtocol
from thrift.protocol.THeaderProtocol import THeaderProtocol
from thrift.Thrift import TApplicationException, TMessageType, TType
from thrift.transport.THeaderTransport import THeaderClientType
from thrift.transport.TTransport import TFramedTransport, TMemoryBuffer
from thriftpy2.thrift import TClient, TProcessor

from metaprotocol.codecs.thrift import ThriftCodec
from metaprotocol.core.codec import Codec, Ordering, Side
from metaprotocol.core.message import (
    NEED_DATA,
    ErrorType,
    Message,
    MessageType,
    ProtocolError,
    ResponseStatus,
)
from tests.codecs.vectors import VECTORS_PATH

VECTORS = VECTORS_PATH  # the repository's copy of the shared wire vectors
IDL = Path(__file__).parent / "data" / "calculator.thrift"
PY_PROTOCOL: Any = thriftpy2.protocol  # thriftpy2's factories and transports are untyped
PY_TRANSPORT: Any = thriftpy2.transport
calculator: Any = thriftpy2.load(str(IDL), module_name="calculator_thrift")

TYPE_NAMES = {"CALL": "call", "REPLY": "reply", "EXCEPTION": "exception", "ONEWAY": "oneway"}


def decode_all(codec: ThriftCodec, data: bytes, *, step: int = 0) -> list[Message]:
    """Feed ``data`` whole (step 0) or ``step`` bytes at a time; return every message."""
    buf = bytearray()
    out: list[Message] = []
    chunks = [data] if step == 0 else [data[i : i + step] for i in range(0, len(data), step)]
    for chunk in chunks:
        buf += chunk
        while True:
            result = codec.decode(buf)
            if result is NEED_DATA:
                break
            assert isinstance(result, Message)
            out.append(result)
    assert not buf, f"{len(buf)} bytes left undecoded"
    return out


def decode_one(data: bytes, side: Side = Side.DOWNSTREAM, **options: str) -> Message:
    messages = decode_all(ThriftCodec(side, options, 1 << 20), data)
    assert len(messages) == 1
    return messages[0]


# -- golden frames from the shared wire vectors -------------------------------------------------


def thrift_vectors() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads(VECTORS.read_text())
    return [entry for entry in entries if entry["protocol"] == "thrift"]


@pytest.mark.parametrize("entry", thrift_vectors(), ids=lambda entry: str(entry["id"]))
@pytest.mark.parametrize("step", [0, 1])
def test_wire_vector(entry: dict[str, Any], step: int) -> None:
    raw = bytes.fromhex(entry["hex"])
    expected = entry["expected"]
    side = Side.DOWNSTREAM if entry["direction"] == "request" else Side.UPSTREAM
    codec = ThriftCodec(side, {}, 1 << 20)
    [message] = decode_all(codec, raw, step=step)
    assert message.frame == raw
    assert message.request_id == expected["seqid"]
    props = message.properties
    wire_name = f"{props['service']}:{props['method']}" if "service" in props else props["method"]
    assert wire_name == expected["method"]
    if "service" in expected:
        assert props["service"] == expected["service"]
    assert props["message_type"] == TYPE_NAMES[expected["message_type"]]
    kind = expected["message_type"]
    if kind == "CALL":
        assert message.type is MessageType.REQUEST
    elif kind == "ONEWAY":
        assert message.type is MessageType.ONEWAY
    else:
        assert message.type is MessageType.RESPONSE
        declared = kind == "REPLY" and "success" not in expected["fields"]
        failed = kind == "EXCEPTION" or declared
        assert message.status is (ResponseStatus.ERROR if failed else ResponseStatus.OK)
    assert codec.encode(message) is message.frame
    rewritten = codec.encode(message, request_id=77)
    [again] = decode_all(ThriftCodec(side, {}, 1 << 20), rewritten)
    assert again.request_id == 77
    assert again.properties == message.properties
    assert codec.encode(again, request_id=expected["seqid"]) == raw


# -- golden frames generated with Apache thrift ------------------------------------------------

ProtoFactory = Callable[[Any], Any]
APACHE_PROTOCOLS: dict[str, ProtoFactory] = {
    "binary": TBinaryProtocol,
    "binary-old": lambda trans: TBinaryProtocol(trans, strictWrite=False),
    "compact": TCompactProtocol,
}


def apache_frame(
    protocol: str,
    framed: bool,
    name: str,
    mtype: int,
    seqid: int,
    write_body: Callable[[Any], None],
) -> bytes:
    memory = TMemoryBuffer()
    trans = TFramedTransport(memory) if framed else memory
    proto = APACHE_PROTOCOLS[protocol](trans)
    proto.writeMessageBegin(name, mtype, seqid)
    write_body(proto)
    proto.writeMessageEnd()
    trans.flush()
    value: bytes = memory.getvalue()
    return value


def add_args(proto: Any) -> None:
    proto.writeStructBegin("add_args")
    for field_id, value in ((1, 20), (2, 22)):
        proto.writeFieldBegin("num", TType.I32, field_id)
        proto.writeI32(value)
        proto.writeFieldEnd()
    proto.writeFieldStop()
    proto.writeStructEnd()


def nested_result(proto: Any) -> None:
    """A result struct with nested containers, to exercise struct skipping."""
    proto.writeStructBegin("r")
    proto.writeFieldBegin("success", TType.LIST, 0)
    proto.writeListBegin(TType.STRUCT, 2)
    for index in range(2):
        proto.writeStructBegin("User")
        proto.writeFieldBegin("id", TType.I64, 1)
        proto.writeI64(-index * 10**12)
        proto.writeFieldEnd()
        proto.writeFieldBegin("attrs", TType.MAP, 4)
        proto.writeMapBegin(TType.STRING, TType.LIST, 1)
        proto.writeString("k")
        proto.writeListBegin(TType.DOUBLE, 3)
        for number in (1.5, -2.0, 3.25):
            proto.writeDouble(number)
        proto.writeListEnd()
        proto.writeMapEnd()
        proto.writeFieldEnd()
        proto.writeFieldBegin("flags", TType.SET, 9)
        proto.writeSetBegin(TType.BOOL, 2)
        proto.writeBool(True)
        proto.writeBool(False)
        proto.writeSetEnd()
        proto.writeFieldEnd()
        proto.writeFieldBegin("active", TType.BOOL, 5)
        proto.writeBool(index == 0)
        proto.writeFieldEnd()
        proto.writeFieldBegin("big", TType.I16, 300)  # long-form field id in compact
        proto.writeI16(-7)
        proto.writeFieldEnd()
        proto.writeFieldStop()
        proto.writeStructEnd()
    proto.writeListEnd()
    proto.writeFieldEnd()
    proto.writeFieldStop()
    proto.writeStructEnd()


def declared_exception(proto: Any) -> None:
    proto.writeStructBegin("r")
    proto.writeFieldBegin("ouch", TType.STRUCT, 1)
    proto.writeStructBegin("InvalidOperation")
    proto.writeFieldBegin("why", TType.STRING, 2)
    proto.writeString("negative")
    proto.writeFieldEnd()
    proto.writeFieldStop()
    proto.writeStructEnd()
    proto.writeFieldEnd()
    proto.writeFieldStop()
    proto.writeStructEnd()


def app_exception(proto: Any) -> None:
    TApplicationException(TApplicationException.UNKNOWN_METHOD, "nope").write(proto)


APACHE_CASES: list[tuple[str, int, Callable[[Any], None], MessageType, ResponseStatus]] = [
    ("Calculator:add", TMessageType.CALL, add_args, MessageType.REQUEST, ResponseStatus.OK),
    ("users", TMessageType.REPLY, nested_result, MessageType.RESPONSE, ResponseStatus.OK),
    ("getUser", TMessageType.REPLY, declared_exception, MessageType.RESPONSE, ResponseStatus.ERROR),
    ("mul", TMessageType.EXCEPTION, app_exception, MessageType.RESPONSE, ResponseStatus.ERROR),
    ("zip", TMessageType.ONEWAY, add_args, MessageType.ONEWAY, ResponseStatus.OK),
]


def apache_cases() -> Iterator[Any]:
    for protocol in APACHE_PROTOCOLS:
        for framed in (True, False):
            for name, mtype, body, kind, status in APACHE_CASES:
                label = f"{protocol}-{'framed' if framed else 'buffered'}-{name}-{mtype}"
                yield pytest.param(protocol, framed, name, mtype, body, kind, status, id=label)


@pytest.mark.parametrize(
    ("protocol", "framed", "name", "mtype", "body", "kind", "status"), list(apache_cases())
)
def test_apache_golden(
    protocol: str,
    framed: bool,
    name: str,
    mtype: int,
    body: Callable[[Any], None],
    kind: MessageType,
    status: ResponseStatus,
) -> None:
    raw = apache_frame(protocol, framed, name, mtype, 1234567, body)
    side = Side.DOWNSTREAM if kind is not MessageType.RESPONSE else Side.UPSTREAM
    for step in (0, 1, 7):
        codec = ThriftCodec(side, {}, 1 << 20)
        # Three messages back to back: each must end exactly where the next begins.
        messages = decode_all(codec, raw * 3, step=step)
        assert [m.frame for m in messages] == [raw] * 3
        message = messages[0]
        assert message.type is kind
        assert message.status is status
        assert message.request_id == 1234567
        service, _, method = name.rpartition(":")
        assert message.properties["method"] == method
        assert message.properties.get("service") == (service or None)
        assert codec.encode(message) is message.frame
    # Explicit options decode the same bytes.
    explicit = {
        "transport": "framed" if framed else "unframed",
        "protocol": "compact" if protocol == "compact" else "binary",
    }
    assert decode_one(raw, side, **explicit).request_id == 1234567


@pytest.mark.parametrize("protocol", list(APACHE_PROTOCOLS))
@pytest.mark.parametrize("framed", [True, False])
@pytest.mark.parametrize("new_id", [0, 1, 127, 128, 300, 2**31 - 1, -1, -(2**31), 2**32 - 1])
def test_seqid_rewrite_matches_apache(protocol: str, framed: bool, new_id: int) -> None:
    """encode(request_id=X) gives exactly the bytes Apache writes for seqid X."""
    original = apache_frame(protocol, framed, "add", TMessageType.CALL, 5, add_args)
    codec = ThriftCodec(Side.UPSTREAM, {}, 1 << 20)
    message = decode_one(original)
    signed = new_id - 2**32 if new_id >= 2**31 else new_id
    expected = apache_frame(protocol, framed, "add", TMessageType.CALL, signed, add_args)
    assert codec.encode(message, request_id=new_id) == expected
    assert decode_one(expected).request_id == signed


def test_seqid_out_of_range_is_a_programming_error() -> None:
    message = decode_one(apache_frame("binary", True, "add", TMessageType.CALL, 5, add_args))
    codec = ThriftCodec(Side.UPSTREAM, {}, 1 << 20)
    with pytest.raises(ValueError, match="32-bit"):
        codec.encode(message, request_id=2**32)


# -- THeader -----------------------------------------------------------------------------------


def apache_header_frame(
    compact: bool,
    seqid: int,
    *,
    zlib_transform: bool = False,
    headers: dict[bytes, bytes] | None = None,
    mtype: int = TMessageType.CALL,
) -> bytes:
    memory = TMemoryBuffer()
    default = 2 if compact else 0
    proto = THeaderProtocol(memory, [THeaderClientType.HEADERS], default_protocol=default)
    if zlib_transform:
        proto.add_transform(1)
    for key, value in (headers or {}).items():
        proto.set_header(key, value)
    proto.writeMessageBegin("Calculator:add", mtype, seqid)
    add_args(proto)
    proto.writeMessageEnd()
    proto.trans.flush()
    header_frame: bytes = memory.getvalue()
    return header_frame


@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("zlib_transform", [False, True])
def test_theader_golden(compact: bool, zlib_transform: bool) -> None:
    headers = {b"Trace-Id": b"abc", b"method": b"spoofed"}
    raw = apache_header_frame(compact, 9, zlib_transform=zlib_transform, headers=headers)
    for step in (0, 1):
        [message] = decode_all(ThriftCodec(Side.DOWNSTREAM, {}, 1 << 20), raw, step=step)
        assert message.frame == raw
        assert message.request_id == 9
        assert message.properties["method"] == "add"  # pinned keys win over info headers
        assert message.properties["service"] == "Calculator"
        assert message.properties["trace-id"] == "abc"
    codec = ThriftCodec(Side.UPSTREAM, {"transport": "header"}, 1 << 20)
    rewritten = codec.encode(message, request_id=300)
    expected = apache_header_frame(compact, 300, zlib_transform=zlib_transform, headers=headers)
    assert rewritten == expected  # zlib payloads too: same deflate settings as Apache
    assert decode_one(rewritten).request_id == 300
    assert struct.unpack_from("!i", rewritten, 8)[0] == 300  # the THeader's own seqid


def test_theader_zlib_bomb_is_rejected() -> None:
    payload = zlib.compress(b"\x00" * 100_000)
    header = b"\x00\x01\x01\x00"  # binary, one transform: zlib, pad
    body = struct.pack("!HHiH", 0x0FFF, 0, 0, 1) + header + payload
    frame = struct.pack("!i", len(body)) + body
    codec = ThriftCodec(Side.DOWNSTREAM, {}, 4096)
    buf = bytearray(frame + frame)
    with pytest.raises(ProtocolError) as info:
        codec.decode(buf)
    assert info.value.error_type is ErrorType.MESSAGE_TOO_LARGE
    assert not info.value.fatal
    assert buf == bytearray(frame)  # the bad frame was consumed, the next one kept


def test_theader_unknown_transform_is_non_fatal() -> None:
    body = struct.pack("!HHiH", 0x0FFF, 0, 0, 1) + b"\x00\x01\x03\x00" + b"xx"
    frame = struct.pack("!i", len(body)) + body
    buf = bytearray(frame)
    with pytest.raises(ProtocolError, match="transform") as info:
        ThriftCodec(Side.DOWNSTREAM, {}, 1 << 20).decode(buf)
    assert not info.value.fatal
    assert not buf


# -- thriftpy2: client requests and processor replies ------------------------------------------


class Handler:
    def ping(self) -> None:
        return None

    def add(self, num1: int, num2: int) -> int:
        return num1 + num2

    def echo(self, text: str) -> str:
        return text

    def getUser(self, id: int, name: str) -> Any:
        if id < 0:
            raise calculator.InvalidOperation(whatOp=1, why="negative id")
        return calculator.User(
            id=id, name=name, tags=["a"], attrs={"k": 1}, active=True, score=1.5, codes={1, 2}
        )

    def zip(self, note: str) -> None:
        return None

    def users(self, input: list[Any], groups: dict[str, list[Any]]) -> list[Any]:
        return input + [user for group in groups.values() for user in group]


def thriftpy2_exchange(framed: bool, compact: bool, api: str, **kwargs: Any) -> tuple[bytes, bytes]:
    """A thriftpy2 client request and the thriftpy2 processor's reply, as raw bytes."""
    factory = (
        PY_PROTOCOL.TCompactProtocolFactory() if compact else PY_PROTOCOL.TBinaryProtocolFactory()
    )
    wrap = PY_TRANSPORT.TFramedTransport if framed else PY_TRANSPORT.TBufferedTransport
    out_memory = PY_TRANSPORT.TMemoryBuffer()
    out_trans = wrap(out_memory)
    client = TClient(calculator.Calculator, factory.get_protocol(out_trans))
    client._seqid = 41
    client._send(api, **kwargs)
    request = bytes(out_memory.getvalue())
    in_trans = wrap(PY_TRANSPORT.TMemoryBuffer(request))
    reply_memory = PY_TRANSPORT.TMemoryBuffer()
    reply_trans = wrap(reply_memory)
    processor = TProcessor(calculator.Calculator, Handler())
    processor.process(factory.get_protocol(in_trans), factory.get_protocol(reply_trans))
    reply_trans.flush()
    return request, bytes(reply_memory.getvalue())


def user(index: int) -> Any:
    return calculator.User(id=index, name=f"u{index}", tags=["x"] * index, flags=[True, False])


THRIFTPY2_CALLS: list[tuple[str, dict[str, Any], ResponseStatus]] = [
    ("add", {"num1": 1, "num2": 2}, ResponseStatus.OK),
    ("ping", {}, ResponseStatus.OK),
    ("echo", {"text": "héllo" * 50}, ResponseStatus.OK),
    ("getUser", {"id": 42, "name": "alice"}, ResponseStatus.OK),
    ("getUser", {"id": -1, "name": "bob"}, ResponseStatus.ERROR),
    ("users", {"input": [user(1), user(2)], "groups": {"g": [user(3)]}}, ResponseStatus.OK),
]


@pytest.mark.parametrize("framed", [True, False])
@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize(("api", "kwargs", "status"), THRIFTPY2_CALLS)
def test_thriftpy2_golden(
    framed: bool, compact: bool, api: str, kwargs: dict[str, Any], status: ResponseStatus
) -> None:
    request, reply = thriftpy2_exchange(framed, compact, api, **kwargs)
    for step in (0, 1, 5):
        [req] = decode_all(ThriftCodec(Side.DOWNSTREAM, {}, 1 << 20), request, step=step)
        [rep] = decode_all(ThriftCodec(Side.UPSTREAM, {}, 1 << 20), reply, step=step)
        assert req.frame == request and rep.frame == reply
        assert req.type is MessageType.REQUEST and rep.type is MessageType.RESPONSE
        assert req.request_id == rep.request_id == 41
        assert req.properties == {"method": api, "message_type": "call"}
        assert rep.properties == {"method": api, "message_type": "reply"}
        assert rep.status is status


def test_thriftpy2_oneway() -> None:
    request, reply = thriftpy2_exchange(True, True, "zip", note="bye")
    assert reply == b""
    message = decode_one(request)
    assert message.type is MessageType.ONEWAY
    assert not message.expects_response


# -- error replies -----------------------------------------------------------------------------


def apache_exception(
    protocol: str, framed: bool, name: str, seqid: int, kind: int, text: str
) -> bytes:
    def body(proto: Any) -> None:
        TApplicationException(kind, text).write(proto)

    return apache_frame(protocol, framed, name, TMessageType.EXCEPTION, seqid, body)


@pytest.mark.parametrize("protocol", ["binary", "compact"])
@pytest.mark.parametrize("framed", [True, False])
@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ErrorType.ROUTE_NOT_FOUND, 1),
        (ErrorType.TIMEOUT, 6),
        (ErrorType.NO_HEALTHY_UPSTREAM, 6),
        (ErrorType.UNAUTHENTICATED, 0),  # UNKNOWN: no TApplicationException type says "denied"
        (ErrorType.PERMISSION_DENIED, 0),
    ],
)
def test_encode_error_matches_apache(
    protocol: str, framed: bool, error: ErrorType, kind: int
) -> None:
    request = decode_one(
        apache_frame(protocol, framed, "Calc:add", TMessageType.CALL, 99, add_args)
    )
    codec = ThriftCodec(Side.DOWNSTREAM, {}, 1 << 20)
    reply = codec.encode_error(request, error, "no route for Calc:add")
    assert reply == apache_exception(
        protocol, framed, "Calc:add", 99, kind, "no route for Calc:add"
    )
    decoded = decode_one(reply or b"", Side.UPSTREAM)
    assert decoded.status is ResponseStatus.ERROR
    assert decoded.properties["message_type"] == "exception"


def test_encode_error_old_style_request_gets_strict_reply() -> None:
    request = decode_one(apache_frame("binary-old", False, "add", TMessageType.CALL, 3, add_args))
    reply = ThriftCodec(Side.DOWNSTREAM, {}, 1 << 20).encode_error(
        request, ErrorType.OVER_LIMIT, "slow down"
    )
    assert reply == apache_exception("binary", False, "add", 3, 6, "slow down")


@pytest.mark.parametrize("compact", [False, True])
def test_encode_error_theader(compact: bool) -> None:
    request = decode_one(apache_header_frame(compact, 12, zlib_transform=True))
    reply = ThriftCodec(Side.DOWNSTREAM, {}, 1 << 20).encode_error(
        request, ErrorType.ROUTE_NOT_FOUND, "x"
    )
    assert reply is not None and reply[4:6] == b"\x0f\xff"
    decoded = decode_one(reply, Side.UPSTREAM)
    assert decoded.request_id == 12 and decoded.status is ResponseStatus.ERROR
    assert decoded.properties == {
        "method": "add",
        "service": "Calculator",
        "message_type": "exception",
    }


@pytest.mark.parametrize(
    ("options", "first", "expect_prefix"),
    [
        ({}, None, b"\x00\x00\x00"),  # nothing detected yet: framed binary
        ({"transport": "unframed", "protocol": "compact"}, None, b"\x82\x61"),
        ({}, "compact-unframed", b"\x82\x61"),  # what the connection used so far
    ],
)
def test_encode_error_without_request(
    options: dict[str, str], first: str | None, expect_prefix: bytes
) -> None:
    codec = ThriftCodec(Side.DOWNSTREAM, options, 1 << 20)
    if first == "compact-unframed":
        decode_all(codec, apache_frame("compact", False, "add", TMessageType.CALL, 1, add_args))
    reply = codec.encode_error(None, ErrorType.MESSAGE_TOO_LARGE, "too big")
    assert reply is not None and reply.startswith(expect_prefix)
    decoded = decode_one(reply, Side.UPSTREAM)
    assert decoded.request_id == 0 and decoded.properties["method"] == ""


# -- limits, options, malformed input ----------------------------------------------------------


def test_class_attributes_and_protocol() -> None:
    codec = ThriftCodec(Side.DOWNSTREAM, {}, 1024)
    assert isinstance(codec, Codec)
    assert ThriftCodec.name == "thrift"
    assert ThriftCodec.ordering is Ordering.MULTIPLEXED
    assert ThriftCodec.supports_mutation is False
    message = decode_one(apache_frame("binary", True, "ping", TMessageType.CALL, 1, add_args))
    assert codec.encode_heartbeat_reply(message) is None


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"transport": "http"}, "transport"),
        ({"protocol": "json"}, "protocol"),
        ({"framing": "framed"}, "unknown option"),
    ],
)
def test_bad_options(options: dict[str, str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ThriftCodec(Side.DOWNSTREAM, options, 1024)


def test_framed_too_large_as_soon_as_length_arrives() -> None:
    codec = ThriftCodec(Side.DOWNSTREAM, {"transport": "framed"}, 1000)
    with pytest.raises(ProtocolError) as info:
        codec.decode(bytearray(struct.pack("!i", 1001)))
    assert info.value.error_type is ErrorType.MESSAGE_TOO_LARGE
    assert info.value.fatal
    auto = ThriftCodec(Side.DOWNSTREAM, {}, 1000)
    with pytest.raises(ProtocolError) as info:
        auto.decode(bytearray(struct.pack("!i", 5000) + b"\x80\x01"))
    assert info.value.error_type is ErrorType.MESSAGE_TOO_LARGE


def test_unframed_too_large_while_incomplete() -> None:
    raw = apache_frame("binary", False, "echo", TMessageType.CALL, 1, lambda p: string_arg(p, 5000))
    # The declared string length alone passes the limit: no need to wait for its bytes.
    with pytest.raises(ProtocolError) as info:
        ThriftCodec(Side.DOWNSTREAM, {}, 1000).decode(bytearray(raw[:30]))
    assert info.value.error_type is ErrorType.MESSAGE_TOO_LARGE
    # A list of many small elements: caught when the buffered part passes the limit.
    many = apache_frame("compact", False, "users", TMessageType.CALL, 1, many_lists)
    codec = ThriftCodec(Side.DOWNSTREAM, {}, 1000)
    buf = bytearray()
    with pytest.raises(ProtocolError) as info:
        for byte in many:
            buf.append(byte)
            assert codec.decode(buf) is NEED_DATA
    assert info.value.error_type is ErrorType.MESSAGE_TOO_LARGE
    assert len(buf) <= 1002


def string_arg(proto: Any, size: int) -> None:
    proto.writeStructBegin("a")
    proto.writeFieldBegin("text", TType.STRING, 1)
    proto.writeString("x" * size)
    proto.writeFieldEnd()
    proto.writeFieldStop()
    proto.writeStructEnd()


def many_lists(proto: Any) -> None:
    proto.writeStructBegin("a")
    for field_id in range(1, 600):
        proto.writeFieldBegin("f", TType.LIST, field_id)
        proto.writeListBegin(TType.I64, 1)
        proto.writeI64(field_id)
        proto.writeListEnd()
        proto.writeFieldEnd()
    proto.writeFieldStop()
    proto.writeStructEnd()


def test_deep_nesting_is_rejected() -> None:
    def deep(proto: Any) -> None:
        for _ in range(100):
            proto.writeStructBegin("s")
            proto.writeFieldBegin("s", TType.STRUCT, 1)
        proto.writeStructBegin("s")
        proto.writeFieldStop()
        proto.writeStructEnd()
        for _ in range(100):
            proto.writeFieldEnd()
            proto.writeFieldStop()
            proto.writeStructEnd()

    for protocol in ("binary", "compact"):
        raw = apache_frame(protocol, False, "x", TMessageType.CALL, 1, deep)
        with pytest.raises(ProtocolError, match="deep"):
            ThriftCodec(Side.DOWNSTREAM, {}, 1 << 20).decode(bytearray(raw))


@pytest.mark.parametrize(
    ("options", "data"),
    [
        ({}, b"\xff\xff\xff\xff\x00\x00"),  # negative frame length / bad first byte
        ({"transport": "framed"}, b"\xff\xff\xff\xf0"),
        ({}, b"\x80\x02\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00"),  # bad version
        ({}, b"\x82\x22\x00\x00\x00"),  # compact version 2
        ({}, b"\x82\xe1\x00\x00\x00"),  # compact message type 7
        ({"transport": "unframed"}, b"\x80\x01\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x05"),
        ({}, b"\x82\x21\xff\xff\xff\xff\xff\xff"),  # seqid varint too long
    ],
)
def test_malformed_fatal(options: dict[str, str], data: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        ThriftCodec(Side.DOWNSTREAM, options, 1 << 20).decode(bytearray(data))
    assert info.value.fatal


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # empty frame
        b"\x80\x01\x00\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00",  # message type 9
        b"\x80\x01\x00\x01\x00\x00\x00\x10ab",  # name longer than the frame
        b"\x80\x01\x00\x01\x00\x00\x00\x02\xff\xfe\x00\x00\x00\x01\x00",  # name not UTF-8
        b"\x80\x01\x00\x02\x00\x00\x00\x01a\x00\x00\x00\x01",  # reply with no result struct
    ],
)
def test_malformed_frame_is_consumed_and_non_fatal(payload: bytes) -> None:
    good = apache_frame("binary", True, "add", TMessageType.CALL, 1, add_args)
    codec = ThriftCodec(Side.DOWNSTREAM, {"transport": "framed"}, 1 << 20)
    buf = bytearray(struct.pack("!i", len(payload)) + payload + good)
    with pytest.raises(ProtocolError) as info:
        codec.decode(buf)
    assert not info.value.fatal
    assert buf == bytearray(good)
    message = codec.decode(buf)
    assert isinstance(message, Message) and message.properties["method"] == "add"


def test_protocol_mismatch_with_configured_protocol() -> None:
    compact = apache_frame("compact", True, "add", TMessageType.CALL, 1, add_args)
    with pytest.raises(ProtocolError):
        ThriftCodec(Side.DOWNSTREAM, {"protocol": "binary"}, 1 << 20).decode(bytearray(compact))


def test_downstream_locks_upstream_detects_per_message() -> None:
    framed = apache_frame("binary", True, "add", TMessageType.REPLY, 1, add_result)
    unframed = apache_frame("compact", False, "add", TMessageType.REPLY, 2, add_result)
    upstream = ThriftCodec(Side.UPSTREAM, {}, 1 << 20)
    assert [m.request_id for m in decode_all(upstream, framed + unframed + framed)] == [1, 2, 1]
    downstream = ThriftCodec(Side.DOWNSTREAM, {}, 1 << 20)
    decode_all(downstream, framed)
    with pytest.raises(ProtocolError):
        downstream.decode(bytearray(unframed))


def add_result(proto: Any) -> None:
    proto.writeStructBegin("r")
    proto.writeFieldBegin("success", TType.I32, 0)
    proto.writeI32(3)
    proto.writeFieldEnd()
    proto.writeFieldStop()
    proto.writeStructEnd()


def test_void_reply_is_ok() -> None:
    def void(proto: Any) -> None:
        proto.writeStructBegin("r")
        proto.writeFieldStop()
        proto.writeStructEnd()

    for protocol in ("binary", "compact"):
        raw = apache_frame(protocol, True, "ping", TMessageType.REPLY, 1, void)
        assert decode_one(raw, Side.UPSTREAM).status is ResponseStatus.OK


def test_encode_of_foreign_message_without_codec_data() -> None:
    raw = apache_frame("compact", True, "add", TMessageType.CALL, 1, add_args)
    foreign = Message(MessageType.REQUEST, raw, request_id=1)
    out = ThriftCodec(Side.UPSTREAM, {}, 1 << 20).encode(foreign, request_id=500)
    assert out == apache_frame("compact", True, "add", TMessageType.CALL, 500, add_args)
