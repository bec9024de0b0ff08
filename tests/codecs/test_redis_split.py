"""The Redis codec's fan-out hook: multi-key commands split per target, answers merged,
commands that cannot be split refused with -CROSSSLOT; hash tags; the HELLO answer."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.connection import Connection

from metaprotocol import __version__
from metaprotocol.codecs.redis import RedisCodec
from metaprotocol.codecs.redis.slots import key_slot
from metaprotocol.codecs.redis.split import CROSSSLOT_REPLY
from metaprotocol.codecs.redis.values import read_value
from metaprotocol.core.codec import (
    FanOut,
    NarrowsHashInput,
    PartFailed,
    Side,
    SplitsRequests,
    capabilities_of,
)
from metaprotocol.core.message import (
    ErrorType,
    Message,
    MessageType,
    ProtocolError,
    ResponseStatus,
)

MAX = 1 << 20
Target = Callable[[Mapping[str, str]], Hashable]


def pack(*arguments: str | bytes | int) -> bytes:
    return b"".join(Connection().pack_command(*arguments))


def codec() -> RedisCodec:
    return RedisCodec(Side.DOWNSTREAM, {}, MAX)


def decode(data: bytes) -> Message:
    message = codec().decode(bytearray(data))
    assert isinstance(message, Message)
    return message


def by_first_letter(properties: Mapping[str, str]) -> Hashable:
    """A target function: keys go to the shard named by their first letter."""
    return properties.get("key", "?")[:1]


def reply(frame: bytes) -> Message:
    status = ResponseStatus.ERROR if frame[:1] in (b"-", b"!") else ResponseStatus.OK
    return Message(MessageType.RESPONSE, frame, status=status)


def split(data: bytes, target: Target = by_first_letter) -> FanOut | None:
    return codec().split(decode(data), target)


def parts_of(fan: FanOut | None) -> list[tuple[bytes, dict[str, str]]]:
    assert fan is not None
    return [(part.frame, part.properties) for part in fan.parts]


def test_the_codec_declares_the_hooks() -> None:
    caps = capabilities_of(RedisCodec)
    assert caps.split and caps.hash_input
    assert isinstance(codec(), SplitsRequests) and isinstance(codec(), NarrowsHashInput)


def test_mget_splits_per_target_and_merges_in_the_clients_key_order() -> None:
    fan = split(pack("MGET", "a1", "b1", "a2", "c1", "b2"))
    assert parts_of(fan) == [
        (pack("MGET", "a1", "a2"), {"command": "MGET", "key": "a1"}),
        (pack("MGET", "b1", "b2"), {"command": "MGET", "key": "b1"}),
        (pack("MGET", "c1"), {"command": "MGET", "key": "c1"}),
    ]
    assert fan is not None
    merged = fan.merge([
        reply(b"*2\r\n$2\r\nA1\r\n$-1\r\n"),
        reply(b"*2\r\n$2\r\nB1\r\n$2\r\nB2\r\n"),
        reply(b"*1\r\n$3\r\nC1!\r\n"),
    ])  # fmt: skip
    assert merged == b"*5\r\n$2\r\nA1\r\n$2\r\nB1\r\n$-1\r\n$3\r\nC1!\r\n$2\r\nB2\r\n"


def test_mget_merges_resp3_elements_as_they_came() -> None:
    fan = split(pack("MGET", "a", "b"))
    assert fan is not None
    merged = fan.merge([reply(b"*1\r\n_\r\n"), reply(b"*1\r\n$1\r\nx\r\n")])
    assert merged == b"*2\r\n_\r\n$1\r\nx\r\n"


ELEMENTS = st.one_of(
    st.binary(max_size=12).map(lambda b: b"$%d\r\n%s\r\n" % (len(b), b)),
    st.sampled_from([b"$-1\r\n", b"_\r\n", b"$0\r\n\r\n", b"$4\r\n\r\n\r\n\r\n", b":7\r\n",
                     b"*2\r\n$1\r\n$\r\n_\r\n", b"%1\r\n+a\r\n$-1\r\n"]),
)  # fmt: skip


@given(st.lists(ELEMENTS, min_size=1, max_size=12), st.data())
def test_mget_merge_copies_every_element_kind_as_it_came(
    elements: list[bytes], data: st.DataObject
) -> None:
    """Bulk strings and nils are framed in place, other kinds (RESP3 nulls, nested
    replies) by the reply decoder, in one part's answer alike: each lands where its key was."""
    keys = [f"{'ab'[data.draw(st.integers(0, 1))]}{i}" for i in range(len(elements))]
    fan = split(pack("MGET", *keys))
    if fan is None:
        return  # every key on one shard: it goes whole
    answers = []
    for letter in ("a", "b") if keys[0][0] == "a" else ("b", "a"):
        mine = [e for e, k in zip(elements, keys, strict=True) if k[0] == letter]
        answers.append(reply(b"*%d\r\n%s" % (len(mine), b"".join(mine))))
    assert fan.merge(answers) == b"*%d\r\n%s" % (len(elements), b"".join(elements))


