"""A request the codec refuses after reading its id gets an error reply carrying that id
(``ProtocolError.request``), so the client can match the answer to what it sent."""

from __future__ import annotations

import struct

from metaprotocol.codecs.dubbo import DubboCodec
from metaprotocol.codecs.thrift import ThriftCodec
from metaprotocol.core.codec import Codec, Side
from metaprotocol.core.events import Accepted, DataReceived
from metaprotocol.core.message import Message, MessageType, ProtocolError, ResponseStatus
from metaprotocol.core.outputs import Write
from metaprotocol.core.proxy import Proxy

from .helpers import config

DUBBO_ID = 0x0102030405060708
THRIFT_SEQID = 4242


def dubbo_request(body: bytes, serialization: int = 2) -> bytes:
    """A two-way Dubbo request header (magic, flag, status, id, length) and ``body``."""
    flag = 0x80 | 0x40 | serialization  # request, two-way
    return struct.pack(">HBBqi", 0xDABB, flag, 0, DUBBO_ID, len(body)) + body


def thrift_call_with_bad_name() -> bytes:
    """A framed strict-binary CALL whose method name is not UTF-8 (the seqid is readable)."""
    name = b"\xff\xfe"
    payload = struct.pack(">Ii", 0x80010001, len(name)) + name + struct.pack(">i", THRIFT_SEQID)
    payload += b"\x00"  # the empty args struct
    return struct.pack(">i", len(payload)) + payload


def answer_to(codec: str, data: bytes, options: dict[str, str] | None = None) -> bytes:
    """What the proxy writes back to a client that sent ``data`` on a fresh connection."""
    proxy = Proxy(config(codec=codec, codec_options=options or {}), now=0.0)
    proxy.handle(Accepted(1, "main"), 0.0)
    writes = [o for o in proxy.handle(DataReceived(1, data), 0.0) if isinstance(o, Write)]
    assert len(writes) == 1, writes
    return writes[0].data


def decoded_reply(codec: Codec, reply: bytes) -> Message:
    message = codec.decode(bytearray(reply))
    assert isinstance(message, Message)
    return message


def test_dubbo_malformed_body_is_answered_with_the_request_id() -> None:
    reply = answer_to("dubbo", dubbo_request(b"\xff\xff\xff\xff"))
    message = decoded_reply(DubboCodec(Side.UPSTREAM, {}, 1 << 20), reply)
    assert message.type is MessageType.RESPONSE
    assert message.status is ResponseStatus.ERROR
    assert message.request_id == DUBBO_ID


def test_dubbo_refused_serialization_is_answered_with_the_request_id() -> None:
    data = dubbo_request(b"\x00", serialization=6)
    reply = answer_to("dubbo", data, {"unsupported_serialization": "reject"})
    assert decoded_reply(DubboCodec(Side.UPSTREAM, {}, 1 << 20), reply).request_id == DUBBO_ID


def test_dubbo_error_carries_what_was_decoded() -> None:
    codec = DubboCodec(Side.DOWNSTREAM, {}, 1 << 20)
    try:
        codec.decode(bytearray(dubbo_request(b"\xff\xff\xff\xff")))
    except ProtocolError as exc:
        assert not exc.fatal
        assert exc.request_id == DUBBO_ID
        assert exc.message_type is MessageType.REQUEST
    else:
        raise AssertionError("a malformed body must be refused")


def test_thrift_bad_method_name_is_answered_with_the_seqid() -> None:
    reply = answer_to("thrift", thrift_call_with_bad_name())
    message = decoded_reply(ThriftCodec(Side.UPSTREAM, {}, 1 << 20), reply)
    assert message.properties.get("message_type") == "exception"
    assert message.request_id == THRIFT_SEQID


def test_an_error_before_the_id_is_read_carries_nothing() -> None:
    codec = DubboCodec(Side.DOWNSTREAM, {}, 1 << 20)
    try:
        codec.decode(bytearray(b"\x00" * 16))
    except ProtocolError as exc:
        assert exc.request is None and exc.request_id is None and exc.message_type is None
    else:
        raise AssertionError("bad magic must be refused")
