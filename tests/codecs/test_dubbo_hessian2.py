"""The bounded Hessian2 reader/skipper/writer, the dubbo-ssl-python golden frames, and fuzzing."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaprotocol.codecs.dubbo import DubboCodec
from metaprotocol.codecs.dubbo.body import count_parameters, parse_request
from metaprotocol.codecs.dubbo.header import build_header
from metaprotocol.codecs.dubbo.hessian2 import (
    Hessian2Error,
    HessianDate,
    ReadContext,
    read_string,
    read_value,
    skip_value,
    write_int,
    write_long,
    write_string,
    write_value,
)
from metaprotocol.core.codec import Side
from metaprotocol.core.message import NEED_DATA, ErrorType, Message, Mutation, ProtocolError

# One example per value kind of the Hessian 2.0 grammar, with its plain-data reading.
KINDS: list[tuple[bytes, Any]] = [
    (b"N", None),
    (b"T", True),
    (b"F", False),
    (b"\x90", 0),
    (b"\xc8\x30", 48),
    (b"\xd4\x00\x00", 0),
    (b"I\x7f\xff\xff\xff", 2**31 - 1),
    (b"\xe0", 0),
    (b"\xf8\x10", 16),
    (b"\x3c\x01\x00", 256),
    (b"Y\x00\x00\x01\x00", 256),
    (b"L" + struct.pack(">q", -(2**63)), -(2**63)),
    (b"\x5b", 0.0),
    (b"\x5c", 1.0),
    (b"\x5d\xff", -1.0),
    (b"\x5e\x01\x00", 256.0),
    (b"D" + struct.pack(">d", 2.5), 2.5),
    (b"J" + struct.pack(">q", 1000), HessianDate(1000)),
    (b"K" + struct.pack(">i", 2), HessianDate(120_000)),
    (b"\x03abc", "abc"),
    (b"\x30\x20" + b"x" * 32, "x" * 32),
    (b"R\x00\x02ab" + b"S\x00\x01c", "abc"),  # chunked string
    (b"\x02\xc3\xa9\xe2\x82\xac", "é€"),
    (b"\x02\xed\xa0\xbd\xed\xb8\x80", "😀"),  # Java's CESU-8 surrogate pair, 2 units
    (b"\x23abc", b"abc"),
    (b"A\x00\x01a" + b"B\x00\x01b", b"ab"),  # chunked binary
    (b"\x34\x01" + b"z", b"z"),
    (b"\x72\x04[int\x91\x92", [1, 2]),  # typed fixed list, short length
    (b"V\x04[int\x92\x91\x92", [1, 2]),
    (b"W\x91Z", [1]),
    (b"U\x04[int\x91Z", [1]),
    (b"X\x92\x91\x92", [1, 2]),
    (b"\x7a\x91\x92", [1, 2]),
    (b"H\x01a\x91Z", {"a": 1}),
    (b"M\x03Map\x01a\x91Z", {"a": 1}),
]


@pytest.mark.parametrize(("data", "value"), KINDS, ids=[d.hex() for d, _ in KINDS])
def test_every_kind_skips_exactly_and_reads(data: bytes, value: Any) -> None:
    tail = b"\xfe\xfe"  # whatever follows must not be touched
    assert skip_value(data + tail, 0, len(data) + 2, ReadContext()) == len(data)
    got, end = read_value(data + tail, 0, len(data) + 2, ReadContext())
    assert (got, end) == (value, len(data))
    for cut in range(len(data)):  # every truncation is an error, never a wrong answer
        with pytest.raises(Hessian2Error):
            skip_value(data[:cut], 0, cut, ReadContext())


def test_objects_and_references() -> None:
    data = (
        b"\x79"  # untyped fixed list of 1 (ref 0) holding a map (ref 1)
        + b"H\x05pointC\x0bcom.x.Point\x92\x01x\x01y\x60\x91\x92"  # object (ref 2)
        + b"\x04self\x51\x91"  # a reference back to the map
        + b"\x05again\x51\x92Z"
    )
    assert skip_value(data, 0, len(data), ReadContext()) == len(data)
    value, end = read_value(data, 0, len(data), ReadContext())
    assert end == len(data)
    mapping = value[0]
    point = mapping["point"]
    assert point.class_name == "com.x.Point" and point.fields == {"x": 1, "y": 2}
    assert mapping["self"] is mapping and mapping["again"] is point


def test_undefined_class_and_bad_bytes_are_errors() -> None:
    for data in (b"\x60", b"O\x91", b"\x40", b"\x45", b"\x03ab", b"\x01\xff", b"Q"):
        with pytest.raises(Hessian2Error):
            skip_value(data, 0, len(data), ReadContext())


def test_parameter_descriptor_count() -> None:
    assert count_parameters("") == 0
    assert count_parameters("Ljava/lang/String;I[J[[Lcom/x/Y;Z") == 5
    for bad in ("Ljava/lang/String", "Q", "["):
        with pytest.raises(Hessian2Error):
            count_parameters(bad)


@given(st.text(max_size=40_000))
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
def test_string_writer_round_trips(text: str) -> None:
    data = write_string(text)
    assert read_string(data, 0, len(data)) == (text, len(data))
    assert skip_value(data, 0, len(data), ReadContext()) == len(data)


plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=50)
    | st.binary(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=20,
)


@given(plain)
@settings(max_examples=150)
def test_value_writer_round_trips(value: Any) -> None:
    data = write_value(value)
    assert skip_value(data, 0, len(data), ReadContext()) == len(data)
    got, end = read_value(data, 0, len(data), ReadContext())
    assert end == len(data) and got == value


@given(st.integers(-(2**63), 2**63 - 1))
def test_long_writer(value: int) -> None:
    data = write_long(value)
    assert read_value(data, 0, len(data), ReadContext()) == (value, len(data))


# ------------------------------------------------------------------ dubbo-ssl-python golden


def _dubbo_ssl_request(arguments: list[Any], context: dict[str, str] | None = None) -> bytes:
    encoder = pytest.importorskip("dubbo_ssl.codec.encoder")
    user = encoder.Object("org.apache.dubbo.sample.User", {"id": "A003", "name": "Carol"})
    args = [user if a == "<user>" else a for a in arguments]
    request = encoder.Request(
        {
            "dubbo_version": "2.0.2",
            "path": "org.apache.dubbo.samples.api.GreetingsService",
            "version": "2.0.0",
            "method": "sayHi",
            "arguments": args,
            "context": context,
            "group": "blue",
        }
    )
    return bytes(request.encode())


@pytest.mark.parametrize(
    "arguments",
    [
        ["bob"],
        [1, 2**40, 2.5, True, "é€ " * 300],
        ["<user>", "<user>", [1, 2, 3], ["a", "b"]],
        [list(range(20)), "x" * 5000],
    ],
)
def test_dubbo_ssl_python_frames_decode(arguments: list[Any]) -> None:
    """Frames serialized by dubbo-ssl-python's own encoder (no network)."""
    frame = _dubbo_ssl_request(arguments, {"trace-id": "T1"})
    codec = DubboCodec(Side.DOWNSTREAM, {}, 1 << 20)
    msg = codec.decode(bytearray(frame))
    assert isinstance(msg, Message)
    assert msg.properties == {
        "interface": "org.apache.dubbo.samples.api.GreetingsService",
        "path": "org.apache.dubbo.samples.api.GreetingsService",
        "method": "sayHi",
        "version": "2.0.0",
        "group": "blue",
        "trace-id": "T1",
    }
    request = parse_request(frame)
    assert len(request.args) == len(arguments)
    out = codec.encode(msg, mutation=Mutation(add=(("x-proxy", "1"),), remove=("trace-id",)))
    again = codec.decode(bytearray(out))
    assert isinstance(again, Message)
    assert again.properties["x-proxy"] == "1" and "trace-id" not in again.properties
    assert parse_request(out).args == request.args


