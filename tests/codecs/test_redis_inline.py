"""Redis inline commands: forwarded as the RESP array of what the proxy read, or refused.

redis-server splits an inline line itself (``processInlineBuffer`` + ``sdssplitargs`` in
src/networking.c) and finds its end with ``strchr``, which stops at a NUL byte: a line
holding one is never executed and holds up whatever follows it on the connection. The
proxy therefore sends every inline command on as a RESP array (what redis-py sends for
the same arguments) and refuses a line with a NUL.
"""

from __future__ import annotations

import pytest
from redis.connection import Connection

from metaprotocol.codecs.redis import RedisCodec
from metaprotocol.core.codec import Side
from metaprotocol.core.message import NEED_DATA, ErrorType, Message, ProtocolError

MAX = 1 << 20


def pack(*arguments: str | bytes) -> bytes:
    """A request exactly as redis-py sends it."""
    return b"".join(Connection().pack_command(*arguments))


def forwarded(line: bytes) -> tuple[Message, bytes]:
    """The decoded message and what the upstream codec writes for it."""
    buffer = bytearray(line)
    message = RedisCodec(Side.DOWNSTREAM, {}, MAX).decode(buffer)
    assert isinstance(message, Message)
    assert not buffer and message.frame == line  # the frame is what was consumed
    return message, RedisCodec(Side.UPSTREAM, {}, MAX).encode(message)


@pytest.mark.parametrize(
    ("line", "arguments"),
    [
        (b"GET a\r\n", ("GET", "a")),
        (b"set k v\n", ("set", "k", "v")),
        (b"SET \"a b\" 'c d'\r\n", ("SET", "a b", "c d")),
        (b'SET k "\\x00\\r\\n"\r\n', ("SET", "k", b"\x00\r\n")),  # escapes inside quotes
        (b"  PING  \r\n", ("PING",)),
        (b"GET a\rb\r\n", ("GET", "a", "b")),  # a CR inside the line ends a bare word
    ],
)
def test_inline_commands_go_upstream_as_resp_arrays(
    line: bytes, arguments: tuple[str | bytes, ...]
) -> None:
    message, out = forwarded(line)
    assert out == pack(*arguments)
    key = arguments[1] if len(arguments) > 1 else None
    if isinstance(key, str):
        assert message.properties["key"] == key


def test_a_multibulk_request_still_passes_through_untouched() -> None:
    frame = pack("GET", "a")
    message = RedisCodec(Side.DOWNSTREAM, {}, MAX).decode(bytearray(frame))
    assert isinstance(message, Message)
    assert RedisCodec(Side.UPSTREAM, {}, MAX).encode(message) is message.frame


@pytest.mark.parametrize("line", [b"GET a\x00\r\n", b"\x00\n", b'SET k "v\x00"\r\n'])
def test_an_inline_nul_is_refused_and_the_connection_goes_on(line: bytes) -> None:
    codec = RedisCodec(Side.DOWNSTREAM, {}, MAX)
    buffer = bytearray(line + pack("GET", "after"))
    with pytest.raises(ProtocolError) as caught:
        codec.decode(buffer)
    assert not caught.value.fatal and caught.value.error_type is ErrorType.BAD_REQUEST
    reply = codec.encode_error(None, caught.value.error_type, str(caught.value))
    assert reply is not None and reply.startswith(b"-ERR Protocol error: NUL byte")
    message = codec.decode(buffer)
    assert isinstance(message, Message) and message.properties["key"] == "after"
    assert codec.decode(buffer) is NEED_DATA


def test_an_inline_command_is_not_merged_with_the_pipeline_after_it() -> None:
    codec = RedisCodec(Side.DOWNSTREAM, {}, MAX)
    buffer = bytearray(b"GET a\r\n" + pack("GET", "b") + pack("GET", "c"))
    first = codec.decode_many(buffer, 16, lambda a, b: True)
    assert isinstance(first, Message) and first.count == 1
    assert RedisCodec(Side.UPSTREAM, {}, MAX).encode(first) == pack("GET", "a")
    rest = codec.decode_many(buffer, 16, lambda a, b: True)
    assert isinstance(rest, Message) and rest.count == 2