def test_mset_splits_pairs_and_answers_ok_when_all_parts_did() -> None:
    fan = split(pack("MSET", "a1", "1", "b1", "2", "a2", "3"))
    assert [frame for frame, _ in parts_of(fan)] == [
        pack("MSET", "a1", "1", "a2", "3"),
        pack("MSET", "b1", "2"),
    ]
    assert fan is not None
    assert fan.merge([reply(b"+OK\r\n"), reply(b"+OK\r\n")]) == b"+OK\r\n"
    oom = b"-OOM command not allowed when used memory > 'maxmemory'.\r\n"
    assert fan.merge([reply(b"+OK\r\n"), reply(oom)]) == oom


@pytest.mark.parametrize("command", ["DEL", "UNLINK", "EXISTS", "TOUCH", "del"])
def test_counting_commands_sum_their_parts(command: str) -> None:
    fan = split(pack(command, "a1", "b1", "a1"))
    assert [frame for frame, _ in parts_of(fan)] == [
        pack(command, "a1", "a1"),  # EXISTS a a counts twice, as redis does
        pack(command, "b1"),
    ]
    assert fan is not None
    assert fan.merge([reply(b":2\r\n"), reply(b":1\r\n")]) == b":3\r\n"
    assert fan.merge([reply(b":0\r\n"), reply(b":0\r\n")]) == b":0\r\n"


def test_the_first_failed_part_decides_the_answer() -> None:
    fan = split(pack("MGET", "a", "b", "c"))
    assert fan is not None
    ok = reply(b"*1\r\n$1\r\nx\r\n")
    timed_out = PartFailed(ErrorType.TIMEOUT)
    reset = PartFailed(ErrorType.UPSTREAM_RESET, "peer closed")
    assert fan.merge([ok, timed_out, reset]) == b"-ERR upstream request timeout\r\n"
    assert fan.merge([ok, reset, timed_out]) == b"-ERR upstream connection reset: peer closed\r\n"
    loading = b"-LOADING Redis is loading the dataset in memory\r\n"
    assert fan.merge([ok, reply(loading), timed_out]) == loading
    resp3_error = b"!10\r\nERR boom!!\r\n"
    assert fan.merge([reply(resp3_error), ok, ok]) == resp3_error


@pytest.mark.parametrize(
    ("command", "answer"),
    [
        (("MGET", "a", "b"), b"+OK\r\n"),
        (("MGET", "a", "b"), b"*2\r\n$1\r\nx\r\n$1\r\ny\r\n"),  # 2 values for 1 key
        (("MGET", "a", "b"), b"*1\r\n$5\r\nx\r\n"),
        (("MSET", "a", "1", "b", "2"), b":1\r\n"),
        (("DEL", "a", "b"), b"+OK\r\n"),
        (("DEL", "a", "b"), b":x\r\n"),
        (("DEL", "a", "b"), b":--5\r\n"),
        (("DEL", "a", "b"), b":-\r\n"),
    ],
)
def test_an_answer_of_the_wrong_shape_is_a_bad_response(
    command: tuple[str, ...], answer: bytes
) -> None:
    fan = split(pack(*command))
    assert fan is not None
    good = {"MGET": b"*1\r\n$1\r\nv\r\n", "MSET": b"+OK\r\n", "DEL": b":1\r\n"}[command[0]]
    merged = fan.merge([reply(good), reply(answer)])
    assert merged.startswith(b"-ERR bad response from upstream")
    with pytest.raises(ValueError, match="outcomes"):
        fan.merge([reply(good)])


