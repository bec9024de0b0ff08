"""``decode_many`` (merging pipelined commands, or the replies to them) agrees with
``decode`` on every byte stream: same bytes framed, same count, same errors at the same
place. Merging only saves objects; it never frames differently."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from metaprotocol.codecs.redis import RedisCodec
from metaprotocol.core.codec import Side
from metaprotocol.core.message import NEED_DATA, Message, MessageType, ProtocolError

_REQUESTS = st.sampled_from(
    [
        b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
        b"*3\r\n$3\r\nSET\r\n$16\r\nkey:__rand_int__\r\n$3\r\nxxx\r\n",
        b"*1\r\n$4\r\nPING\r\n",
        b"*2\r\n$3\r\nGET\r\n$120\r\n" + b"x" * 120 + b"\r\n",
        b"*2\r\n$3\r\nget\r\n$0\r\n\r\n",
        b"*1\r\n$5\r\nMULTI\r\n",  # refused: never merged
        b"*2\r\n$5\r\nHELLO\r\n$1\r\n2\r\n",  # answered by the proxy: never merged
        b"PING\r\n",  # inline
        b"*0\r\n",  # empty, skipped
        b"*2\r\n$3\r\nGET\r\n$01\r\nk\r\n",  # invalid length
        b"*2\r\n$3\r\nGET\r\n$1\r\nkX\r\n",  # bad terminator
        b"*10\r\n" + b"$1\r\na\r\n" * 10,  # more elements than the fast path takes
    ]
)
_REPLIES = st.sampled_from(
    [
        b"+OK\r\n",
        b"-ERR wrong\r\n",
        b":42\r\n",
        b":-1\r\n",
        b"$3\r\nabc\r\n",
        b"$-1\r\n",
        b"$0\r\n\r\n",
        b"*2\r\n$1\r\na\r\n:1\r\n",
        b">2\r\n+pubsub\r\n+x\r\n",  # push
        b"_\r\n",
        b":x\r\n",  # invalid integer
        b"$01\r\na\r\n",  # invalid length
        b"$2\r\nabXY",  # bad terminator
    ]
)


def _run(codec: RedisCodec, data: bytes, cuts: list[int], many: bool, limit: int) -> list[object]:
    """Framed units as (frame, count) until NEED_DATA at the end, or the error's text."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    buffer = bytearray()
    out: list[object] = []
    for a, b in itertools.pairwise(points):
        buffer += data[a:b]
        while True:
            try:
                if many:
                    result = codec.decode_many(buffer, limit, lambda first, other: True)
                else:
                    result = codec.decode(buffer)
            except ProtocolError as exc:
                out.append(("error", str(exc)))
                return out
            if result is NEED_DATA:
                break
            assert isinstance(result, Message)
            out.append((result.frame, result.count, result.type, result.status))
    out.append(("left", bytes(buffer)))
    return out


def _flatten(units: list[object]) -> tuple[bytes, int, list[object]]:
    frames = b""
    count = 0
    other: list[object] = []
    for unit in units:
        assert isinstance(unit, tuple)
        if isinstance(unit[0], bytes) and len(unit) == 4:
            frames += unit[0]
            count += unit[1]
            if unit[2] is not MessageType.REQUEST and unit[2] is not MessageType.RESPONSE:
                other.append(unit[0])  # heartbeats keep their own messages
        else:
            other.append(unit)
    return frames, count, other


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(_REQUESTS, max_size=20),
    cuts=st.lists(st.integers(0, 5000), max_size=5),
    limit=st.integers(1, 25),
)
def test_merged_requests_frame_exactly_like_one_by_one(
    parts: list[bytes], cuts: list[int], limit: int
) -> None:
    data = b"".join(parts)
    one = _run(RedisCodec(Side.DOWNSTREAM, {}, 1 << 20), data, cuts, False, limit)
    merged = _run(RedisCodec(Side.DOWNSTREAM, {}, 1 << 20), data, cuts, True, limit)
    assert _flatten(merged) == _flatten(one)
    for unit in merged:
        if isinstance(unit, tuple) and len(unit) == 4:
            assert 1 <= unit[1] <= limit


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(_REPLIES, max_size=20),
    cuts=st.lists(st.integers(0, 5000), max_size=5),
    limit=st.integers(1, 25),
)
def test_merged_replies_frame_exactly_like_one_by_one(
    parts: list[bytes], cuts: list[int], limit: int
) -> None:
    data = b"".join(parts)
    one = _run(RedisCodec(Side.UPSTREAM, {}, 1 << 20), data, cuts, False, limit)
    merged = _run(RedisCodec(Side.UPSTREAM, {}, 1 << 20), data, cuts, True, limit)
    assert _flatten(merged)[:2] == _flatten(one)[:2]
    assert [u for u in merged if u[0] in ("error", "left")] == [  # type: ignore[index]
        u
        for u in one
        if u[0] in ("error", "left")  # type: ignore[index]
    ]
    for unit in merged:
        if isinstance(unit, tuple) and len(unit) == 4 and unit[1] > 1:
            assert unit[3].value == "ok"  # errors and pushes are never merged
            assert not unit[0].startswith((b">", b"-"))


def test_a_merge_stops_where_the_route_changes() -> None:
    codec = RedisCodec(Side.DOWNSTREAM, {}, 1 << 20)
    a = b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n"
    s = b"*2\r\n$3\r\nGET\r\n$9\r\nsession:1\r\n"
    buffer = bytearray(a + a + s + a)

    def same(first: dict[str, str], other: dict[str, str]) -> bool:
        return first["key"].startswith("session:") == other["key"].startswith("session:")

    first = codec.decode_many(buffer, 10, same)
    assert isinstance(first, Message) and first.count == 2 and first.frame == a + a
    assert first.properties == {"command": "GET", "key": "a"}
    second = codec.decode_many(buffer, 10, same)
    assert isinstance(second, Message) and second.count == 1 and second.frame == s
    third = codec.decode_many(buffer, 10, same)
    assert isinstance(third, Message) and third.count == 1 and third.frame == a
    assert buffer == b""


def test_a_merge_never_exceeds_max_message_size() -> None:
    a = b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n"  # 20 bytes
    codec = RedisCodec(Side.DOWNSTREAM, {}, 50)
    buffer = bytearray(a * 5)
    sizes = []
    while buffer:
        msg = codec.decode_many(buffer, 10, lambda first, other: True)
        assert isinstance(msg, Message)
        sizes.append(len(msg.frame))
    assert sizes == [40, 40, 20]
