"""Redis codec, downstream side: framing RESP2 requests and extracting command and key."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.connection import Connection

from metaprotocol.codecs.redis import NON_POOLABLE_COMMANDS, QUIT_DETAIL, RedisCodec
from metaprotocol.codecs.redis.request import split_inline
from metaprotocol.core.codec import Side
from metaprotocol.core.message import (
    NEED_DATA,
    ErrorType,
    Message,
    MessageType,
    ProtocolError,
)
from tests.codecs.feeding import decode_all, feed

MAX = 1 << 20


def downstream(max_message_size: int = MAX, **options: int) -> RedisCodec:
    return RedisCodec(Side.DOWNSTREAM, options, max_message_size)


def pack(*arguments: str | bytes | int) -> bytes:
    """A request exactly as redis-py sends it."""
    return b"".join(Connection().pack_command(*arguments))


REDIS_PY_REQUESTS: list[tuple[tuple[str | bytes | int, ...], dict[str, str]]] = [
    (("SET", "key", "value"), {"command": "SET", "key": "key"}),
    (("get", "session:42"), {"command": "GET", "key": "session:42"}),
    (("PING",), {"command": "PING"}),
    (("MSET", "a", "1", "b", "2", "c", "3", "d", "4", "e", "5"), {"command": "MSET", "key": "a"}),
    (("SET", b"k\r\nwith\x00crlf", b"\xff" * 100), {"command": "SET", "key": "k\r\nwith\x00crlf"}),
    (("SET", "big", b"v" * 70_000), {"command": "SET", "key": "big"}),
    (("HSET", "h", "f", 12345), {"command": "HSET", "key": "h"}),
    (("GET", "用户:1"), {"command": "GET", "key": "用户:1"}),
    (
        ("GET", b"\xff\xfe"),
        {"command": "GET", "key": b"\xff\xfe".decode("utf-8", "surrogateescape")},
    ),
    (("GET", ""), {"command": "GET", "key": ""}),
    (("ClUsTeR", "info"), {"command": "CLUSTER", "key": "info"}),
    (("RPUSH", "list", *[str(i) for i in range(40)]), {"command": "RPUSH", "key": "list"}),
    (("XREAD", "COUNT", "2", "STREAMS", "block", "0"), {"command": "XREAD", "key": "COUNT"}),
]


@pytest.mark.parametrize(("arguments", "properties"), REDIS_PY_REQUESTS)
def test_redis_py_request_decodes_with_command_and_key(
    arguments: tuple[str | bytes | int, ...], properties: dict[str, str]
) -> None:
    frame = pack(*arguments)
    buffer = bytearray(frame)
    message = downstream().decode(buffer)
    assert isinstance(message, Message)
    assert message.type is MessageType.REQUEST
    assert message.frame == frame
    assert message.properties == properties
    assert message.request_id is None
    assert buffer == b""


def test_round_trip_is_identity() -> None:
    frame = pack("SET", "key", "value")
    codec = downstream()
    message = codec.decode(bytearray(frame))
    assert isinstance(message, Message)
    assert codec.encode(message) is message.frame
    assert RedisCodec(Side.UPSTREAM, {}, MAX).encode(message) == frame


ALL_FRAMES = [pack(*arguments) for arguments, _ in REDIS_PY_REQUESTS] + [
    b"PING\r\n",
    b"SET \"a b\" 'c d'\n",
]
STREAM = b"".join(ALL_FRAMES)


def test_pipelined_stream_splits_into_every_request() -> None:
    messages = decode_all(downstream(), bytearray(STREAM))
    assert [m.frame for m in messages] == ALL_FRAMES
    assert messages[-1].properties == {"command": "SET", "key": "a b"}


def test_byte_at_a_time() -> None:
    messages = feed(downstream(), [STREAM[i : i + 1] for i in range(len(STREAM))])
    assert [m.frame for m in messages] == ALL_FRAMES


@pytest.mark.parametrize("seed", range(20))
def test_random_split(seed: int) -> None:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(STREAM)), 30))
    chunks = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)], strict=True)]
    messages = feed(downstream(), chunks)
    assert [m.frame for m in messages] == ALL_FRAMES
    assert [m.properties for m in messages[: len(REDIS_PY_REQUESTS)]] == [
        p for _, p in REDIS_PY_REQUESTS
    ]


@pytest.mark.parametrize("frame", ALL_FRAMES[:5] + ALL_FRAMES[-2:])
def test_every_prefix_needs_data_and_consumes_nothing(frame: bytes) -> None:
    for cut in range(len(frame)):
        buffer = bytearray(frame[:cut])
        assert downstream().decode(buffer) is NEED_DATA
        assert buffer == frame[:cut]


def test_fresh_buffer_after_need_data_is_parsed_from_scratch() -> None:
    codec = downstream()
    frame = pack("SET", "k", "v")
    assert codec.decode(bytearray(frame[:10])) is NEED_DATA
    other = pack("GET", "other")
    message = codec.decode(bytearray(other))  # a different buffer: stale progress is dropped
    assert isinstance(message, Message)
    assert message.frame == other


def test_large_bulk_in_pieces_is_not_rescanned() -> None:
    """While a declared bulk is incomplete, decode returns at once (no scan of the data)."""
    frame = pack("SET", "big", b"\r\n" * 200_000)  # CRLFs in the data would fool a rescan
    codec = downstream()
    buffer = bytearray()
    results = []
    for offset in range(0, len(frame), 1000):
        buffer += frame[offset : offset + 1000]
        results.append(codec.decode(buffer))
    assert all(r is NEED_DATA for r in results[:-1])
    last = results[-1]
    assert isinstance(last, Message)
    assert last.frame == frame


def test_many_small_arguments_in_pieces_resume_where_they_stopped() -> None:
    frame = pack("RPUSH", "list", *[str(i) for i in range(20_000)])
    codec = downstream()
    messages = feed(codec, [frame[i : i + 512] for i in range(0, len(frame), 512)])
    assert [m.frame for m in messages] == [frame]


# -- inline commands ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "arguments"),
    [
        (b"PING", [b"PING"]),
        (b"  set   key  value ", [b"set", b"key", b"value"]),
        (b"set\tkey\tvalue", [b"set", b"key", b"value"]),
        (b'set "a b" c', [b"set", b"a b", b"c"]),
        (b'set "\\x41\\n\\"q\\\\" c', [b"set", b'A\n"q\\', b"c"]),
        (b"set 'it\\'s' x", [b"set", b"it's", b"x"]),
        (b'set k"ey" v', [b"set", b"key", b"v"]),
        (b"set a\x0bb c", [b"set", b"a\x0bb", b"c"]),  # \v does not end a bare word
        (b'set "" x', [b"set", b"", b"x"]),
        (b"get key\x00 ignored", [b"get", b"key"]),
        (b'set "unbalanced', None),
        (b"set 'unbalanced", None),
        (b'set "a"b', None),
        (b"", []),
        (b"   ", []),
    ],
)
def test_inline_split_matches_sdssplitargs(line: bytes, arguments: list[bytes] | None) -> None:
    assert split_inline(line) == arguments


def test_inline_commands_decode_with_lf_or_crlf() -> None:
    buffer = bytearray(b"get foo\r\nSET bar baz\nping\r\n")
    messages = decode_all(downstream(), buffer)
    assert [m.frame for m in messages] == [b"get foo\r\n", b"SET bar baz\n", b"ping\r\n"]
    assert [m.properties for m in messages] == [
        {"command": "GET", "key": "foo"},
        {"command": "SET", "key": "bar"},
        {"command": "PING"},
    ]


def test_empty_commands_are_carried_as_prefix_of_the_next_request() -> None:
    frame = b"\r\n*0\r\n*-1\r\n  \r\n" + pack("GET", "k")
    buffer = bytearray(frame)
    codec = downstream()
    message = codec.decode(buffer)
    assert isinstance(message, Message)
    assert message.frame == frame
    assert message.properties == {"command": "GET", "key": "k"}
    assert codec.decode(bytearray(b"\r\n\r\n")) is NEED_DATA


def test_unbalanced_quotes_are_fatal() -> None:
    with pytest.raises(ProtocolError, match="unbalanced quotes") as caught:
        downstream().decode(bytearray(b'SET "oops\r\n'))
    assert caught.value.fatal


def test_inline_line_longer_than_limit_is_rejected() -> None:
    codec = downstream(max_inline_size=64)
    assert codec.decode(bytearray(b"x" * 64)) is NEED_DATA
    with pytest.raises(ProtocolError, match="too big inline request"):
        codec.decode(bytearray(b"x" * 65))
    with pytest.raises(ProtocolError, match="too big inline request"):
        downstream(max_inline_size=64).decode(bytearray(b"GET " + b"k" * 70 + b"\r\n"))


def test_default_inline_limit_is_64kib() -> None:
    assert downstream().decode(bytearray(b"x" * 65536)) is NEED_DATA
    with pytest.raises(ProtocolError):
        downstream().decode(bytearray(b"x" * 65537))


# -- refused commands -----------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(NON_POOLABLE_COMMANDS))
def test_non_poolable_command_is_refused_and_next_command_decodes(command: str) -> None:
    codec = downstream()
    refused = pack(command, "arg1", "arg2")
    buffer = bytearray(refused + pack("GET", "after"))
    with pytest.raises(ProtocolError) as caught:
        codec.decode(buffer)
    error = caught.value
    assert not error.fatal
    assert error.error_type is ErrorType.BAD_REQUEST
    assert command in str(error)
    assert buffer == pack("GET", "after")  # the refused command's bytes are consumed
    reply = codec.encode_error(None, error.error_type, str(error))
    assert reply == f"-ERR {error}\r\n".encode()
    message = codec.decode(buffer)
    assert isinstance(message, Message)
    assert message.properties == {"command": "GET", "key": "after"}


@pytest.mark.parametrize(
    "frame", [b"subscribe news\r\n", b"Multi\r\n", b'blpop "q" 0\n', pack("client", "setname", "x")]
)
def test_refusal_is_case_insensitive_and_works_inline(frame: bytes) -> None:
    buffer = bytearray(frame + b"PING\r\n")
    with pytest.raises(ProtocolError) as caught:
        downstream().decode(buffer)
    assert not caught.value.fatal
    assert buffer == b"PING\r\n"


def test_refusal_names_the_reason() -> None:
    with pytest.raises(ProtocolError) as caught:
        downstream().decode(bytearray(pack("SUBSCRIBE", "ch")))
    assert str(caught.value) == (
        "command SUBSCRIBE is not supported by the proxy: pub/sub needs a dedicated connection"
    )


@pytest.mark.parametrize(
    ("arguments", "refused"),
    [
        (("XREAD", "BLOCK", "0", "STREAMS", "s", "$"), True),
        (("xread", "count", "1", "block", "100", "streams", "s", "0"), True),
        (("XREAD", "STREAMS", "block", "0"), False),
        (("XREAD", "COUNT", "2", "STREAMS", "s", "0"), False),
        (("XREADGROUP", "GROUP", "block", "block", "STREAMS", "s", ">"), False),
        (("XREADGROUP", "GROUP", "g", "c", "BLOCK", "5", "STREAMS", "s", ">"), True),
    ],
)
def test_xread_is_refused_only_with_block(arguments: tuple[str, ...], refused: bool) -> None:
    for frame in (pack(*arguments), " ".join(arguments).encode() + b"\r\n"):
        codec = downstream()
        if refused:
            with pytest.raises(ProtocolError) as caught:
                codec.decode(bytearray(frame))
            assert not caught.value.fatal
        else:
            message = codec.decode(bytearray(frame))
            assert isinstance(message, Message)
            assert message.properties["command"] == arguments[0].upper()


def test_quit_is_answered_ok_and_closes() -> None:
    codec = downstream()
    buffer = bytearray(pack("QUIT") + pack("GET", "x"))
    with pytest.raises(ProtocolError) as caught:
        codec.decode(buffer)
    assert caught.value.fatal
    assert str(caught.value) == QUIT_DETAIL
    assert codec.encode_error(None, caught.value.error_type, str(caught.value)) == b"+OK\r\n"


def test_ping_is_forwarded() -> None:
    message = downstream().decode(bytearray(pack("PING")))
    assert isinstance(message, Message)
    assert message.properties == {"command": "PING"}


# -- malformed input and bounds ---------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        b"*1\r\n:3\r\n",  # not a bulk string
        b"*1\r\n$-1\r\n",  # null bulk in a request
        b"*1\r\n$03\r\nGET\r\n",  # leading zero
        b"*1\r\n$+3\r\nGET\r\n",
        b"*1\r\n$ 3\r\nGET\r\n",
        b"*1\r\n$3\r\nGETX\r\n",  # data longer than declared
        b"*1\r\n$3\r\nGE\r\n\r\n",
        b"*x\r\n",
        b"*1_0\r\n",
        b"*1\r\n$" + b"9" * 30 + b"\r\n",
        b"*" + b"1" * 30,
        b"*1\r\n$1\rX",
    ],
)
def test_malformed_requests_are_fatal_protocol_errors(frame: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        downstream().decode(bytearray(frame))
    assert caught.value.fatal
    assert caught.value.error_type in (ErrorType.BAD_REQUEST, ErrorType.MESSAGE_TOO_LARGE)


def test_declared_bulk_over_limit_fails_before_the_data_arrives() -> None:
    with pytest.raises(ProtocolError) as caught:
        downstream(max_message_size=1000).decode(bytearray(b"*2\r\n$3\r\nSET\r\n$2000\r\n"))
    assert caught.value.error_type is ErrorType.MESSAGE_TOO_LARGE
    assert caught.value.fatal


def test_declared_count_over_limits() -> None:
    with pytest.raises(ProtocolError) as caught:
        downstream(max_message_size=1000).decode(bytearray(b"*1000\r\n"))
    assert caught.value.error_type is ErrorType.MESSAGE_TOO_LARGE
    with pytest.raises(ProtocolError, match="multibulk length") as caught:
        downstream(max_array_length=3).decode(bytearray(b"*4\r\n"))
    assert caught.value.error_type is ErrorType.BAD_REQUEST


def test_buffered_incomplete_request_over_limit_fails() -> None:
    codec = downstream(max_message_size=100)
    buffer = bytearray(b"GET " + b"k" * 95)  # 99 bytes of an inline line: may still fit
    assert codec.decode(buffer) is NEED_DATA
    buffer += b"k"
    with pytest.raises(ProtocolError) as caught:
        codec.decode(buffer)
    assert caught.value.error_type is ErrorType.MESSAGE_TOO_LARGE
    with pytest.raises(ProtocolError) as caught:
        downstream(max_message_size=100).decode(bytearray(b"*14\r\n" + b"$1\r\nx\r\n" * 14))
    assert caught.value.error_type is ErrorType.MESSAGE_TOO_LARGE


def test_request_of_exactly_the_limit_passes() -> None:
    frame = pack("SET", "k", "v" * 50)
    message = downstream(max_message_size=len(frame)).decode(bytearray(frame))
    assert isinstance(message, Message)
    with pytest.raises(ProtocolError):
        downstream(max_message_size=len(frame) - 1).decode(bytearray(frame))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=1, max_value=7))
def test_fuzz_only_messages_need_data_or_protocol_errors(data: bytes, step: int) -> None:
    codec = downstream(max_message_size=4096)
    buffer = bytearray()
    for offset in range(0, len(data), step):
        buffer += data[offset : offset + step]
        while True:
            before = len(buffer)
            try:
                result = codec.decode(buffer)
            except ProtocolError as error:
                if error.fatal:
                    return
                assert len(buffer) < before  # a non-fatal error consumed the command
                continue
            if result is NEED_DATA:
                assert len(buffer) == before
                break
            assert isinstance(result, Message)
            assert len(buffer) == before - len(result.frame)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.lists(st.binary(max_size=40), min_size=1, max_size=6).map(lambda a: pack(*a)),
        min_size=1,
        max_size=8,
    ),
    st.randoms(use_true_random=False),
)
def test_fuzz_valid_pipelines_split_anywhere(frames: list[bytes], rng: random.Random) -> None:
    frames = [f for f in frames if not _is_special(f)]
    data = b"".join(frames)
    cuts = sorted(rng.sample(range(len(data) + 1), min(10, len(data) + 1)))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    assert [m.frame for m in feed(downstream(), chunks)] == frames


def _is_special(frame: bytes) -> bool:
    """Whether the codec refuses this request (hypothesis may well draw b"multi"), or skips
    it without a message: redis-py splits a first argument on blanks, so one made of blanks
    packs as an empty command, ``*0``, which redis (and the codec) skip without an answer."""
    try:
        return downstream().decode(bytearray(frame)) is NEED_DATA
    except ProtocolError:
        return True


def test_an_empty_command_travels_with_the_next_one() -> None:
    # Redis skips an empty command without an answer; the codec frames it with the command
    # after it (forwarded as the client sent it, so the server skips it too).
    assert pack(b" ") == b"*0\r\n"  # what a blank first argument becomes
    frames = [pack("GET", "a"), pack(b" "), pack("GET", "b")]
    messages = feed(downstream(), frames)
    assert [m.frame for m in messages] == [frames[0], frames[1] + frames[2]]
    assert messages[1].properties == {"command": "GET", "key": "b"}


@pytest.mark.parametrize("size", [9, 10, 42, 99, 100])
def test_bulk_lengths_around_two_digits(size: int) -> None:
    """One-, two- and three-digit bulk lengths (two digits have a path of their own), whole
    and fed a byte at a time."""
    key = "k" * size
    frame = pack("GET", key) + pack("SET", key, "v" * size)
    for chunks in ([frame], [frame[i : i + 1] for i in range(len(frame))]):
        messages = feed(downstream(), chunks)
        assert [m.properties for m in messages] == [
            {"command": "GET", "key": key},
            {"command": "SET", "key": key},
        ]
        assert b"".join(m.frame for m in messages) == frame


@pytest.mark.parametrize("length", [b"05", b"1x", b"x1", b"+5", b"5 "])
def test_bad_two_character_bulk_lengths_are_refused(length: bytes) -> None:
    buffer = bytearray(b"*2\r\n$3\r\nGET\r\n$" + length + b"\r\n" + b"k" * 20 + b"\r\n")
    with pytest.raises(ProtocolError, match="invalid bulk length"):
        downstream().decode(buffer)
