"""The tRPC codec against every tRPC frame of the golden vectors (trpc-go's own output).

Each frame is decoded on the side it travels to (client-to-server frames by a DOWNSTREAM codec,
server frames by an UPSTREAM one), checked against the fields the vectors record, fed byte by
byte and at random splits, passed through unchanged, and rewritten to other ids and back. What
the codec writes (rewrites, mutations, error replies) is parsed back with google.protobuf and
the official message definitions (tests/codecs/trpc_proto.py), not with the codec itself.
"""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest

from metaprotocol.codecs.registry import get_codec
from metaprotocol.codecs.trpc import TrpcCodec, build_close, build_request, build_response
from metaprotocol.codecs.trpc.frame import RET_CODES
from metaprotocol.core.codec import Codec, Side
from metaprotocol.core.message import (
    NEED_DATA,
    ErrorType,
    Message,
    MessageType,
    Mutation,
    ProtocolError,
    ResponseStatus,
)
from metaprotocol.testing.conformance import check_codec
from tests.codecs import trpc_proto as pb
from tests.codecs.feeding import feed
from tests.codecs.vectors import load_vectors

VECTORS = load_vectors("trpc")
NEGATIVE = [v for v in VECTORS if "NEGATIVE" in v["variant"]]
POSITIVE = [v for v in VECTORS if "NEGATIVE" not in v["variant"]]
CLIENT_DIRECTIONS = ("request", "client-to-server")


def side_of(vector: dict[str, Any]) -> Side:
    return Side.DOWNSTREAM if vector["direction"] in CLIENT_DIRECTIONS else Side.UPSTREAM


def frame_of(vector: dict[str, Any]) -> bytes:
    return bytes.fromhex(vector["hex"])


def codec(side: Side, max_size: int = 1 << 20) -> Codec:
    return TrpcCodec(side, {}, max_size)


def decode_one(side: Side, data: bytes) -> Message:
    buffer = bytearray(data)
    message = codec(side).decode(buffer)
    assert isinstance(message, Message)
    assert buffer == b""
    return message


def fixed(frame: bytes) -> tuple[int, int, int, int, int, int, int]:
    header: tuple[int, int, int, int, int, int, int] = struct.unpack(">HBBIHIH", frame[:16])
    return header


def parse_unary(frame: bytes, response: bool) -> tuple[Any, bytes]:
    """The pb header (by google.protobuf) and the body of a unary frame; sizes checked."""
    magic, _, _, total, pb_size, _, _ = fixed(frame)
    assert magic == 0x0930 and total == len(frame)
    header = (pb.ResponseProtocol if response else pb.RequestProtocol)()
    header.ParseFromString(frame[16 : 16 + pb_size])
    return header, frame[16 + pb_size :]


EXPECTED_TYPES = {
    # (side, stream frame type, failed?) -> message type
    "request": MessageType.REQUEST,
    "response": MessageType.RESPONSE,
    "INIT": MessageType.STREAM_INIT,
    "DATA": MessageType.STREAM_DATA,
    "CLOSE": MessageType.STREAM_CLOSE,
}


def test_every_error_type_has_a_ret_code() -> None:
    assert set(RET_CODES) == set(ErrorType) and 0 not in RET_CODES.values()


def test_registered_with_its_class_attributes() -> None:
    assert get_codec("trpc") is TrpcCodec
    assert TrpcCodec.name == "trpc"
    assert isinstance(codec(Side.DOWNSTREAM), Codec)
    with pytest.raises(ValueError, match="no codec_options"):
        TrpcCodec(Side.DOWNSTREAM, {"x": 1}, 100)


def test_the_vectors_hold_every_kind_of_trpc_frame() -> None:
    kinds = {(v["header"]["data_frame_type"], v["header"]["stream_frame_type"]) for v in VECTORS}
    assert {(0, 0), (1, 1), (1, 2), (1, 3), (1, 4)} <= kinds
    assert len(POSITIVE) >= 14 and len(NEGATIVE) == 4


