"""Redis Cluster replicas, live: the fetched slot map names each shard's replica, and a
connection opened with the codec's ``readonly`` preamble reads from a replica where a plain
connection is sent away with MOVED."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from metaprotocol.codecs.redis import RedisCodec
from metaprotocol.codecs.redis.cluster import SlotMap, parse_redirect
from metaprotocol.codecs.redis.request import multibulk
from metaprotocol.codecs.redis.slots import key_slot
from metaprotocol.core.codec import Side
from metaprotocol.core.config import Endpoint
from metaprotocol.core.message import NEED_DATA
from metaprotocol.discovery.redis_cluster import fetch_slot_map
from tests.e2e.redis_clusters import RedisCluster, raw_command, redis_cluster
from tests.e2e.servers import DEADLINE


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with redis_cluster(masters=3, replicas=1) as running:
        yield running


def _through_codec(port: int, variant: str, request: bytes) -> bytes:
    """``request``'s answer on a new connection opened with ``variant``'s preamble."""
    codec = RedisCodec(Side.UPSTREAM, {}, 1 << 20)
    buffer = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        sock.sendall(codec.preamble(variant) + request)
        while True:
            answer = codec.decode(buffer)
            if answer is not NEED_DATA:
                return answer.frame
            chunk = sock.recv(65536)
            assert chunk, "the replica closed"
            buffer += chunk


def test_reads_reach_a_replica_only_on_readonly_connections(cluster: RedisCluster) -> None:
    slot_map: SlotMap = fetch_slot_map([Endpoint("127.0.0.1", p) for p in cluster.ports])
    assert slot_map.uncovered == 0 and len(slot_map.shards) == 3
    assert all(len(shard.replicas) == 1 for shard in slot_map.shards)
    key = "replica:{tag}:1"
    shard = slot_map.shard(key_slot(key))
    assert shard is not None and shard.primary is not None
    replica = shard.node(prefer_replica=True)
    assert replica is not None and replica is not shard.primary
    assert raw_command(shard.primary.port, "SET", key, "seen") == b"+OK\r\n"
    assert raw_command(shard.primary.port, "WAIT", "1", str(int(DEADLINE * 1000))) == b":1\r\n"
    get = multibulk([b"GET", key.encode()])
    moved = parse_redirect(raw_command(replica.port, "GET", key))
    assert moved is not None and not moved.ask and moved.port == shard.primary.port
    assert _through_codec(replica.port, "readonly", get) == b"$4\r\nseen\r\n"
    assert _through_codec(replica.port, "resp3+readonly", get) == b"$4\r\nseen\r\n"
    # A write on a readonly replica connection is still sent to the primary.
    refused = _through_codec(replica.port, "readonly", multibulk([b"SET", key.encode(), b"x"]))
    assert parse_redirect(refused) == moved
