"""Http1Codec limits: header count and size (431), bare line ends refused at once, and
parse work linear in the number of repeated fields."""

from __future__ import annotations

import h11
import pytest

from metaprotocol.codecs.http1 import Http1Codec
from metaprotocol.core.codec import Side
from metaprotocol.core.message import NEED_DATA, ErrorType, Message, ProtocolError

PARSERS = ("fast", "h11")
LIMIT = 1 << 20


def codec(side: Side, parser: str, **options: object) -> Http1Codec:
    return Http1Codec(side, {"parser": parser, **options}, LIMIT)


def request_with(fields: int, value: bytes = b"v") -> bytes:
    """A GET whose head has ``fields`` field lines (Host included)."""
    lines = b"".join(b"X-%d: %s\r\n" % (i, value) for i in range(fields - 1))
    return b"GET / HTTP/1.1\r\nHost: h\r\n" + lines + b"\r\n"


def reply_status(down: Http1Codec, exc: ProtocolError) -> int:
    reply = down.encode_error(None, exc.error_type, str(exc))
    assert reply is not None
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "h")]))
    conn.receive_data(reply)
    event = conn.next_event()
    assert isinstance(event, h11.Response)
    assert (b"connection", b"close") in list(event.headers)
    return event.status_code


def decode_all(down: Http1Codec, data: bytes) -> Message:
    buffer = bytearray(data)
    message = down.decode(buffer)
    assert isinstance(message, Message)
    assert not buffer
    return message


@pytest.mark.parametrize("parser", PARSERS)
def test_header_count_limit(parser: str) -> None:
    ok = decode_all(codec(Side.DOWNSTREAM, parser, max_header_count=10), request_with(10))
    assert ok.properties["x-8"] == "v"
    down = codec(Side.DOWNSTREAM, parser, max_header_count=10)
    with pytest.raises(ProtocolError) as info:
        down.decode(bytearray(request_with(11)))
    assert info.value.fatal and info.value.error_type is ErrorType.MESSAGE_TOO_LARGE
    assert "max_header_count" in str(info.value)
    assert reply_status(down, info.value) == 431


@pytest.mark.parametrize("parser", PARSERS)
def test_default_header_count_is_100(parser: str) -> None:
    decode_all(codec(Side.DOWNSTREAM, parser), request_with(100))
    with pytest.raises(ProtocolError, match="max_header_count 100"):
        codec(Side.DOWNSTREAM, parser).decode(bytearray(request_with(101)))


@pytest.mark.parametrize("parser", PARSERS)
def test_header_size_limit(parser: str) -> None:
    head = request_with(3, b"y" * 100)
    exact = len(head)
    decode_all(codec(Side.DOWNSTREAM, parser, max_header_size=exact), head)
    down = codec(Side.DOWNSTREAM, parser, max_header_size=exact - 1)
    with pytest.raises(ProtocolError) as info:
        down.decode(bytearray(head))
    assert info.value.fatal and info.value.error_type is ErrorType.MESSAGE_TOO_LARGE
    assert "max_header_size" in str(info.value)
    assert reply_status(down, info.value) == 431


@pytest.mark.parametrize("parser", PARSERS)
def test_an_incomplete_head_over_the_size_limit_is_refused_before_it_ends(parser: str) -> None:
    down = codec(Side.DOWNSTREAM, parser, max_header_size="1KiB")
    buffer = bytearray(b"GET / HTTP/1.1\r\nHost: h\r\n")
    assert down.decode(buffer) is NEED_DATA
    buffer += b"X: " + b"y" * 1024  # no end of head in sight: refused now, not at 1 MiB
    with pytest.raises(ProtocolError) as info:
        down.decode(buffer)
    assert reply_status(down, info.value) == 431


@pytest.mark.parametrize("parser", PARSERS)
def test_default_header_size_is_60kib(parser: str) -> None:
    filler = 60 * 1024 - len(b"GET / HTTP/1.1\r\nHost: h\r\nX: \r\n\r\n")
    head = b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"y" * filler + b"\r\n\r\n"
    assert len(head) == 60 * 1024
    decode_all(codec(Side.DOWNSTREAM, parser), head)
    over = head.replace(b"X: ", b"X: y")
    with pytest.raises(ProtocolError, match="max_header_size 61440"):
        codec(Side.DOWNSTREAM, parser).decode(bytearray(over))


