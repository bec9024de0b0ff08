"""Fan-out and hash tags through the proxy (issue 16): three standalone redis-servers behind
a ``ring_hash`` cluster with ``hash_policy: [key]``, driven by redis-py and redis-benchmark.
Multi-key commands are split per shard and merged; every key lands where a single-key
command looks for it, checked through the proxy and on the shards themselves."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis

from metaprotocol.codecs.redis.slots import hash_tag, key_slot
from metaprotocol.core.config import Endpoint
from metaprotocol.core.proxy import Proxy
from metaprotocol.discovery.redis_cluster import fetch_slot_map
from metaprotocol.testing.serving import RunningProxy, start_proxy
from tests.e2e.redis_clusters import RedisCluster, command
from tests.e2e.servers import DEADLINE, proxy_config, wait_until
from tests.peers import require_binary

# Two adapters (issue 16 asks for the asyncio one and at least one other).
FANOUT_ADAPTERS = ("asyncio", "blocking")
SHARDED = [{"name": "all", "route": {"cluster": "shards", "hash_policy": ["key"]}}]


def _client(port: int) -> redis.Redis:
    pool = redis.ConnectionPool(host="127.0.0.1", port=port, socket_timeout=DEADLINE)
    return redis.Redis(connection_pool=pool)


@pytest.fixture(params=FANOUT_ADAPTERS)
def sharded(
    request: pytest.FixtureRequest, redis_shards_3: tuple[int, ...]
) -> Iterator[RunningProxy]:
    config = proxy_config(
        "redis",
        {"shards": list(redis_shards_3)},
        SHARDED,
        cluster_options={"lb_policy": "ring_hash"},
    )
    with start_proxy(config, request.param) as running:
        yield running


def _holders(shards: list[redis.Redis], key: str) -> list[int]:
    return [i for i, shard in enumerate(shards) if shard.exists(key)]


def test_multi_key_commands_land_where_single_key_routing_looks(
    sharded: RunningProxy, redis_shards_3: tuple[int, ...]
) -> None:
    client = _client(sharded.ports["redis"])
    shards = [_client(port) for port in redis_shards_3]
    prefix = f"fanout:{sharded.adapter}:"
    keys = [f"{prefix}{i}" for i in range(300)]
    try:
        assert client.mset({key: f"v{key}" for key in keys}) is True
        # Through the proxy: a GET of each key (routed by its own key) finds it.
        assert [client.get(key) for key in keys] == [f"v{key}".encode() for key in keys]
        # On the shards: each key is on exactly one of them, and the shards share the keys.
        where = {key: _holders(shards, key) for key in keys}
        assert all(len(held) == 1 for held in where.values()), where
        assert {held[0] for held in where.values()} == {0, 1, 2}
        # MGET in the client's order, with missing keys and repeats.
        asked = [keys[7], f"{prefix}missing", keys[0], keys[299], keys[7]]
        assert client.mget(asked) == [
            f"v{keys[7]}".encode(), None, f"v{keys[0]}".encode(),
            f"v{keys[299]}".encode(), f"v{keys[7]}".encode(),
        ]  # fmt: skip
        assert client.exists(*asked) == 4
        assert client.touch(*keys[:10]) == 10
        assert client.delete(*keys[:100], f"{prefix}missing") == 100
        assert client.unlink(*keys[100:]) == 200
        assert client.exists(*keys) == 0
        assert sum(shard.dbsize() for shard in shards) >= 0  # the shards still answer
        assert not any(_holders(shards, key) for key in keys)
    finally:
        client.close()
        for shard in shards:
            shard.close()


def test_hash_tagged_keys_share_a_shard(
    sharded: RunningProxy, redis_shards_3: tuple[int, ...]
) -> None:
    client = _client(sharded.ports["redis"])
    shards = [_client(port) for port in redis_shards_3]
    prefix = f"fanout:{sharded.adapter}:tag"
    tags = [f"{{{prefix}{n}}}" for n in range(12)]
    try:
        homes: dict[str, int] = {}
        for tag in tags:
            fields = {f"{tag}:{field}": field for field in ("cart", "name", "seen")}
            # MSETNX cannot be split: it works because the tag keeps its keys together.
            assert client.msetnx(fields) is True
            held = {i for key in fields for i in _holders(shards, key)}
            assert len(held) == 1, (tag, held)
            homes[tag] = held.pop()
            assert hash_tag(next(iter(fields))) == tag[1:-1]
        assert len(set(homes.values())) > 1  # the tags spread over the shards
        # Keys on different shards cannot be set atomically: the proxy refuses as Redis
        # Cluster does, and nothing is written.
        a, b = next((x, y) for x in tags for y in tags if homes[x] != homes[y])
        with pytest.raises(redis.ResponseError, match="hash to the same slot"):
            client.msetnx({f"{a}:new": "1", f"{b}:new": "2"})
        assert client.exists(f"{a}:new", f"{b}:new") == 0
        assert (
            client.delete(*(f"{tag}:{f}" for tag in tags for f in ("cart", "name", "seen"))) == 36
        )
    finally:
        client.close()
        for shard in shards:
            shard.close()


@pytest.mark.parametrize("adapter_name", FANOUT_ADAPTERS)
def test_a_route_split_by_key_prefix_inside_one_mget(
    adapter_name: str, redis_shards_3: tuple[int, ...]
) -> None:
    """``session:*`` keys go to one cluster (shard 0), the rest to another (shard 1): one
    MGET and one MSET over both prefixes are split between the two clusters."""
    routes = [
        {"name": "sessions", "match": {"metadata": {"key": {"prefix": "session:"}}},
         "route": {"cluster": "sessions"}},
        {"name": "default", "route": {"cluster": "main"}},
    ]  # fmt: skip
    main, sessions = redis_shards_3[1], redis_shards_3[0]
    config = proxy_config("redis", {"main": [main], "sessions": [sessions]}, routes)
    with start_proxy(config, adapter_name) as running:
        client = _client(running.ports["redis"])
        direct_main, direct_sessions = _client(main), _client(sessions)
        p = f"prefix:{adapter_name}:"
        values: dict[str, Any] = {
            f"session:{p}a": "1", f"{p}b": "2", f"session:{p}c": "3", f"{p}d": "4"
        }  # fmt: skip
        try:
            assert client.mset(values) is True
            assert direct_sessions.mget([f"session:{p}a", f"session:{p}c"]) == [b"1", b"3"]
            assert direct_main.mget([f"{p}b", f"{p}d"]) == [b"2", b"4"]
            assert direct_main.exists(f"session:{p}a") == 0
            asked = [f"{p}d", f"session:{p}a", f"{p}missing", f"session:{p}c", f"{p}b"]
            assert client.mget(asked) == [b"4", b"1", None, b"3", b"2"]
            assert client.delete(*values) == 4
        finally:
            client.close()
            direct_main.close()
            direct_sessions.close()


def test_redis_benchmark_mset_mget_through_three_shards(sharded: RunningProxy) -> None:
    """``redis-benchmark -t mset`` (10 random keys per MSET) and an MGET of 10 random keys
    (redis-benchmark has no MGET test of its own): no errors, and the commands were split."""
    binary = require_binary("redis-benchmark")
    common = [binary, "-h", "127.0.0.1", "-p", str(sharded.ports["redis"]),
              "-n", "2000", "-c", "10", "-q", "-r", "100000"]  # fmt: skip
    mget = ["MGET", *(["key:__rand_int__"] * 10)]
    for argv, name in (([*common, "-t", "mset"], "MSET"), ([*common, *mget], "MGET")):
        result = subprocess.run(argv, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
        out = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
        assert result.returncode == 0, out
        assert "error" not in out.lower(), out
        assert re.search(name + r" [^\r\n]*: [0-9.]+ requests per second", out), out
    stats = sharded.call(lambda: sharded.proxy.stats.snapshot())
    listener = (("listener", "redis"),)
    assert stats.counters[("request", listener)] >= 4000
    assert stats.counters[("local_response_error", listener)] == 0
    assert stats.counters[("response_error", listener)] == 0
    # One answer per command, counted once however many shards it went to.
    assert stats.counters[("response", listener)] == stats.counters[("request", listener)]
    # Ten random keys per command spread over the shards: the commands were split.
    assert stats.counters[("request_split", listener)] >= 3000


@pytest.mark.parametrize("adapter_name", FANOUT_ADAPTERS)
def test_multi_key_commands_split_per_slot_on_a_redis_cluster(
    adapter_name: str, redis_cluster_3: RedisCluster
) -> None:
    """A plain client's MSET / MGET / DEL / EXISTS of keys over many slots of a real
    three-primary Redis Cluster: split per slot, no -CROSSSLOT, every key at its owner."""
    config = proxy_config(
        "redis",
        {"rc": [redis_cluster_3.ports[0]]},
        cluster_options={"redis_cluster": {"refresh_interval": "30s"}},
    )
    with start_proxy(config, adapter_name) as running:

        def nodes_known() -> int:
            slots = cast(Proxy, running.proxy).runtime.clusters["rc"].slots
            return 0 if slots is None or slots.slot_map is None else len(slots.slot_map.nodes())

        wait_until(lambda: running.call(nodes_known) == 3, DEADLINE, "the slot map")
        client = _client(running.ports["redis"])
        keys = [f"slots:{adapter_name}:{i}" for i in range(100)]
        try:
            assert len({key_slot(key) for key in keys}) > 90
            assert client.mset({key: f"v{key}" for key in keys}) is True
            asked = [keys[3], f"slots:{adapter_name}:missing", *keys]
            assert client.mget(asked) == [
                f"v{keys[3]}".encode(), None, *(f"v{key}".encode() for key in keys)
            ]  # fmt: skip
            assert client.exists(*asked) == 101
            owners = fetch_slot_map([Endpoint("127.0.0.1", p) for p in redis_cluster_3.ports])
            for key in keys[::9]:
                owner = owners.primary(key_slot(key))
                assert owner is not None
                assert command(owner.port, "GET", key) == f"v{key}".encode()
            assert client.delete(*keys) == 100
        finally:
            client.close()
