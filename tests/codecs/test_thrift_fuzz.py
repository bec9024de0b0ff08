"""Thrift codec fuzzing: random and mutated bytes give messages, NEED_DATA or ProtocolError only."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from metaprotocol.codecs.thrift import ThriftCodec
from metaprotocol.core.codec import Side
from metaprotocol.core.message import NEED_DATA, ErrorType, Message, ProtocolError
from tests.codecs.vectors import load_vectors

SAMPLES = [bytes.fromhex(entry["hex"]) for entry in load_vectors("thrift")]
# A nested compact reply and a framed binary one, in case the vectors file changes.
SAMPLES += [
    bytes.fromhex(
        "82410007676574557365720c0016541805616c6963651928016101621b0185016b021117000000000000f83f0000"
    ),
    bytes.fromhex("0000001e800100010000000361646400000001080001000000140800020000001600"),
]
OPTIONS = [
    {},
    {"transport": "framed"},
    {"transport": "unframed"},
    {"transport": "header"},
    {"protocol": "compact"},
    {"transport": "unframed", "protocol": "binary"},
]


def drive(codec: ThriftCodec, chunks: list[bytes]) -> list[Message]:
    """Feed chunks; stop at a fatal error. Every decode must make progress or ask for data."""
    buf = bytearray()
    out: list[Message] = []
    for chunk in chunks:
        buf += chunk
        while buf:
            before = len(buf)
            try:
                result = codec.decode(buf)
            except ProtocolError as exc:
                if exc.fatal:
                    return out
                assert len(buf) < before, "a non-fatal error must consume the bad bytes"
                continue
            if result is NEED_DATA:
                assert len(buf) == before
                break
            assert isinstance(result, Message)
            assert len(buf) < before
            assert type(result.frame) is bytes
            # Re-encoding never raises for anything the codec accepted.
            codec.encode(result, request_id=12345)
            assert codec.encode_error(result, ErrorType.UNSPECIFIED, "x")
            out.append(result)
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    pieces = []
    last = 0
    for point in [*points, len(data)]:
        pieces.append(data[last:point])
        last = point
    return pieces


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=200),
    options=st.sampled_from(OPTIONS),
    side=st.sampled_from(list(Side)),
    cuts=st.lists(st.integers(min_value=0), max_size=5),
)
def test_random_bytes(data: bytes, options: dict[str, str], side: Side, cuts: list[int]) -> None:
    drive(ThriftCodec(side, options, 4096), split(data, cuts))


@settings(max_examples=400, deadline=None)
@given(
    sample=st.sampled_from(SAMPLES),
    edits=st.lists(
        st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=4
    ),
    truncate=st.integers(min_value=0, max_value=64),
    options=st.sampled_from(OPTIONS),
    cuts=st.lists(st.integers(min_value=0), max_size=4),
)
def test_mutated_frames(
    sample: bytes,
    edits: list[tuple[int, int]],
    truncate: int,
    options: dict[str, str],
    cuts: list[int],
) -> None:
    data = bytearray(sample)
    for where, value in edits:
        data[where % len(data)] = value
    mutated = bytes(data[: max(1, len(data) - truncate)]) + sample
    drive(ThriftCodec(Side.UPSTREAM, options, 4096), split(mutated, cuts))


@settings(max_examples=100, deadline=None)
@given(sample=st.sampled_from(SAMPLES), cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_random_splits_give_the_same_messages(sample: bytes, cuts: list[int]) -> None:
    data = sample * 3
    whole = drive(ThriftCodec(Side.UPSTREAM, {}, 1 << 16), [data])
    pieces = drive(ThriftCodec(Side.UPSTREAM, {}, 1 << 16), split(data, cuts))
    assert [m.frame for m in whole] == [m.frame for m in pieces] == [sample] * 3
