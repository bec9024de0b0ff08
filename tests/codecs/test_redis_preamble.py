"""What a new upstream Redis connection sends first, per variant: HELLO 3 and AUTH logins,
and READONLY for Redis Cluster replicas; the replies are consumed, a refusal is a connect
failure naming the command."""

from __future__ import annotations

import pytest
from redis.connection import Connection

from metaprotocol.codecs.redis import RedisCodec
from metaprotocol.core.codec import Side
from metaprotocol.core.message import NEED_DATA, ErrorType, Message, ProtocolError
from metaprotocol.core.secrets import Credentials, Secret

MAX = 1 << 20
LOGIN = Credentials(password=Secret("pw"), username="u")


def pack(*arguments: str | bytes | int) -> bytes:
    return b"".join(Connection().pack_command(*arguments))


def upstream() -> RedisCodec:
    return RedisCodec(Side.UPSTREAM, {}, MAX)


@pytest.mark.parametrize(
    ("variant", "credentials", "expected"),
    [
        ("resp3", None, pack("HELLO", "3")),
        ("resp3", LOGIN, pack("HELLO", "3", "AUTH", "u", "pw")),
        ("", LOGIN, pack("AUTH", "u", "pw")),
        ("readonly", None, pack("READONLY")),
        ("readonly", LOGIN, pack("AUTH", "u", "pw") + pack("READONLY")),
        ("resp3+readonly", LOGIN, pack("HELLO", "3", "AUTH", "u", "pw") + pack("READONLY")),
        ("readonly+resp3", None, pack("HELLO", "3") + pack("READONLY")),
    ],
)
def test_what_each_variant_sends_first(
    variant: str, credentials: Credentials | None, expected: bytes
) -> None:
    assert upstream().preamble(variant, credentials) == expected


@pytest.mark.parametrize("variant", ["", "resp2", "resp3+replica"])
def test_nothing_or_unknown_to_send_is_refused(variant: str) -> None:
    with pytest.raises(ValueError, match="redis"):
        upstream().preamble(variant)


def test_every_opening_reply_is_consumed_before_the_first_answer() -> None:
    codec = upstream()
    codec.preamble("readonly", LOGIN)
    buffer = bytearray(b"+OK\r\n+O")
    assert codec.decode(buffer) is NEED_DATA  # AUTH's answer consumed, READONLY's pending
    buffer += b"K\r\n$1\r\nv\r\n"
    answer = codec.decode(buffer)
    assert isinstance(answer, Message) and answer.frame == b"$1\r\nv\r\n"


@pytest.mark.parametrize(
    ("replies", "refused"),
    [
        (b"-WRONGPASS invalid username-password pair\r\n", "AUTH: WRONGPASS"),
        (b"+OK\r\n-ERR This instance has cluster support disabled\r\n", "READONLY: ERR This"),
    ],
)
def test_a_refused_opening_command_is_a_connect_failure(replies: bytes, refused: str) -> None:
    codec = upstream()
    codec.preamble("readonly", LOGIN)
    with pytest.raises(ProtocolError, match=f"upstream refused {refused}") as caught:
        codec.decode(bytearray(replies))
    assert caught.value.error_type is ErrorType.CONNECT_FAILURE
