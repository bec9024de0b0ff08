"""DubboCodec against golden wire vectors, error replies, heartbeats, id rewriting, mutation."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metaprotocol.codecs.dubbo import DubboCodec
from metaprotocol.codecs.dubbo.body import parse_request, rewrite_attachments, skip_response_value
from metaprotocol.codecs.dubbo.header import build_header, parse_header
from metaprotocol.codecs.dubbo.hessian2 import (
    Hessian2Error,
    ReadContext,
    read_string,
    read_value,
    write_int,
    write_string,
    write_string_map,
)
from metaprotocol.core.codec import Codec, Ordering, Side
from metaprotocol.core.message import (
    NEED_DATA,
    ErrorType,
    Message,
    MessageType,
    Mutation,
    ProtocolError,
    ResponseStatus,
)
from tests.codecs.vectors import load_vectors

VECTORS = load_vectors("dubbo")
# The vector file marks deliberately malformed fixtures NEGATIVE; none of them is Dubbo today
# (they are tRPC), so every Dubbo vector is a valid frame. Fail loudly if that changes.
POSITIVE = [v for v in VECTORS if "NEGATIVE" not in (v["variant"] + v.get("notes", ""))]
assert len(POSITIVE) == len(VECTORS), "NEGATIVE Dubbo vectors appeared: add a test for them"


def codec(side: Side = Side.DOWNSTREAM, max_size: int = 1 << 20, **options: Any) -> DubboCodec:
    return DubboCodec(side, options, max_size)


def decode_one(data: bytes, c: DubboCodec | None = None) -> Message:
    buf = bytearray(data)
    msg = (c or codec()).decode(buf)
    assert isinstance(msg, Message)
    assert buf == b""
    return msg


def request_frame(
    service: str = "org.apache.dubbo.samples.api.GreetingsService",
    method: str = "sayHi",
    version: str = "1.0.0",
    desc: str = "Ljava/lang/String;",
    args: bytes = b"\x03bob",
    attachments: dict[str, str] | None = None,
    request_id: int = 7,
    flag: int = 0xC2,
) -> bytes:
    body = b"".join(write_string(s) for s in ("2.0.2", service, version, method, desc))
    body += args + write_string_map(attachments if attachments is not None else {"group": "g1"})
    return build_header(flag, 0, request_id, len(body)) + body


def test_class_attributes_and_protocol() -> None:
    assert DubboCodec.name == "dubbo"
    assert DubboCodec.ordering is Ordering.MULTIPLEXED
    assert DubboCodec.supports_mutation is True
    assert isinstance(codec(), Codec)


def test_bad_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown option"):
        DubboCodec(Side.DOWNSTREAM, {"transport": "x"}, 1024)
    with pytest.raises(ValueError, match="unsupported_serialization"):
        DubboCodec(Side.DOWNSTREAM, {"unsupported_serialization": "drop"}, 1024)
    with pytest.raises(ValueError, match="max_depth"):
        DubboCodec(Side.DOWNSTREAM, {"max_depth": 0}, 1024)


# ------------------------------------------------------------------ golden vectors


@pytest.mark.parametrize("vector", POSITIVE, ids=[v["id"] for v in POSITIVE])
def test_vector_decodes_to_expected_and_reencodes(vector: dict[str, Any]) -> None:
    frame = bytes.fromhex(vector["hex"])
    expected = vector["expected"]
    header = vector["header"]
    msg = decode_one(frame)
    assert msg.frame == frame
    assert msg.request_id == expected["request_id"] == header["request_id"]
    assert msg.header_size == 16 and msg.body_size == header["body_length"]
    ser = parse_header(frame)
    assert ser.serialization_id == expected["serialization_id"]
    if expected.get("heartbeat"):
        assert msg.type is MessageType.HEARTBEAT
        assert msg.properties == {}
    elif header["is_request"]:
        assert msg.type is (MessageType.REQUEST if expected["two_way"] else MessageType.ONEWAY)
        if expected["serialization_id"] == 2:
            props = msg.properties
            assert props["interface"] == expected["interface"]
            assert props["method"] == expected["method"]
            assert props["version"] == expected["version"]
            for key, value in expected.get("attachments", {}).items():
                if isinstance(value, str):
                    assert props[key.lower()] == value, key
                else:  # only string attachments become properties
                    assert key.lower() not in props or key.lower() in ("version",)
            if "group" in expected.get("attachments", {}):
                assert props["group"] == expected["attachments"]["group"]
        else:  # documented: non-Hessian2 serializations are routed on the header only
            assert msg.properties == {}
    else:
        assert msg.type is MessageType.RESPONSE
        ok = expected["status"] == 20
        assert msg.status is (ResponseStatus.OK if ok else ResponseStatus.ERROR)
    # Unmutated, same id: the original object, byte for byte.
    assert codec().encode(msg) is msg.frame


@pytest.mark.parametrize(
    "vector",
    [
        v
        for v in POSITIVE
        if v["header"]["is_request"]
        and v["header"]["serialization_id"] == 2
        and not v["expected"].get("heartbeat")
    ],
    ids=lambda v: str(v["id"]),
)
def test_vector_request_body_reads_completely(vector: dict[str, Any]) -> None:
    """The general reader agrees with the golden decode, args and attachments included."""
    expected = vector["expected"]
    request = parse_request(bytes.fromhex(vector["hex"]))
    assert request.dubbo_version == expected["dubbo_version"]
    assert request.service == expected["interface"]
    assert request.method == expected["method"]
    assert request.param_desc == expected["param_desc"]
    if isinstance(expected.get("args"), list):
        args = [a.fields if hasattr(a, "fields") else a for a in request.args]
        assert args == expected["args"]
    for key, value in expected["attachments"].items():
        assert request.attachments[key] == value


@pytest.mark.parametrize(
    "vector",
    [
        v
        for v in POSITIVE
        if not v["header"]["is_request"]
        and v["header"]["serialization_id"] == 2
        and not v["header"]["event"]
        and v["header"]["status"] == 20
    ],
    ids=lambda v: str(v["id"]),
)
def test_vector_response_body_skips_to_the_end(vector: dict[str, Any]) -> None:
    frame = bytes.fromhex(vector["hex"])
    expected = vector["expected"]
    flag, pos = skip_response_value(frame)
    assert flag == expected["response_flag"]
    if flag in (3, 4, 5):
        attachments, pos = read_value(frame, pos, len(frame), ReadContext())
        assert attachments == expected["response_attachments"]
    assert pos == len(frame)


def test_all_vectors_fed_byte_at_a_time_on_one_connection() -> None:
    stream = b"".join(bytes.fromhex(v["hex"]) for v in POSITIVE)
    c = codec()
    buf = bytearray()
    frames: list[bytes] = []
    for byte in stream:
        buf.append(byte)
        msg = c.decode(buf)
        if msg is not NEED_DATA:
            assert isinstance(msg, Message)
            frames.append(msg.frame)
    assert frames == [bytes.fromhex(v["hex"]) for v in POSITIVE]
    assert buf == b""


def test_one_connection_remembers_only_equal_prefixes_and_attachments() -> None:
    """The codec remembers the last request's prefix (service, method...) and attachments
    per connection; a request that differs anywhere in them, even at the same lengths, is
    read afresh."""
    c = codec()
    frames = [
        request_frame(),
        request_frame(),  # both remembered parts equal
        request_frame(attachments={"group": "g2"}),  # same length, other value
        request_frame(method="sayHo"),  # same length, other method
        request_frame(method="sayHo", attachments={"group": "g2", "x": "y"}),
        request_frame(service="org.apache.dubbo.samples.api.GreetingsServicf"),
        request_frame(args=b"\x03eve"),  # other arguments, same attachments
    ]
    for frame in frames:
        expected = parse_request(frame)
        props = decode_one(frame, c).properties
        assert props == {
            **{k.lower(): v for k, v in expected.attachments.items()},
            "interface": expected.service,
            "version": expected.version,
            "method": expected.method,
        }


def test_two_frames_in_one_buffer_decode_in_order() -> None:
    a, b = request_frame(request_id=1), request_frame(request_id=2, version="2.0.0")
    buf = bytearray(a + b)
    c = codec()
    first, second = c.decode(buf), c.decode(buf)
    assert isinstance(first, Message) and isinstance(second, Message)
    assert (first.request_id, second.request_id) == (1, 2)
    assert second.properties["version"] == "2.0.0"
    assert c.decode(buf) is NEED_DATA


# ------------------------------------------------------------------ framing errors


def test_bad_magic_is_fatal_as_soon_as_seen() -> None:
    with pytest.raises(ProtocolError) as info:
        codec().decode(bytearray(b"GET / HTTP/1.1\r\n"))
    assert info.value.fatal
    with pytest.raises(ProtocolError):
        codec().decode(bytearray(b"\xda\x00"))
    assert codec().decode(bytearray(b"\xda")) is NEED_DATA


def test_oversized_frame_is_refused_from_the_header_alone() -> None:
    header = build_header(0xC2, 0, 42, 1000)
    c = codec(max_size=512)
    with pytest.raises(ProtocolError) as info:
        c.decode(bytearray(header))
    assert info.value.error_type is ErrorType.MESSAGE_TOO_LARGE
    assert info.value.fatal
    # The reply still answers request 42 with a Dubbo error status.
    reply = c.encode_error(info.value.request, ErrorType.MESSAGE_TOO_LARGE, "too big")
    assert reply is not None
    assert parse_header(reply).request_id == 42 and parse_header(reply).status == 80
    # Exactly at the limit is fine.
    assert codec(max_size=1016).decode(bytearray(header)) is NEED_DATA


def test_negative_body_length_is_an_error() -> None:
    with pytest.raises(ProtocolError):
        codec().decode(bytearray(b"\xda\xbb\xc2\x00" + bytes(8) + b"\xff\xff\xff\xff"))


def test_malformed_body_is_consumed_and_answered_with_its_id() -> None:
    frame = request_frame(request_id=99)
    broken = frame[:16] + b"\x43" + frame[17:]  # 'C' where the dubbo version string was
    c = codec()
    buf = bytearray(broken + request_frame(request_id=100))
    with pytest.raises(ProtocolError) as info:
        c.decode(buf)
    assert not info.value.fatal
    reply = c.encode_error(info.value.request, info.value.error_type, str(info.value))
    assert reply is not None and parse_header(reply).request_id == 99
    nxt = c.decode(buf)
    assert isinstance(nxt, Message) and nxt.request_id == 100


# ------------------------------------------------------------------ non-Hessian2


def test_non_hessian2_is_routed_on_header_or_rejected_by_option() -> None:
    frame = request_frame(flag=0xC6)  # fastjson id, Hessian2 bytes do not matter here
    msg = decode_one(frame)
    assert msg.type is MessageType.REQUEST and msg.properties == {}
    with pytest.raises(ProtocolError) as refused:
        codec().encode(msg, mutation=Mutation(add=(("a", "b"),)))
    assert not refused.value.fatal
    c = codec(unsupported_serialization="reject")
    with pytest.raises(ProtocolError) as info:
        c.decode(bytearray(frame))
    assert not info.value.fatal
    reply = c.encode_error(info.value.request, info.value.error_type, str(info.value))
    assert reply is not None and parse_header(reply).request_id == 7


# ------------------------------------------------------------------ error replies


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ErrorType.ROUTE_NOT_FOUND, 60),
        (ErrorType.CLUSTER_NOT_FOUND, 60),
        (ErrorType.OVER_LIMIT, 100),
        (ErrorType.TIMEOUT, 31),
        (ErrorType.BAD_RESPONSE, 50),
        (ErrorType.NO_HEALTHY_UPSTREAM, 80),
        (ErrorType.UPSTREAM_RESET, 80),
        (ErrorType.UNSPECIFIED, 80),
        (ErrorType.UNAUTHENTICATED, 40),  # BAD_REQUEST: Dubbo has no auth status
        (ErrorType.PERMISSION_DENIED, 40),
    ],
)
def test_error_reply_is_a_valid_dubbo_response(error: ErrorType, status: int) -> None:
    request = decode_one(request_frame(request_id=2**40 + 5))
    reply = codec().encode_error(request, error, "no route for 'a\r\nb' \x00 ü 😀")
    assert reply is not None
    response = decode_one(reply, codec(Side.UPSTREAM))
    assert response.type is MessageType.RESPONSE
    assert response.status is ResponseStatus.ERROR
    assert response.request_id == 2**40 + 5
    header = parse_header(reply)
    assert header.status == status and header.serialization_id == 2 and not header.is_request
    text, end = read_string(reply, 16, len(reply))
    assert end == len(reply)
    assert text is not None and error.value in text and "😀" in text


def test_error_reply_readable_by_dubbo_ssl_python() -> None:
    decoder = pytest.importorskip("dubbo_ssl.codec.decoder")
    request = decode_one(request_frame())
    reply = codec().encode_error(request, ErrorType.ROUTE_NOT_FOUND, "no route")
    assert reply is not None
    with pytest.raises(Exception, match="SERVICE_NOT_FOUND"):
        decoder.parse_response_head(reply[:16])
    assert decoder.Response(bytearray(reply[16:])).read_next() == (
        "metaprotocol: route_not_found: no route"
    )


def test_no_error_reply_for_oneway_or_unknown_request() -> None:
    oneway = decode_one(request_frame(flag=0x82))
    assert oneway.type is MessageType.ONEWAY
    assert codec().encode_error(oneway, ErrorType.TIMEOUT, "") is None
    assert codec().encode_error(None, ErrorType.BAD_REQUEST, "") is None


# ------------------------------------------------------------------ heartbeats


def test_heartbeat_reply_echoes_id_with_event_flag_and_null_body() -> None:
    hb = decode_one(bytes.fromhex("dabbe2000000000000000001000000014e"))
    assert hb.type is MessageType.HEARTBEAT
    reply = codec().encode_heartbeat_reply(hb)
    assert reply == bytes.fromhex("dabb22140000000000000001000000014e")  # what Java answers
    back = decode_one(reply)
    assert back.type is MessageType.HEARTBEAT and back.request_id == 1
    assert codec().encode_heartbeat_reply(back) is None  # never answer a heartbeat response
    oneway_hb = decode_one(bytes.fromhex("dabba20000000000000003e8000000014e"))
    assert codec().encode_heartbeat_reply(oneway_hb) is None


def test_heartbeat_reply_for_other_serialization_echoes_its_null() -> None:
    hb = decode_one(build_header(0xE6, 0, 5, 5) + b"null\n")  # fastjson null
    reply = codec().encode_heartbeat_reply(hb)
    assert reply == build_header(0x26, 20, 5, 5) + b"null\n"


# ------------------------------------------------------------------ request ids


@pytest.mark.parametrize("new_id", [0, 1, 0x1234_5678_9ABC, 2**64 - 1])
def test_request_id_rewrite_round_trip(new_id: int) -> None:
    frame = request_frame(request_id=77)
    msg = decode_one(frame)
    rewritten = codec(Side.UPSTREAM).encode(msg, request_id=new_id)
    assert rewritten[:4] == frame[:4] and rewritten[12:] == frame[12:]
    again = decode_one(rewritten)
    assert again.request_id == new_id and again.properties == msg.properties
    restored = codec().encode(again, request_id=77)
    assert restored == frame
    assert msg.frame == frame  # the original was not touched
    with pytest.raises(ValueError):
        codec().encode(msg, request_id=2**64)


# ------------------------------------------------------------------ mutation


def test_request_mutation_adds_replaces_and_removes_attachments() -> None:
    frame = request_frame(
        attachments={"group": "g1", "X-Trace": "t1", "timeout": "3000"}, args=b"\x03bob"
    )
    msg = decode_one(frame)
    mutation = Mutation(add=(("x-trace", "t2"), ("region", "eu")), remove=("timeout",))
    out = codec(Side.UPSTREAM).encode(msg, mutation=mutation, request_id=9)
    new = decode_one(out)
    assert new.request_id == 9
    assert parse_header(out).body_length == len(out) - 16
    assert new.properties["x-trace"] == "t2" and new.properties["region"] == "eu"
    assert "timeout" not in new.properties
    request = parse_request(out)
    # the replaced key keeps its spelling and place; new keys go last
    assert list(request.attachments.items()) == [
        ("group", "g1"),
        ("X-Trace", "t2"),
        ("region", "eu"),
    ]
    assert request.args == ["bob"] and request.method == "sayHi"


def test_request_mutation_keeps_non_string_attachments_and_object_args() -> None:
    user = (
        b"C\x1corg.apache.dubbo.sample.User\x92\x02id\x04name"  # class definition
        b"\x60\x04A003\x05Carol"  # instance of definition 0
    )
    body = b"".join(
        write_string(s) for s in ("2.0.2", "svc", "1.0.0", "m", "Lorg/apache/dubbo/sample/User;")
    )
    attachments = b"H" + write_string("timeout") + write_int(3000) + b"\x04user\x60\x01x\x01yZ"
    body += user + attachments
    frame = build_header(0xC2, 0, 3, len(body)) + body
    msg = decode_one(frame)
    assert msg.properties == {"interface": "svc", "method": "m", "version": "1.0.0"}
    out = codec().encode(msg, mutation=Mutation(add=(("k", "v"),)))
    request = parse_request(out)
    assert request.attachments["timeout"] == 3000 and request.attachments["k"] == "v"
    assert request.attachments["user"].fields == {"id": "x", "name": "y"}
    assert decode_one(out).properties["k"] == "v"


def _request_with_attachments(entries: bytes) -> Message:
    body = b"".join(write_string(s) for s in ("2.0.2", "svc", "1.0.0", "m", ""))
    body += b"H" + entries + b"Z"
    return decode_one(build_header(0xC2, 0, 3, len(body)) + body)


def test_dropping_a_numbered_value_that_later_entries_refer_to_is_refused() -> None:
    # "a" holds a map (reference number 1: the attachments map itself is 0); "b" refers
    # back to it. Removing or replacing "a" would leave "b" pointing at nothing.
    numbered = write_string("a") + b"H" + write_string("k") + write_string("v") + b"Z"
    entries = numbered + write_string("b") + b"Q\x91"
    msg = _request_with_attachments(entries)
    assert parse_request(msg.frame).attachments["b"] == {"k": "v"}
    for mutation in (Mutation(remove=("a",)), Mutation(add=(("A", "plain"),))):
        with pytest.raises(ProtocolError, match="would renumber") as info:
            codec(Side.UPSTREAM).encode(msg, mutation=mutation)
        assert not info.value.fatal
    # Dropping the back-reference itself, or anything with nothing numbered after it, is fine.
    out = codec(Side.UPSTREAM).encode(msg, mutation=Mutation(remove=("b",)))
    assert parse_request(out).attachments == {"a": {"k": "v"}}
    tail = _request_with_attachments(entries + write_string("c") + write_string("x"))
    out = codec(Side.UPSTREAM).encode(tail, mutation=Mutation(remove=("b", "c")))
    assert parse_request(out).attachments == {"a": {"k": "v"}}
    last = _request_with_attachments(write_string("c") + write_string("x") + numbered)
    out = codec(Side.UPSTREAM).encode(last, mutation=Mutation(remove=("a",)))
    assert parse_request(out).attachments == {"c": "x"}


def test_rewriting_a_map_cut_after_a_key_is_a_hessian2_error() -> None:
    # Found by the mutated-frames fuzz test: the byte after a key was read unchecked.
    cut = b"H" + write_string("a")
    for add, remove in (((), ("a",)), ((("b", "1"),), ())):
        with pytest.raises(Hessian2Error, match="truncated"):
            rewrite_attachments(cut, 0, add, remove, ReadContext())


def test_request_mutation_when_body_has_no_attachments_map() -> None:
    body = b"".join(write_string(s) for s in ("2.0.2", "svc", "1.0.0", "m", "I")) + b"\x95"
    msg = decode_one(build_header(0xC2, 0, 1, len(body)) + body)
    out = codec().encode(msg, mutation=Mutation(add=(("a", "1"),)))
    assert parse_request(out).attachments == {"a": "1"}


def test_response_mutation_only_with_attachments() -> None:
    value = write_string("hi")
    with_map = write_int(4) + value + write_string_map({"dubbo": "2.0.2", "drop": "x"})
    frame = build_header(0x02, 20, 5, len(with_map)) + with_map
    msg = decode_one(frame, codec(Side.UPSTREAM))
    assert msg.properties == {"dubbo": "2.0.2", "drop": "x"}
    out = codec(Side.DOWNSTREAM).encode(
        msg, mutation=Mutation(add=(("served-by", "proxy"),), remove=("drop",))
    )
    flag, pos = skip_response_value(out)
    attachments, end = read_value(out, pos, len(out), ReadContext())
    assert flag == 4 and end == len(out) == parse_header(out).body_length + 16
    assert attachments == {"dubbo": "2.0.2", "served-by": "proxy"}
    assert decode_one(out).properties == {"dubbo": "2.0.2", "served-by": "proxy"}
    # Documented: no attachments to rewrite (flag 1) or an error status -> a non-fatal error.
    plain = write_int(1) + value
    for status, body in ((20, plain), (70, write_string("boom"))):
        msg = decode_one(build_header(0x02, status, 5, len(body)) + body)
        assert msg.properties == {}
        with pytest.raises(ProtocolError) as info:
            codec().encode(msg, mutation=Mutation(add=(("a", "b"),)))
        assert not info.value.fatal
    # Unmutated encode of such a response is still the pass-through.
    assert codec().encode(msg) is msg.frame


# ------------------------------------------------------------------ hostile payloads


@pytest.mark.parametrize("class_name", ["java.lang.Runtime", "os.system", "builtins.eval"])
def test_hostile_typed_object_is_never_imported_or_built(
    class_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import builtins
    import sys

    imported: list[str] = []
    real_import = builtins.__import__

    def spy(name: str, *args: Any, **kwargs: Any) -> Any:
        imported.append(name)
        return real_import(name, *args, **kwargs)

    arg = b"C" + write_string(class_name) + b"\x91" + write_string("cmd")
    arg += b"\x60" + write_string("rm -rf /") + b"O\x90" + write_string("again")
    frame = request_frame(desc="Ljava/lang/Runtime;Ljava/lang/Object;", args=arg)
    modules_before = set(sys.modules)
    monkeypatch.setattr(builtins, "__import__", spy)
    msg = decode_one(frame)
    out = codec().encode(msg, mutation=Mutation(add=(("a", "b"),)))
    monkeypatch.setattr(builtins, "__import__", real_import)
    assert msg.properties["method"] == "sayHi" and msg.properties["group"] == "g1"
    assert decode_one(out).properties["a"] == "b"
    # (pytest itself may import helpers such as inspect while the spy is on)
    suspicious = {class_name, class_name.split(".")[0], "os", "subprocess", "importlib", "java"}
    assert not suspicious & set(imported), imported
    assert not suspicious & (set(sys.modules) - modules_before)
    # Read as plain data: the class name is just a string.
    request = parse_request(frame)
    assert [type(a).__name__ for a in request.args] == ["HessianObject", "HessianObject"]
    assert request.args[0].class_name == class_name


def test_deep_nesting_is_rejected_not_recursed() -> None:
    arg = b"\x79" * 5000 + b"N"  # untyped fixed lists of one element, 5000 deep
    msg_bytes = request_frame(desc="Ljava/util/List;", args=arg)
    with pytest.raises(ProtocolError) as info:
        codec().decode(bytearray(msg_bytes))
    assert not info.value.fatal and "deeper" in str(info.value)


def test_huge_declared_list_length_fails_fast() -> None:
    arg = b"X" + b"I\x7f\xff\xff\xff" + b"N"
    with pytest.raises(ProtocolError, match="count"):
        codec().decode(bytearray(request_frame(desc="[Ljava/lang/Object;", args=arg)))


# ------------------------------------------------------------------ conformance kit


def test_conformance_kit() -> None:
    conformance = pytest.importorskip("metaprotocol.testing.conformance")
    requests = [
        request_frame(),
        request_frame(version="2.0.0", attachments={"group": "g2", "x": "y"}),
        bytes.fromhex("dabbe2000000000000000001000000014e"),
    ]
    ok = write_int(4) + write_string("hi") + write_string_map({"dubbo": "2.0.2"})
    responses = [
        build_header(0x02, 20, 7, len(ok)) + ok,
        build_header(0x02, 20, 7, 4) + write_int(1) + write_string("hi"),
    ]
    if VECTORS:
        requests += [bytes.fromhex(v["hex"]) for v in VECTORS if v["id"] in ("dubbo-006",)]
    conformance.check_codec(DubboCodec, requests=requests, responses=responses)


@st.composite
def _attachments_with_back_references(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    """An attachments map (as entry bytes) whose values mix strings, ints, maps, lists and
    back-references to maps and lists earlier in the same map (the map itself is number 0)."""
    keys = draw(st.lists(st.sampled_from("abcdef"), min_size=1, max_size=6, unique=True))
    entries = b""
    numbered = 0  # containers written so far, besides the attachments map itself
    for key in keys:
        kinds = ["str", "int", "map", "list"] + (["ref"] if numbered else [])
        kind = draw(st.sampled_from(kinds))
        if kind == "str":
            value = write_string(draw(st.text("xyz", max_size=3)))
        elif kind == "int":
            value = write_int(draw(st.integers(-5, 5)))
        elif kind == "map":
            value = b"H" + write_string("k") + write_string(key) + b"Z"
            numbered += 1
        elif kind == "list":
            value = b"\x79" + write_string(key)  # untyped fixed list of one
            numbered += 1
        else:
            value = b"Q" + write_int(draw(st.integers(1, numbered)))
        entries += write_string(key) + value
    return entries, keys


@settings(max_examples=200, deadline=None)
@given(_attachments_with_back_references(), st.data())
def test_a_mutation_either_refuses_or_gives_exactly_the_expected_attachments(
    made: tuple[bytes, list[str]], data: st.DataObject
) -> None:
    entries, keys = made
    msg = _request_with_attachments(entries)
    before = parse_request(msg.frame).attachments
    remove = data.draw(st.lists(st.sampled_from(keys), unique=True))
    add = data.draw(
        st.lists(st.tuples(st.sampled_from("abcdefgh"), st.just("new")), unique_by=lambda kv: kv[0])
    )
    try:
        out = codec(Side.UPSTREAM).encode(
            msg, mutation=Mutation(add=tuple(add), remove=tuple(remove))
        )
    except ProtocolError as exc:
        assert "renumber" in str(exc)
        return
    expected = {k: v for k, v in before.items() if k not in remove}
    expected.update(add)
    assert parse_request(out).attachments == expected