@pytest.mark.parametrize("vector", POSITIVE, ids=[v["id"] for v in POSITIVE])
def test_vector_decodes_to_its_expected_fields(vector: dict[str, Any]) -> None:
    frame = frame_of(vector)
    side = side_of(vector)
    message = decode_one(side, frame)
    expected = vector["expected"]
    header = vector["header"]
    assert message.frame == frame
    assert message.header_size + message.body_size == len(frame)
    if "pb_header" in expected:  # unary
        fields = expected["pb_header"]
        assert message.request_id == expected["request_id"] == fields["request_id"]
        assert message.stream_id is None
        assert frame[message.header_size :].hex() == expected["body_hex"]
        assert message.header_size == 16 + header["pb_header_size"]
        if side is Side.DOWNSTREAM:
            oneway = fields.get("call_type") == 1
            assert message.type is (MessageType.ONEWAY if oneway else MessageType.REQUEST)
            want = {k: fields[k] for k in ("caller", "callee", "func") if k in fields}
        else:
            assert message.type is MessageType.RESPONSE
            failed = fields.get("ret", 0) or fields.get("func_ret", 0)
            assert message.status is (ResponseStatus.ERROR if failed else ResponseStatus.OK)
            want = {}
        want.update(fields.get("trans_info", {}))
        assert message.properties == want
        return
    # stream frames: the request id is the stream id
    assert message.request_id == message.stream_id == expected["stream_id"]
    kind = expected["stream_frame_type"]
    meta = expected.get("meta", {})
    if kind == "INIT" and side is Side.DOWNSTREAM:
        request_meta = meta["request_meta"]
        assert message.type is MessageType.STREAM_INIT
        want = {k: request_meta[k] for k in ("caller", "callee", "func") if k in request_meta}
        want.update(request_meta.get("trans_info", {}))
        assert message.properties == want
    elif kind == "INIT":  # the server's answer; a failed one ends the stream
        failed = meta["response_meta"].get("ret", 0) != 0
        assert message.type is (MessageType.ERROR if failed else MessageType.STREAM_DATA)
    elif kind == "DATA":
        assert message.type is MessageType.STREAM_DATA
        assert frame[16:].hex() == expected["data_hex"]
    else:
        assert kind == "CLOSE"
        reset = meta.get("close_type") == 1
        if side is Side.DOWNSTREAM:
            assert message.type is MessageType.STREAM_CLOSE
            assert message.status is (ResponseStatus.ERROR if reset else ResponseStatus.OK)
        else:
            failed = reset or meta.get("ret", 0) != 0
            assert message.type is (MessageType.ERROR if failed else MessageType.STREAM_CLOSE)


@pytest.mark.parametrize("vector", NEGATIVE, ids=[v["id"] for v in NEGATIVE])
def test_negative_vectors_are_protocol_errors(vector: dict[str, Any]) -> None:
    for side in Side:
        with pytest.raises(ProtocolError):
            codec(side).decode(bytearray(frame_of(vector)))