@pytest.mark.parametrize(
    "command",
    [
        ("MSETNX", "a", "1", "b", "2"),
        ("RENAME", "a", "b"),
        ("SINTERSTORE", "a", "b"),
        ("SUNION", "a", "b", "c"),
        ("EVAL", "return 1", "2", "a", "b"),
        ("ZUNIONSTORE", "a", "1", "b"),
        ("BITOP", "AND", "a", "b"),
        ("XREAD", "COUNT", "1", "STREAMS", "a", "b", "0", "0"),
        ("SORT", "a", "STORE", "b"),
    ],
)
def test_commands_that_cannot_be_split_get_crossslot(command: tuple[str, ...]) -> None:
    request = decode(pack(*command))
    redis = codec()
    with pytest.raises(ProtocolError) as caught:
        redis.split(request, by_first_letter)
    error = caught.value
    assert not error.fatal and error.request is request
    assert redis.encode_error(error.request, error.error_type, str(error)) == CROSSSLOT_REPLY


@pytest.mark.parametrize(
    "command",
    [
        ("MGET", "a1", "a2"),
        ("MSETNX", "a", "1", "a2", "2"),
        ("GET", "a"),
        ("SET", "b", "x"),
        ("PING",),
        ("DBSIZE",),
        ("MGET",),  # arity errors are the server's to answer
        ("MSET", "a", "1", "b"),
        ("EVAL", "return 1", "0"),
        ("EVAL", "return 1", "x", "a"),
        ("EVAL", "return 1", "3", "a"),
        ("ZUNIONSTORE", "a", "0"),
        ("XREAD", "STREAMS", "a", "b", "0"),
    ],
)
def test_one_target_or_no_keys_goes_whole(command: tuple[str, ...]) -> None:
    assert split(pack(*command)) is None


def test_a_command_whose_first_key_is_not_its_key_property_is_rerouted_whole() -> None:
    data = pack("EVAL", "return 1", "2", "b1", "b2", "arg")
    fan = split(data)
    assert parts_of(fan) == [(data, {"command": "EVAL", "key": "b1"})]
    assert fan is not None
    assert fan.merge([reply(b":1\r\n")]) == b":1\r\n"
    assert fan.merge([PartFailed(ErrorType.NO_HEALTHY_UPSTREAM)]).startswith(b"-ERR no healthy")
    # Where the script text would route it anyway: no fan-out.
    assert split(pack("EVAL", "bcd", "1", "b1")) is None


def test_inline_commands_split_and_reroute_as_resp_arrays() -> None:
    fan = split(b"MGET a b\r\n")
    assert [frame for frame, _ in parts_of(fan)] == [pack("MGET", "a"), pack("MGET", "b")]
    fan = split(b"BITOP AND b1 b2\r\n")
    assert [frame for frame, _ in parts_of(fan)] == [pack("BITOP", "AND", "b1", "b2")]


def test_leading_empty_commands_are_skipped() -> None:
    fan = split(b"*0\r\n" + pack("DEL", "a", "b"))
    assert [frame for frame, _ in parts_of(fan)] == [pack("DEL", "a"), pack("DEL", "b")]


def test_binary_keys_keep_their_bytes() -> None:
    fan = split(pack("MGET", b"a\xff", b"b\x00"))
    assert [frame for frame, _ in parts_of(fan)] == [pack("MGET", b"a\xff"), pack("MGET", b"b\x00")]


def test_hash_tags_put_tagged_keys_on_one_slot_target() -> None:
    def by_slot(properties: Mapping[str, str]) -> Hashable:
        return key_slot(properties["key"])

    assert split(pack("MSETNX", "{u1}:a", "1", "{u1}:b", "2"), by_slot) is None
    assert RedisCodec.hash_input("key", "{u1}:a") == "u1"
    assert RedisCodec.hash_input("command", "{x}") == "{x}"


