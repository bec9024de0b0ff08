"""Redis codec, upstream side: framing RESP2 and RESP3 replies recorded from redis-server."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metaprotocol.codecs.redis import RedisCodec
from metaprotocol.core.codec import Side
from metaprotocol.core.message import (
    NEED_DATA,
    ErrorType,
    Message,
    MessageType,
    ProtocolError,
    ResponseStatus,
)
from tests.codecs.feeding import decode_all, feed

MAX = 1 << 20
GOLDEN = Path(__file__).with_name("data") / "redis_replies.json"


def upstream(max_message_size: int = MAX, **options: int) -> RedisCodec:
    return RedisCodec(Side.UPSTREAM, options, max_message_size)


def load_golden() -> list[dict[str, Any]]:
    document = json.loads(GOLDEN.read_text())
    assert document["server"].startswith("Redis server v=")
    exchanges: list[dict[str, Any]] = document["exchanges"]
    for exchange in exchanges:
        exchange["bytes"] = exchange["bytes"].encode("latin-1")
    return exchanges


EXCHANGES = load_golden()
GOLDEN_STREAM = b"".join(e["bytes"] for e in EXCHANGES)
GOLDEN_COUNT = sum(e["replies"] for e in EXCHANGES)


def _name(exchange: dict[str, Any]) -> str:
    return f"resp{exchange['protocol']}-" + "-".join(exchange["command"][:3])[:40]


@pytest.mark.parametrize("exchange", EXCHANGES, ids=_name)
def test_every_recorded_reply_decodes_whole(exchange: dict[str, Any]) -> None:
    data: bytes = exchange["bytes"]
    buffer = bytearray(data)
    messages = decode_all(upstream(), buffer)
    assert buffer == b""
    assert len(messages) == exchange["replies"]
    assert b"".join(m.frame for m in messages) == data
    for message in messages:
        assert message.type is MessageType.RESPONSE
        assert message.request_id is None
        error = message.frame[:1] in (b"-", b"!")
        assert message.status is (ResponseStatus.ERROR if error else ResponseStatus.OK)
        assert message.properties == ({"push": "1"} if message.frame[:1] == b">" else {})


@pytest.mark.parametrize("exchange", EXCHANGES, ids=_name)
def test_every_prefix_of_a_recorded_reply_needs_data(exchange: dict[str, Any]) -> None:
    data: bytes = exchange["bytes"]
    first = upstream().decode(bytearray(data))
    assert isinstance(first, Message)
    cuts = range(len(first.frame)) if len(data) < 300 else range(0, len(first.frame), 97)
    for cut in cuts:
        buffer = bytearray(data[:cut])
        assert upstream().decode(buffer) is NEED_DATA
        assert len(buffer) == cut


def test_recorded_stream_splits_correctly() -> None:
    messages = decode_all(upstream(), bytearray(GOLDEN_STREAM))
    assert len(messages) == GOLDEN_COUNT
    assert b"".join(m.frame for m in messages) == GOLDEN_STREAM


def test_recorded_stream_byte_at_a_time() -> None:
    codec = upstream()
    messages = feed(codec, [GOLDEN_STREAM[i : i + 1] for i in range(len(GOLDEN_STREAM))])
    assert len(messages) == GOLDEN_COUNT


@pytest.mark.parametrize("seed", range(10))
def test_recorded_stream_random_split(seed: int) -> None:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(GOLDEN_STREAM)), 200))
    bounds = zip([0, *cuts], [*cuts, len(GOLDEN_STREAM)], strict=True)
    messages = feed(upstream(), [GOLDEN_STREAM[a:b] for a, b in bounds])
    expected = decode_all(upstream(), bytearray(GOLDEN_STREAM))
    assert [m.frame for m in messages] == [m.frame for m in expected]


def test_attribute_and_its_reply_are_one_message() -> None:
    (exchange,) = [e for e in EXCHANGES if e["command"] == ["DEBUG", "PROTOCOL", "attrib"]]
    (message,) = decode_all(upstream(), bytearray(exchange["bytes"]))
    assert message.frame.startswith(b"|1\r\n")
    assert message.frame.endswith(b"Some real reply following the attribute\r\n")


def test_push_is_marked_and_followed_by_the_real_reply() -> None:
    (exchange,) = [e for e in EXCHANGES if e["command"] == ["DEBUG", "PROTOCOL", "push"]]
    push, reply = decode_all(upstream(), bytearray(exchange["bytes"]))
    assert push.properties == {"push": "1"}
    assert reply.properties == {}
    assert reply.frame == b"$40\r\nSome real reply following the push reply\r\n"


SYNTHETIC = [
    b"!21\r\nSYNTAX invalid syntax\r\n",
    b"=15\r\ntxt:Some string\r\n",
    b"(-3492890328409238509324850943850943825024385\r\n",
    b",inf\r\n",
    b",-inf\r\n",
    b",nan\r\n",
    b",1.23e-5\r\n",
    b":+5\r\n",
    b"#f\r\n",
    b"*-1\r\n",
    b"*0\r\n",
    b"%0\r\n",
    b"~0\r\n",
    b"|0\r\n+OK\r\n",
    b"*2\r\n|1\r\n+ttl\r\n:3600\r\n$1\r\na\r\n:2\r\n",  # attribute on an element
    # an attribute whose value carries an attribute, then the (error) reply itself
    b"|1\r\n+a\r\n|1\r\n+b\r\n+c\r\n:1\r\n-ERR attributed error\r\n",
    b">3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n",
    b"$?\r\n;4\r\nHell\r\n;5\r\no wor\r\n;1\r\nd\r\n;0\r\n",
    b"*?\r\n:1\r\n:2\r\n*?\r\n.\r\n.\r\n",
    b"%?\r\n+a\r\n:1\r\n+b\r\n$?\r\n;1\r\nx\r\n;0\r\n.\r\n",
    b"~?\r\n.\r\n",
    b"*3\r\n*2\r\n*1\r\n*0\r\n_\r\n%1\r\n*1\r\n+k\r\n~1\r\n#t\r\n$-1\r\n",
]


@pytest.mark.parametrize("frame", SYNTHETIC)
def test_synthetic_resp3_reply_decodes_whole_at_any_split(frame: bytes) -> None:
    message = upstream().decode(bytearray(frame + b"+NEXT\r\n"))
    assert isinstance(message, Message)
    assert message.frame == frame
    error = frame.startswith((b"!", b"-")) or frame.startswith(b"|1\r\n+a\r\n|1")
    assert message.status is (ResponseStatus.ERROR if error else ResponseStatus.OK)
    assert message.properties == ({"push": "1"} if frame[:1] == b">" else {})
    for cut in range(len(frame)):
        assert upstream().decode(bytearray(frame[:cut])) is NEED_DATA
    messages = feed(upstream(), [frame[i : i + 1] for i in range(len(frame))])
    assert [m.frame for m in messages] == [frame]


@pytest.mark.parametrize(
    "frame",
    [
        b"?what\r\n",
        b":12a\r\n",
        b":\r\n",
        b",one\r\n",
        b"#x\r\n",
        b"_x\r\n",
        b"$3\r\nabcd\r\n",
        b"$-2\r\n",
        b"$03\r\nabc\r\n",
        b"!-1\r\n",
        b"=2\r\nab\r\n",
        b"=5\r\ntxtab\r\n",
        b"~-1\r\n",
        b"%1\r\n+a\r\n.\r\n",
        b".\r\n",
        b"%?\r\n+a\r\n.\r\n",
        b"$?\r\n+a\r\n",
        b";3\r\nabc\r\n",
        b"*?\r\n.x\r\n",
    ],
)
def test_malformed_replies_are_fatal_bad_response(frame: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        upstream().decode(bytearray(frame))
    assert caught.value.fatal
    assert caught.value.error_type is ErrorType.BAD_RESPONSE


def test_nesting_depth_limit() -> None:
    assert isinstance(
        upstream(max_nesting_depth=3).decode(bytearray(b"*1\r\n" * 3 + b":1\r\n")), Message
    )
    with pytest.raises(ProtocolError, match="nesting"):
        upstream(max_nesting_depth=3).decode(bytearray(b"*1\r\n" * 4 + b":1\r\n"))


def test_aggregate_length_limits() -> None:
    with pytest.raises(ProtocolError, match="limit 4"):
        upstream(max_array_length=4).decode(bytearray(b"*5\r\n"))
    with pytest.raises(ProtocolError) as caught:
        upstream(max_message_size=100).decode(bytearray(b"*50\r\n"))
    assert caught.value.error_type is ErrorType.MESSAGE_TOO_LARGE


def test_size_limits() -> None:
    with pytest.raises(ProtocolError) as caught:
        upstream(max_message_size=1000).decode(bytearray(b"$5000\r\n"))
    assert caught.value.error_type is ErrorType.MESSAGE_TOO_LARGE
    codec = upstream(max_message_size=100)
    buffer = bytearray(b"+" + b"a" * 98)
    assert codec.decode(buffer) is NEED_DATA
    buffer += b"a"
    with pytest.raises(ProtocolError) as caught:
        codec.decode(buffer)
    assert caught.value.error_type is ErrorType.MESSAGE_TOO_LARGE
    exact = b"+" + b"a" * 97 + b"\r\n"
    assert isinstance(upstream(max_message_size=100).decode(bytearray(exact)), Message)


def test_large_reply_in_pieces_is_not_rescanned() -> None:
    frame = b"$400000\r\n" + b"\r\n" * 200_000 + b"\r\n"
    codec = upstream()
    buffer = bytearray()
    results = []
    for offset in range(0, len(frame), 1000):
        buffer += frame[offset : offset + 1000]
        results.append(codec.decode(buffer))
    assert all(r is NEED_DATA for r in results[:-1])
    assert isinstance(results[-1], Message)


def test_wide_array_in_pieces() -> None:
    frame = b"*30000\r\n" + b":12345\r\n" * 30_000
    messages = feed(upstream(), [frame[i : i + 700] for i in range(0, len(frame), 700)])
    assert [m.frame for m in messages] == [frame]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from([*SYNTHETIC, *(e["bytes"] for e in EXCHANGES[:40])])
        | st.binary(max_size=30),
        max_size=6,
    ),
    st.integers(min_value=1, max_value=9),
)
def test_fuzz_only_messages_need_data_or_protocol_errors(parts: list[bytes], step: int) -> None:
    data = b"".join(parts)
    codec = upstream(max_message_size=4096)
    buffer = bytearray()
    for offset in range(0, len(data), step):
        buffer += data[offset : offset + step]
        while True:
            before = len(buffer)
            try:
                result = codec.decode(buffer)
            except ProtocolError as error:
                assert error.fatal
                return
            if result is NEED_DATA:
                assert len(buffer) == before
                break
            assert isinstance(result, Message)
            assert len(buffer) == before - len(result.frame)