@pytest.mark.parametrize("side", list(Side))
def test_all_frames_of_a_side_fed_byte_by_byte_and_at_random_splits(side: Side) -> None:
    frames = [frame_of(v) for v in POSITIVE if side_of(v) is side]
    stream = b"".join(frames)
    alone = [decode_one(side, f) for f in frames]
    rng = random.Random(19)
    chunkings = [[stream[i : i + 1] for i in range(len(stream))]]
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(stream)), 12))
        chunkings.append(
            [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        )
    for chunks in chunkings:
        got = feed(codec(side), chunks)
        assert [(m.type, m.request_id, m.properties, m.frame) for m in got] == [
            (m.type, m.request_id, m.properties, m.frame) for m in alone
        ]


@pytest.mark.parametrize("vector", POSITIVE, ids=[v["id"] for v in POSITIVE])
def test_pass_through_is_the_frame_itself(vector: dict[str, Any]) -> None:
    message = decode_one(side_of(vector), frame_of(vector))
    other = Side.UPSTREAM if side_of(vector) is Side.DOWNSTREAM else Side.DOWNSTREAM
    out = codec(other).encode(message)
    assert out is message.frame
    assert codec(other).encode(message, request_id=message.request_id) is message.frame


@pytest.mark.parametrize("new_id", [0, 2, 127, 128, 300, 2**21, 0x7FFF_FFFF, 2**32 - 1])
@pytest.mark.parametrize("vector", POSITIVE, ids=[v["id"] for v in POSITIVE])
def test_id_rewrite_changes_only_the_id_and_comes_back(vector: dict[str, Any], new_id: int) -> None:
    side = side_of(vector)
    frame = frame_of(vector)
    message = decode_one(side, frame)
    out = codec(side).encode(message, request_id=new_id)
    rewritten = decode_one(side, out)
    assert rewritten.request_id == new_id
    assert (rewritten.type, rewritten.properties, rewritten.status) == (
        message.type, message.properties, message.status,
    )  # fmt: skip
    if message.stream_id is not None:  # the stream id: four bytes in the fixed header
        assert out[:10] == frame[:10] and out[14:] == frame[14:]
        assert fixed(out)[5] == new_id
    else:  # the pb header's varint: the sizes follow, nothing else moves
        response = side is Side.UPSTREAM
        before, body = parse_unary(frame, response)
        after, new_body = parse_unary(out, response)
        assert after.request_id == new_id and new_body == body
        after.request_id = before.request_id
        assert after == before
        assert fixed(out)[4] == fixed(frame)[4] + len(out) - len(frame)
    back = codec(side).encode(rewritten, request_id=message.request_id)
    if new_id or message.stream_id is not None:
        assert back == frame
    else:  # id 0 is no field at all: back to the id, it is added at the header's end
        assert decode_one(side, back).properties == message.properties
        assert parse_unary(back, side is Side.UPSTREAM) == parse_unary(frame, side is Side.UPSTREAM)


def test_conformance_kit_passes() -> None:
    check_codec(
        TrpcCodec,
        requests=[frame_of(v) for v in POSITIVE if side_of(v) is Side.DOWNSTREAM],
        responses=[frame_of(v) for v in POSITIVE if side_of(v) is Side.UPSTREAM],
        fuzz_iterations=400,
    )


def test_a_frame_too_large_or_malformed_in_its_fixed_header_is_refused_from_it() -> None:
    frame = build_request(1, "/a.B/C", b"x" * 100)
    with pytest.raises(ProtocolError) as too_large:
        TrpcCodec(Side.DOWNSTREAM, {}, 64).decode(bytearray(frame[:16]))
    assert too_large.value.error_type is ErrorType.MESSAGE_TOO_LARGE and too_large.value.fatal
    for bad in (b"\x09\x31" + frame[2:16], frame[:2] + b"\x02" + frame[3:16],
                frame[:3] + b"\x01" + frame[4:16]):  # fmt: skip
        with pytest.raises(ProtocolError) as caught:
            codec(Side.DOWNSTREAM).decode(bytearray(bad))
        assert caught.value.fatal
    assert codec(Side.DOWNSTREAM).decode(bytearray(frame[:-1])) is NEED_DATA


def test_a_bad_pb_header_is_consumed_and_not_fatal() -> None:
    bad = struct.pack(">HBBIHIH", 0x0930, 0, 0, 16 + 3, 3, 0, 0) + b"\x0a\x05a"
    buffer = bytearray(bad + build_request(5, "/a.B/C"))
    decoder = codec(Side.DOWNSTREAM)
    with pytest.raises(ProtocolError) as caught:
        decoder.decode(buffer)
    assert not caught.value.fatal
    following = decoder.decode(buffer)
    assert isinstance(following, Message) and following.request_id == 5


def test_request_mutation_rewrites_trans_info_and_names() -> None:
    frame = build_request(
        9, "/trpc.a.B/C", b"body", caller="me", callee="trpc.a.B",
        trans_info={"keep": b"1", "drop": b"2", "over": b"3", "raw": b"\xff"},
    )  # fmt: skip
    message = decode_one(Side.DOWNSTREAM, frame)
    assert message.properties == {
        "keep": "1",
        "drop": "2",
        "over": "3",
        "caller": "me",
        "callee": "trpc.a.B",
        "func": "/trpc.a.B/C",
    }  # fmt: skip  (a value that is not UTF-8 is forwarded but not routable)
    mutation = Mutation(
        add=(("over", "new"), ("added", "yes"), ("func", "/trpc.a.B/D")),
        remove=("drop", "callee"),
    )
    out = codec(Side.UPSTREAM).encode(message, request_id=77, mutation=mutation)
    header, body = parse_unary(out, response=False)
    assert body == b"body"
    assert header.request_id == 77 and header.caller == b"me" and header.callee == b""
    assert header.func == b"/trpc.a.B/D"
    assert dict(header.trans_info) == {
        "keep": b"1",
        "over": b"new",
        "added": b"yes",
        "raw": b"\xff",
    }


def test_response_mutation_and_stream_init_mutation() -> None:
    response = decode_one(Side.UPSTREAM, build_response(4, b"ok", trans_info={"a": b"1"}))
    mutation = Mutation(add=(("b", "2"),), remove=("a",))
    header, body = parse_unary(codec(Side.DOWNSTREAM).encode(response, mutation=mutation), True)
    assert (header.request_id, dict(header.trans_info), body) == (4, {"b": b"2"}, b"ok")
    init = next(v for v in POSITIVE if v["id"] == "trpc-112")
    message = decode_one(Side.DOWNSTREAM, frame_of(init))
    out = codec(Side.UPSTREAM).encode(message, request_id=5, mutation=mutation)
    assert fixed(out)[3] == len(out) and fixed(out)[5] == 5
    meta = pb.InitMeta()
    meta.ParseFromString(out[16:])
    assert dict(meta.request_meta.trans_info) == {"key": b"value", "b": b"2"}
    assert meta.request_meta.func == b"/trpc.test.helloworld.Greeter/SayHello"
    data = decode_one(Side.DOWNSTREAM, frame_of(next(v for v in POSITIVE if v["id"] == "trpc-100")))
    with pytest.raises(ProtocolError):
        codec(Side.UPSTREAM).encode(data, mutation=mutation)


@pytest.mark.parametrize("error", list(ErrorType))
def test_error_replies_are_trpc_responses_with_the_request_id(error: ErrorType) -> None:
    request = decode_one(Side.DOWNSTREAM, build_request(123456, "/x.Y/Z"))
    reply = codec(Side.DOWNSTREAM).encode_error(request, error, "why \u00fc")
    assert reply is not None
    header, body = parse_unary(reply, response=True)
    assert header.request_id == 123456 and header.ret != 0 and body == b""
    assert header.error_msg.decode() == "why \u00fc"
    if error is ErrorType.ROUTE_NOT_FOUND:
        assert header.ret == 11  # TRPC_SERVER_NOSERVICE_ERR
    # A stream's error is a reset CLOSE of that stream.
    init = decode_one(Side.DOWNSTREAM, frame_of(POSITIVE[5]))
    assert init.type is MessageType.STREAM_INIT
    reset = codec(Side.DOWNSTREAM).encode_error(init, error, "gone")
    assert reset is not None and fixed(reset)[1:3] == (1, 4) and fixed(reset)[5] == 100
    meta = pb.CloseMeta()
    meta.ParseFromString(reset[16:])
    assert (meta.close_type, meta.msg) == (1, b"gone") and meta.ret != 0
    assert reset == build_close(100, reset=True, ret=meta.ret, msg="gone")
    assert codec(Side.DOWNSTREAM).encode_heartbeat_reply(init) is None


def test_header_scan_skips_unknown_fields_and_refuses_bad_ones() -> None:
    from metaprotocol.codecs.protobuf import WireType, encode_len_field, encode_tag

    func = encode_len_field(7, b"/a.B/C")
    unknown = (
        encode_tag(40, WireType.I64) + bytes(8)
        + encode_tag(41, WireType.SGROUP) + encode_tag(41, WireType.EGROUP)
        + encode_tag(42, WireType.I32) + bytes(4)
        + encode_len_field(9, encode_tag(3, WireType.I32) + bytes(4) + encode_len_field(1, b"k"))
    )  # fmt: skip
    good = struct.pack(
        ">HBBIHIH", 0x0930, 0, 0, 16 + len(unknown + func), len(unknown + func), 0, 0
    )
    message = decode_one(Side.DOWNSTREAM, good + unknown + func)
    assert message.properties == {"func": "/a.B/C", "k": ""}
    for bad_pb in (
        encode_len_field(7, b"\xff"),  # func is not UTF-8
        b"\x00\x01",  # field number 0
        b"\x3e",  # wire type 6
        encode_len_field(9, b"\x0a\x09k"),  # a map entry running past its end
    ):
        frame = struct.pack(">HBBIHIH", 0x0930, 0, 0, 16 + len(bad_pb), len(bad_pb), 0, 0)
        with pytest.raises(ProtocolError) as caught:
            codec(Side.DOWNSTREAM).decode(bytearray(frame + bad_pb))
        assert not caught.value.fatal
