"""Redis codec object: options, pass-through encode, -ERR replies, registry and conformance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from redis.connection import Connection

from metaprotocol.codecs.redis import RedisCodec
from metaprotocol.codecs.registry import get_codec
from metaprotocol.core.codec import Codec, Ordering, Side
from metaprotocol.core.message import ErrorType, Message, MessageType, Mutation
from metaprotocol.testing.conformance import check_codec

MAX = 1 << 20


def pack(*arguments: str | bytes | int) -> bytes:
    return b"".join(Connection().pack_command(*arguments))


def get_request(key: str = "user:1") -> Message:
    message = RedisCodec(Side.DOWNSTREAM, {}, MAX).decode(bytearray(pack("GET", key)))
    assert isinstance(message, Message)
    return message


def test_class_attributes_and_protocol() -> None:
    assert RedisCodec.name == "redis"
    assert RedisCodec.ordering is Ordering.ORDERED
    assert RedisCodec.supports_mutation is False
    for side in Side:
        assert isinstance(RedisCodec(side, {}, MAX), Codec)


def test_registered_under_redis() -> None:
    assert get_codec("redis") is RedisCodec


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"max_depth": 3}, "unknown option"),
        ({"max_nesting_depth": 0}, "positive integer"),
        ({"max_array_length": "10"}, "positive integer"),
        ({"max_inline_size": True}, "positive integer"),
    ],
)
def test_bad_options_raise_value_error(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RedisCodec(Side.DOWNSTREAM, options, MAX)


def test_good_options_are_kept() -> None:
    codec = RedisCodec(Side.UPSTREAM, {"max_nesting_depth": 5, "max_inline_size": 10}, MAX)
    assert codec.options["max_nesting_depth"] == 5
    assert codec.options["max_array_length"] == 4 * 1024 * 1024


def test_encode_returns_the_frame_itself_even_with_a_mutation() -> None:
    request = get_request()
    codec = RedisCodec(Side.UPSTREAM, {}, MAX)
    assert codec.encode(request) is request.frame
    assert codec.encode(request, mutation=Mutation(add=(("key", "other"),))) is request.frame
    with pytest.raises(ValueError, match="no request ids"):
        codec.encode(request, request_id=7)


def test_heartbeat_reply_is_none() -> None:
    assert RedisCodec(Side.DOWNSTREAM, {}, MAX).encode_heartbeat_reply(get_request()) is None


@pytest.mark.parametrize(
    ("error", "detail", "expected"),
    [
        (ErrorType.ROUTE_NOT_FOUND, "", b"-ERR no route for command GET\r\n"),
        (ErrorType.NO_HEALTHY_UPSTREAM, "", b"-ERR no healthy upstream\r\n"),
        (ErrorType.OVER_LIMIT, "", b"-ERR rate limit exceeded\r\n"),
        (ErrorType.TIMEOUT, "after 2s", b"-ERR upstream request timeout: after 2s\r\n"),
        (ErrorType.BAD_REQUEST, "unknown thing", b"-ERR unknown thing\r\n"),
        (ErrorType.BAD_REQUEST, "", b"-ERR bad request\r\n"),
        (ErrorType.MESSAGE_TOO_LARGE, "", b"-ERR message too large\r\n"),
        (ErrorType.UPSTREAM_RESET, "", b"-ERR upstream connection reset\r\n"),
    ],
)
def test_error_reply_texts(error: ErrorType, detail: str, expected: bytes) -> None:
    assert (
        RedisCodec(Side.DOWNSTREAM, {}, MAX).encode_error(get_request(), error, detail) == expected
    )


_ERROR_PREFIX = {ErrorType.UNAUTHENTICATED: b"-NOAUTH ", ErrorType.PERMISSION_DENIED: b"-NOPERM "}


@pytest.mark.parametrize("error", list(ErrorType))
@pytest.mark.parametrize("detail", ["", "a\r\nb\rc\nd", "ü \x00 \u2028", "x" * 5000])
@pytest.mark.parametrize("with_request", [True, False])
def test_every_error_reply_is_one_valid_resp_error(
    error: ErrorType, detail: str, with_request: bool
) -> None:
    request = get_request("k\r\ney") if with_request else None
    reply = RedisCodec(Side.DOWNSTREAM, {}, MAX).encode_error(request, error, detail)
    assert reply is not None
    prefix = _ERROR_PREFIX.get(error, b"-ERR ")
    assert reply.startswith(prefix)
    assert reply.endswith(b"\r\n")
    assert b"\r" not in reply[:-2] and b"\n" not in reply[:-2]
    assert len(reply) < 600
    decoded = RedisCodec(Side.UPSTREAM, {}, MAX).decode(bytearray(reply))
    assert isinstance(decoded, Message)
    assert decoded.frame == reply
    assert decoded.type is MessageType.RESPONSE


def test_conformance_kit() -> None:
    document = json.loads((Path(__file__).with_name("data") / "redis_replies.json").read_text())
    replies = [
        e["bytes"].encode("latin-1")
        for e in document["exchanges"]
        if e["replies"] == 1 and len(e["bytes"]) < 2000
    ]
    requests = [
        pack("SET", "key", "value"),
        pack("GET", "session:1"),
        pack("MSET", "a", "1", "b", b"\r\n\x00"),
        pack("PING"),
        # Not an inline command: those are sent on as RESP arrays, not passed through
        # (test_redis_inline.py covers them).
    ]
    check_codec(
        RedisCodec,
        requests=requests,
        responses=replies,
        max_message_size=1 << 16,
        fuzz_iterations=150,
    )
