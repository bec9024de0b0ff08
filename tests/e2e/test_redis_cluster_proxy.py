"""Redis Cluster upstreams end to end (core/slotrouting.py, adapters/slotmaps.py): a real
3-primary Redis Cluster behind the proxy, plain redis-py clients (``redis.Redis``, which
cannot follow MOVED or ASK) in front, every adapter.

- The slot map is learnt from one seed through the adapter's job: once it is, 1,000 keys
  over all slots are written and read with no redirection at all (each went to its owner).
- ``redis-cli --cluster reshard`` moves 200 slots while a client keeps writing and reading
  keys in exactly those slots: the proxy follows every ASK and MOVED, the client sees no
  error and reads back what it wrote."""

from __future__ import annotations

import contextlib
import subprocess
import threading
from collections.abc import Iterator
from typing import cast

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from metaprotocol.codecs.redis.slots import key_slot
from metaprotocol.core.config import Endpoint
from metaprotocol.core.proxy import Proxy
from metaprotocol.discovery.redis_cluster import fetch_slot_map
from metaprotocol.testing.serving import RunningProxy, start_proxy
from tests.e2e.redis_clusters import RedisCluster, command, redis_cluster
from tests.e2e.servers import DEADLINE, proxy_config, wait_until
from tests.peers import require_binary

CLUSTER = (("cluster", "rc"),)


@pytest.fixture(scope="module")
def resharded() -> Iterator[RedisCluster]:
    """A cluster of its own: the reshard tests move slots around."""
    with redis_cluster(masters=3) as running:
        yield running


@contextlib.contextmanager
def _proxy(cluster: RedisCluster, adapter: str) -> Iterator[RunningProxy]:
    config = proxy_config(
        "redis",
        {"rc": [cluster.ports[0]]},  # one seed: the others are learnt from the slot map
        cluster_options={"redis_cluster": {"refresh_interval": "30s"}},
    )
    with start_proxy(config, adapter) as running:
        yield running


def _client(port: int) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1", port=port, socket_timeout=DEADLINE, retry=Retry(NoBackoff(), 0)
    )


def _counter(running: RunningProxy, name: str) -> int:
    return running.call(lambda: running.proxy.stats.counter(name, CLUSTER))


def _nodes_known(running: RunningProxy) -> int:
    def count() -> int:
        slots = cast(Proxy, running.proxy).runtime.clusters["rc"].slots
        return 0 if slots is None or slots.slot_map is None else len(slots.slot_map.nodes())

    return running.call(count)


def test_every_key_goes_to_the_node_owning_its_slot(
    adapter: str, redis_cluster_3: RedisCluster
) -> None:
    with _proxy(redis_cluster_3, adapter) as running:
        wait_until(lambda: _nodes_known(running) == 3, DEADLINE, "the slot map")
        client = _client(running.ports["redis"])
        try:
            slots = set()
            for i in range(1000):
                key = f"proxy:{adapter}:{i}"
                slots.add(key_slot(key))
                assert client.set(key, str(i)) is True
            for i in range(1000):
                assert client.get(f"proxy:{adapter}:{i}") == str(i).encode()
        finally:
            client.close()
        assert len(slots) > 900  # spread over the whole slot space
        # Every command went straight to the owner: the map, not MOVED, routed them.
        assert _counter(running, "redis_cluster_moved") == 0
        assert _counter(running, "redis_cluster_ask") == 0
    owners = fetch_slot_map([Endpoint("127.0.0.1", p) for p in redis_cluster_3.ports])
    for i in range(0, 1000, 97):
        key = f"proxy:{adapter}:{i}"
        owner = owners.primary(key_slot(key))
        assert owner is not None
        assert command(owner.port, "GET", key) == str(i).encode()  # stored at its owner


def _slots_of(cluster: RedisCluster, port: int) -> list[int]:
    slot_map = fetch_slot_map([Endpoint("127.0.0.1", p) for p in cluster.ports])
    return [
        slot
        for shard in slot_map.shards
        if shard.primary is not None and shard.primary.port == port
        for start, end in shard.ranges
        for slot in range(start, end + 1)
    ]


def _keys_in(slots: set[int], prefix: str, count: int) -> list[str]:
    keys: list[str] = []
    i = 0
    while len(keys) < count:
        key = f"{prefix}:{i}"
        if key_slot(key) in slots:
            keys.append(key)
        i += 1
    return keys


def test_a_reshard_of_200_slots_is_invisible_to_a_plain_client(
    adapter: str, resharded: RedisCluster
) -> None:
    cli = require_binary("redis-cli")
    ports = resharded.ports
    index = ("asyncio", "uvloop", "trio", "blocking").index(adapter) % 3
    source, target = ports[index], ports[(index + 1) % 3]
    moving = set(sorted(_slots_of(resharded, source))[:200])  # what reshard takes first
    keys = _keys_in(moving, f"reshard:{adapter}", 400)
    with _proxy(resharded, adapter) as running:
        wait_until(lambda: _nodes_known(running) == 3, DEADLINE, "the slot map")
        client = _client(running.ports["redis"])
        for key in keys:  # keys to migrate: the ASK path
            assert client.set(key, "0") is True
        errors: list[BaseException] = []
        rounds = [0]
        stop = threading.Event()

        def traffic() -> None:
            try:
                while not stop.is_set() or rounds[0] < 2:
                    for key in keys:
                        value = f"{rounds[0]}"
                        assert client.set(key, value) is True
                        assert client.get(key) == value.encode(), key
                    rounds[0] += 1
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        worker = threading.Thread(target=traffic)
        worker.start()
        try:
            source_id = command(source, "CLUSTER", "MYID")
            target_id = command(target, "CLUSTER", "MYID")
            assert isinstance(source_id, bytes) and isinstance(target_id, bytes)
            done = subprocess.run(
                [cli, "--cluster", "reshard", f"127.0.0.1:{source}",
                 "--cluster-from", source_id.decode(), "--cluster-to", target_id.decode(),
                 "--cluster-slots", "200", "--cluster-yes"],
                capture_output=True, timeout=120, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stdout.decode()[-2000:] + done.stderr.decode()
        finally:
            stop.set()
            worker.join(120)
            client.close()
        assert not worker.is_alive()
        assert errors == []
        assert rounds[0] >= 2
        assert _counter(running, "redis_cluster_moved") > 0  # the proxy followed the move
    assert set(_slots_of(resharded, target)) >= moving