def test_merged_runs_and_non_requests_are_never_split() -> None:
    request = decode(pack("MGET", "a", "b"))
    merged = Message(MessageType.REQUEST, request.frame * 2, properties=request.properties, count=2)
    assert codec().split(merged, by_first_letter) is None


@given(st.lists(st.sampled_from("abcdef"), min_size=1, max_size=30), st.integers(1, 4))
def test_mget_merge_is_what_one_server_would_answer(letters: list[str], shards: int) -> None:
    keys = [f"{letter}{i % 3}" for i, letter in enumerate(letters)]
    store = {key: f"v-{key}" for key in keys[::2]}

    def target(properties: Mapping[str, str]) -> Hashable:
        return ord(properties["key"][0]) % shards

    fan = split(pack("MGET", *keys), target)
    expected = [store.get(key, "").encode() or None for key in keys]
    if fan is None:
        assert len({target({"key": k}) for k in keys}) == 1
        return
    answers = []
    for part in fan.parts:
        asked = read_value(part.frame)
        assert isinstance(asked, list)
        values = [store.get(key.decode()) for key in asked[1:] if isinstance(key, bytes)]
        body = b"".join(
            b"$-1\r\n" if v is None else b"$%d\r\n%s\r\n" % (len(v), v.encode()) for v in values
        )
        answers.append(reply(b"*%d\r\n%s" % (len(values), body)))
    assert read_value(fan.merge(answers)) == expected


def test_hello_names_the_proxy_and_its_version() -> None:
    redis = codec()
    for version, data in ((3, pack("HELLO", "3")), (2, pack("HELLO"))):
        hello = redis.decode(bytearray(data))
        assert isinstance(hello, Message)
        answer = redis.encode_heartbeat_reply(hello)
        assert answer is not None
        value = read_value(answer)
        if isinstance(value, list):  # RESP2: a flat array of field, value
            value = dict(zip(value[::2], value[1::2], strict=True))
        assert isinstance(value, dict)
        fields = value
        assert fields[b"server"] == b"metaprotocol"
        assert fields[b"version"] == __version__.encode()
        assert fields[b"proto"] == version


# Outcomes are whole replies (the upstream side framed them), of any shape.
FRAMES = st.one_of(
    st.integers(-(2**70), 2**70).map(lambda n: b":%d\r\n" % n),
    st.binary(max_size=9).map(lambda b: b"$%d\r\n%s\r\n" % (len(b), b)),
    st.sampled_from([b"+OK\r\n", b":3\r\n", b"*1\r\n$1\r\nx\r\n",
                     b"*1\r\n_\r\n", b"-ERR x\r\n", b"!3\r\nERR\r\n",
                     b"*-1\r\n", b"$-1\r\n", b"*1\r\n*1\r\n:1\r\n"]),
)  # fmt: skip
OUTCOMES = st.one_of(
    FRAMES.map(reply),
    st.builds(PartFailed, st.sampled_from(list(ErrorType)), st.text(max_size=30)),
)


@given(
    st.sampled_from(["MGET", "MSET", "DEL", "EXISTS", "MSETNX", "EVAL", "XREAD", "BITOP"]),
    st.lists(st.binary(max_size=6), max_size=8),
    st.data(),
)
def test_split_and_merge_never_fail_on_what_peers_send(
    command: str, arguments: list[bytes], data: st.DataObject
) -> None:
    """Whatever a client sends, split answers None, a FanOut or a non-fatal ProtocolError;
    whatever the upstreams answer, merge returns one well-formed RESP reply."""
    try:
        fan = split(pack(command, *arguments))
    except ProtocolError as exc:
        assert not exc.fatal and exc.request is not None
        return
    if fan is None:
        return
    assert fan.parts
    outcomes = data.draw(st.lists(OUTCOMES, min_size=len(fan.parts), max_size=len(fan.parts)))
    read_value(fan.merge(outcomes))  # one complete reply, nothing after it