@pytest.mark.parametrize("parser", PARSERS)
def test_trailers_count_against_the_limits(parser: str) -> None:
    def chunked(trailers: int) -> bytes:
        fields = b"".join(b"T-%d: v\r\n" % i for i in range(trailers))
        return (
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n" + fields + b"\r\n"
        )

    decode_all(codec(Side.DOWNSTREAM, parser, max_header_count=5), chunked(5))
    down = codec(Side.DOWNSTREAM, parser, max_header_count=5)
    with pytest.raises(ProtocolError) as info:
        down.decode(bytearray(chunked(6)))
    assert reply_status(down, info.value) == 431


@pytest.mark.parametrize("parser", PARSERS)
def test_a_response_over_the_limits_is_a_bad_response(parser: str) -> None:
    up = codec(Side.UPSTREAM, parser, max_header_count=3)
    up.encode(decode_all(codec(Side.DOWNSTREAM, parser), request_with(1)))
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(4))
    with pytest.raises(ProtocolError) as info:
        up.decode(bytearray(b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 0\r\n\r\n"))
    assert info.value.error_type is ErrorType.BAD_RESPONSE


def test_header_limit_options_are_validated() -> None:
    for options, key in (
        ({"max_header_count": 0}, "max_header_count"),
        ({"max_header_count": "100"}, "max_header_count"),
        ({"max_header_count": True}, "max_header_count"),
        ({"max_header_size": "lots"}, "max_header_size"),
        ({"max_header_size": -1}, "max_header_size"),
    ):
        with pytest.raises(ValueError, match=f"codec_options.{key}: expected a positive"):
            Http1Codec(Side.DOWNSTREAM, options, LIMIT)
    Http1Codec(Side.DOWNSTREAM, {"max_header_size": "8KiB", "max_header_count": 5}, LIMIT)


BARE_LINE_ENDS = [
    (b"GET / HTTP/1.1\nHost: h\n\n", PARSERS),  # LF only, from the first line on
    (b"GET / HTTP/1.1\r\nHost: h\n", PARSERS),  # LF after a good start line, head not ended
    (b"GET / HTTP/1.1\r\nHost: h\rX: y", PARSERS),  # a bare CR
    # In a body, the h11 route refuses these once h11 has the next event (the chunk data).
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\n", ("fast",)),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: v\n", ("fast",)),
]


@pytest.mark.parametrize(
    ("parser", "data"), [(p, data) for data, parsers in BARE_LINE_ENDS for p in parsers]
)
def test_bare_line_ends_are_refused_at_once(parser: str, data: bytes) -> None:
    """Nothing ever completes such a head: waiting would leave the client unanswered."""
    down = codec(Side.DOWNSTREAM, parser)
    with pytest.raises(ProtocolError) as info:
        buffer = bytearray(data)
        while down.decode(buffer) is not NEED_DATA:
            pass
    assert info.value.fatal and info.value.error_type is ErrorType.BAD_REQUEST
    assert reply_status(down, info.value) == 400


def test_a_cr_at_the_end_of_what_arrived_waits_for_its_lf() -> None:
    down = codec(Side.DOWNSTREAM, "fast")
    buffer = bytearray(b"GET / HTTP/1.1\r\nHost: h\r")
    assert down.decode(buffer) is NEED_DATA
    buffer += b"\n\r"
    assert down.decode(buffer) is NEED_DATA
    buffer += b"\n"
    assert isinstance(down.decode(buffer), Message)


@pytest.mark.parametrize("parser", PARSERS)
def test_repeated_fields_are_joined_in_order(parser: str) -> None:
    """Repeated fields are gathered and joined once, in arrival order, with ", " (the
    parse time per byte of such heads is in benchmarks/parse_scaling.py)."""
    count = 5_000
    lines = b"".join(b"A: %d\r\nb: x\r\n" % i for i in range(count))
    head = b"GET / HTTP/1.1\r\nHost: h\r\n" + lines + b"\r\n"
    down = codec(Side.DOWNSTREAM, parser, max_header_count=2 * count + 1,
                 max_header_size=len(head))  # fmt: skip
    message = decode_all(down, head)
    assert message.properties["a"] == ", ".join(str(i) for i in range(count))
    assert message.properties["b"] == ", ".join(["x"] * count)