# ------------------------------------------------------------------ fuzzing


def _sample_frames() -> list[bytes]:
    body = b"".join(write_string(s) for s in ("2.0.2", "svc", "1.0.0", "m", "Ljava/lang/Object;"))
    body += b"C\x01P\x92\x01a\x01b\x60\x91\x72\x04[int\x91\x92" + b"H\x01k\x01vZ"
    request = build_header(0xC2, 0, 3, len(body)) + body
    response = b"\x94\x03abcH\x05dubbo\x052.0.2Z"
    return [
        request,
        build_header(0x02, 20, 3, len(response)) + response,
        bytes.fromhex("dabbe2000000000000000001000000014e"),
    ]


def _drive(data: bytes) -> None:
    codec = DubboCodec(Side.DOWNSTREAM, {"max_depth": 16}, 4096)
    buf = bytearray(data)
    for _ in range(50):
        try:
            msg = codec.decode(buf)
        except ProtocolError as exc:
            if exc.fatal:
                return
            continue
        if msg is NEED_DATA:
            return
        assert isinstance(msg, Message)
        try:
            codec.encode(msg, mutation=Mutation(add=(("a", "b"),)), request_id=1)
        except ProtocolError as exc:
            assert not exc.fatal
        codec.encode_heartbeat_reply(msg)
        codec.encode_error(msg, ErrorType.ROUTE_NOT_FOUND, "x")


@given(st.binary(max_size=300))
@settings(max_examples=200)
def test_fuzz_random_bytes_only_protocol_errors(data: bytes) -> None:
    _drive(b"\xda\xbb" + data)
    _drive(data)


@given(st.sampled_from(_sample_frames()), st.data())
@settings(max_examples=300)
def test_fuzz_mutated_frames_only_protocol_errors(frame: bytes, data: st.DataObject) -> None:
    mutated = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 6))):
        index = data.draw(st.integers(16, len(mutated) - 1))
        mutated[index] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):  # keep the declared length consistent half of the time
        mutated[12:16] = (len(mutated) - 16).to_bytes(4, "big")
    _drive(bytes(mutated))


def test_unhashable_map_keys_cost_nothing_to_name() -> None:
    """Lists referring back to the one before, twice each: 22 levels stand for 2**22
    elements in about 200 bytes (each level more doubles it). Used as a map key, the value
    is named, not printed (its repr took seconds and megabytes)."""
    stream = bytearray(b"W")  # an open list: reference 0
    stream += b"\x7a\x90\x90"  # [0, 0]: reference 1
    for level in range(1, 22):
        stream += b"\x7a" + (b"Q" + write_int(level)) * 2  # [previous, previous]
    stream += b"H" + b"Q" + write_int(22) + b"\x90Z"  # {the last list: 0}
    stream += b"Z"
    value, end = read_value(bytes(stream), 0, len(stream), ReadContext())
    assert end == len(stream)
    assert value[-1] == {"<list key 0>": 0}
