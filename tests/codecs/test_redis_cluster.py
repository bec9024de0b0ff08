"""Redis Cluster's control plane against golden bytes of a real cluster: key slots, slot maps
from CLUSTER SHARDS / CLUSTER SLOTS (RESP2 and RESP3), MOVED / ASK redirections.

The bytes come from tests/codecs/data/redis_cluster_record.py (a real 3-primary, 3-replica
Redis Cluster); tests/e2e/test_redis_cluster_discovery.py checks the same against a live one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metaprotocol.codecs.redis.cluster import (
    ASKING,
    CLUSTER_SHARDS,
    CLUSTER_SLOTS,
    ClusterNode,
    Redirect,
    Shard,
    SlotMap,
    parse_cluster_shards,
    parse_cluster_slots,
    parse_redirect,
    ranges_of,
    slot_map_from_reply,
)
from metaprotocol.codecs.redis.slots import crc16, hash_tag, hash_tag_bytes, key_slot
from metaprotocol.codecs.redis.values import RespError, RespValue, read_value, read_values
from metaprotocol.core.message import ProtocolError

GOLDEN: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "redis_cluster_replies.json").read_text()
)
EXCHANGES = {name: text.encode("latin-1") for name, text in GOLDEN["exchanges"].items()}


# -- CRC16 and hash tags


def test_crc16_is_xmodem_with_the_spec_test_vector() -> None:
    # Redis Cluster spec, appendix A: "123456789" -> 0x31C3.
    assert crc16(b"123456789") == 0x31C3
    assert crc16(b"") == 0


@pytest.mark.parametrize("key", sorted(GOLDEN["keyslot"]))
def test_key_slot_matches_cluster_keyslot(key: str) -> None:
    assert key_slot(key) == GOLDEN["keyslot"][key]


def test_hash_tags_follow_the_cluster_rule() -> None:
    assert hash_tag("{user1000}.following") == "user1000"
    assert hash_tag("foo{}{bar}") == "foo{}{bar}"  # an empty first tag: the whole key
    assert hash_tag("foo{{bar}}zap") == "{bar"  # from the first { to the first } after it
    assert hash_tag("foo{bar}{zap}") == "bar"
    assert hash_tag("plain") == "plain"
    assert hash_tag("{a") == "{a"
    assert hash_tag_bytes(b"\xff{t}\xfe") == b"t"


@given(st.binary(max_size=40))
def test_str_and_bytes_keys_get_the_same_slot(raw: bytes) -> None:
    key = raw.decode("utf-8", "surrogateescape")  # what the request decoder makes of it
    assert hash_tag(key).encode("utf-8", "surrogateescape") == hash_tag_bytes(raw)


# -- reading values


def test_values_of_every_type() -> None:
    data = (
        b"+OK\r\n-ERR x y\r\n:-5\r\n$3\r\na\r\n\r\n$-1\r\n*-1\r\n_\r\n#t\r\n,1.5\r\n(12\r\n"
        b"!5\r\nERR z\r\n=7\r\ntxt:abc\r\n%1\r\n+k\r\n*1\r\n:1\r\n~1\r\n:2\r\n"
        b"|1\r\n+a\r\n+b\r\n:9\r\n"
    )
    assert read_values(data) == [
        "OK", RespError("ERR x y"), -5, b"a\r\n", None, None, None, True, 1.5, 12,
        RespError("ERR z"), b"abc", {"k": [1]}, [2], 9,
    ]  # fmt: skip
    assert RespError("MOVED 1 h:2").code == "MOVED"


@pytest.mark.parametrize(
    "data",
    [b"", b"*2\r\n:1\r\n", b"$5\r\nab\r\n", b"?x\r\n", b":1x\r\n", b"#x\r\n", b"_x\r\n",
     b"+OK\r\n+extra\r\n", b",nan-ish\r\n", b"=3\r\nabc\r\n", b"*99999\r\n"],
)  # fmt: skip
def test_bad_values_raise_protocol_errors(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        read_value(data)


# -- slot maps


def _summary(slot_map: SlotMap) -> list[tuple[tuple[tuple[int, int], ...], int, list[int]]]:
    shards = []
    for shard in slot_map.shards:
        assert shard.primary is not None
        shards.append((shard.ranges, shard.primary.port, [r.port for r in shard.replicas]))
    return sorted(shards)


@pytest.mark.parametrize("name", ["shards_resp2", "shards_resp3", "slots_resp2", "slots_resp3"])
def test_slot_maps_from_a_real_cluster(name: str) -> None:
    command = CLUSTER_SHARDS if name.startswith("shards") else CLUSTER_SLOTS
    slot_map = slot_map_from_reply(command, EXCHANGES[name], "127.0.0.1")
    assert slot_map.uncovered == 0
    assert sorted(s.primary.port for s in slot_map.shards if s.primary) == GOLDEN["primaries"]
    replicas = sorted(r.port for s in slot_map.shards for r in s.replicas)
    assert replicas == GOLDEN["replicas"]
    assert all(len(s.replicas) == 1 for s in slot_map.shards)
    # Every source says the same.
    reference = slot_map_from_reply(CLUSTER_SLOTS, EXCHANGES["slots_resp2"], "127.0.0.1")
    assert _summary(slot_map) == _summary(reference)
    owner = slot_map.primary(key_slot("foo"))
    assert owner is not None
    assert f":{owner.port}\r\n".encode() in EXCHANGES["moved"]  # where MOVED sent "foo"
    assert len(slot_map.nodes()) == 6
    assert all(node.node_id and len(node.node_id) == 40 for node in slot_map.nodes())


def test_cluster_shards_reports_health_and_prefers_healthy_replicas() -> None:
    value = read_value(EXCHANGES["shards_resp3"])
    assert isinstance(value, list)
    first = value[0]
    assert isinstance(first, dict)
    nodes = first[b"nodes"]  # RESP3 map keys are bulk strings
    assert isinstance(nodes, list) and isinstance(nodes[1], dict)
    nodes[1][b"health"] = b"failed"  # the replica of the first shard
    slot_map = parse_cluster_shards(value, "127.0.0.1")
    shard = next(s for s in slot_map.shards if s.replicas and not s.replicas[0].healthy)
    assert shard.node(prefer_replica=True) is shard.primary
    healthy = next(s for s in slot_map.shards if s.replicas and s.replicas[0].healthy)
    assert healthy.node(prefer_replica=True) is healthy.replicas[0]
    assert healthy.node(prefer_replica=False) is healthy.primary


def test_endpoints_empty_means_the_asked_host_and_unknown_is_left_out() -> None:
    reply: RespValue = [
        [0, 99, [b"", 7000, b"a" * 40], [b"?", 7001, b"b" * 40]],
        [100, 16383, [b"?", 7002, b"c" * 40]],
    ]
    slot_map = parse_cluster_slots(reply, "10.0.0.9")
    assert slot_map.primary(50) == ClusterNode("10.0.0.9", 7000, "a" * 40)
    shard = slot_map.shard(50)
    assert shard is not None and shard.replicas == ()
    assert slot_map.primary(200) is None
    assert slot_map.uncovered == 16384 - 100


def test_tls_ports_are_used_for_tls_clusters() -> None:
    node: dict[object, RespValue] = {
        "id": b"x", "port": 6379, "tls-port": 6380, "endpoint": b"h", "role": b"master"
    }  # fmt: skip
    reply: RespValue = [{"slots": [0, 16383], "nodes": [node]}]
    assert parse_cluster_shards(reply, "").primary(1) == ClusterNode("h", 6379, "x")
    assert parse_cluster_shards(reply, "", tls=True).primary(1) == ClusterNode("h", 6380, "x")
    del node["port"]  # a TLS-only node cannot be reached in plaintext
    assert parse_cluster_shards(reply, "").uncovered == 16384


def test_an_error_reply_or_a_bad_shape_is_a_bad_response() -> None:
    with pytest.raises(ProtocolError, match="unknown subcommand"):
        slot_map_from_reply(CLUSTER_SHARDS, b"-ERR unknown subcommand 'SHARDS'\r\n", "h")
    with pytest.raises(ProtocolError, match="odd number"):
        parse_cluster_shards([{"slots": [1], "nodes": []}], "h")
    with pytest.raises(ProtocolError, match="outside"):
        SlotMap((Shard(((0, 16384),), ClusterNode("h", 1)),))
    with pytest.raises(ProtocolError):
        parse_cluster_slots([[0, 1]], "h")


def test_a_moved_slot_changes_owner_until_the_next_refresh() -> None:
    slot_map = slot_map_from_reply(CLUSTER_SLOTS, EXCHANGES["slots_resp2"], "127.0.0.1")
    slot = key_slot("foo")
    before = slot_map.primary(slot)
    other = next(s.primary for s in slot_map.shards if s.primary != before)
    assert other is not None
    moved = slot_map.moved(slot, other.host, other.port)
    assert moved.primary(slot) == other
    assert moved.primary(slot - 1) == before and moved.primary(slot + 1) == before
    assert moved.uncovered == 0
    stranger = moved.moved(slot, "10.1.1.1", 7000)
    assert stranger.primary(slot) == ClusterNode("10.1.1.1", 7000)
    assert len(stranger.shards) == 4


def test_ranges_of_slots() -> None:
    assert ranges_of([7, 1, 2, 3, 3]) == ((1, 3), (7, 7))
    assert ranges_of([]) == ()


# -- redirections


def test_moved_and_ask_from_a_real_cluster() -> None:
    moved = parse_redirect(EXCHANGES["moved"])
    assert moved == Redirect(False, key_slot("foo"), "127.0.0.1", moved.port if moved else 0)
    assert moved is not None and moved.port in GOLDEN["primaries"]
    ask = parse_redirect(EXCHANGES["ask"])
    assert ask is not None and ask.ask and ask.slot == key_slot("foo")
    assert EXCHANGES["asking"] == b"+OK\r\n"
    assert read_value(ASKING) == [b"ASKING"]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (b"-MOVED 3999 :6381\r\n", Redirect(False, 3999, "asked", 6381)),
        (b"-MOVED 1 ::1:6381\r\n", Redirect(False, 1, "::1", 6381)),
        (b"!22\r\nASK 5 redis.example:7\r\n", Redirect(True, 5, "redis.example", 7)),
        (b"-MOVED 3999 ?:6381\r\n", None),
        (b"-MOVED 16384 h:1\r\n", None),
        (b"-MOVED x h:1\r\n", None),
        (b"-MOVED 1 h:0\r\n", None),
        (b"-MOVED 1 h\r\n", None),
        (b"-ERR MOVED 1 h:1\r\n", None),
        (b"+MOVED 1 h:1\r\n", None),
        (b"!3\r\nERR\r\n", None),
    ],
)
def test_redirect_edge_cases(reply: bytes, expected: Redirect | None) -> None:
    assert parse_redirect(reply, "asked") == expected
