"""Builders shared by the fan-out and Redis Cluster playbooks (test_fanout.py,
test_fanout_properties.py, test_redis_cluster_routing.py): the routes and clusters they
split over, a three-node slot map, RESP arrays."""

from __future__ import annotations

from metaprotocol.codecs.redis.cluster import ClusterNode, Shard, SlotMap
from metaprotocol.core.config import (
    ClusterConfig,
    Endpoint,
    RedisClusterConfig,
    RetryPolicy,
    RouteAction,
    RouteConfig,
    RouteMatch,
    StringMatcher,
)
from metaprotocol.core.events import Accepted, UpstreamConnected
from metaprotocol.core.outputs import OpenUpstream, Write
from metaprotocol.testing import Playbook

from .helpers import config, playbook, route

NIL = b"$-1\r\n"
SESSIONS_UP = ("10.0.0.2", 9000)
SHARDS = tuple((f"10.0.1.{i}", 6379) for i in range(3))

# Redis Cluster nodes; key slots: "b" 3300 and "bar" 5061 (A), "c" 7365 (B), "a" 15495
# and "d" 11298 (C)
A, B, C = ("10.0.0.1", 7000), ("10.0.0.2", 7000), ("10.0.0.3", 7000)
REPLICA_A = ("10.0.0.4", 7000)


def array(*items: bytes) -> bytes:
    return b"*%d\r\n" % len(items) + b"".join(items)


def sessions_route(cluster: str = "sessions", retries: RetryPolicy | None = None) -> RouteConfig:
    """Keys starting with ``session:`` go to ``cluster``."""
    match = RouteMatch((("key", StringMatcher("prefix", "session:")),))
    return RouteConfig("sessions", RouteAction(cluster=cluster, retries=retries), match)


def hashed_route(retries: RetryPolicy | None = None) -> RouteConfig:
    """Every key to the ``shards`` cluster, by its hash (``hash_policy: [key]``)."""
    action = RouteAction(cluster="shards", hash_policy=("key",), retries=retries)
    return RouteConfig("all", action)


def ring_shards() -> ClusterConfig:
    """The ``shards`` cluster: :data:`SHARDS` behind ``ring_hash``."""
    return ClusterConfig("shards", tuple(Endpoint(*s) for s in SHARDS), lb_policy="ring_hash")


def slot_map(replica: bool = False) -> SlotMap:
    """A, B and C own a third of the slots each (A with :data:`REPLICA_A` if ``replica``)."""
    replicas = (ClusterNode(*REPLICA_A),) if replica else ()
    return SlotMap(
        (
            Shard(((0, 5460),), ClusterNode(*A), replicas),
            Shard(((5461, 10922),), ClusterNode(*B)),
            Shard(((10923, 16383),), ClusterNode(*C)),
        )
    )


def cluster_playbook(read_from: str = "primary", seed: tuple[str, int] = A) -> Playbook:
    """Client 1 connected to a listener in front of a Redis Cluster seeded with ``seed``."""
    redis_cluster = RedisClusterConfig(read_from=read_from)  # type: ignore[arg-type]
    clusters = (ClusterConfig("redis", (Endpoint(*seed),), redis_cluster=redis_cluster),)
    pb = playbook(config(routes=(route("redis"),), clusters=clusters, codec="redis"))
    pb >> Accepted(1, "main")
    return pb


def opens_and_sends(pb: Playbook, conn: int, node: tuple[str, int], data: bytes) -> None:
    """The proxy opens upstream ``conn`` to ``node`` and, once connected, writes ``data``."""
    pb << OpenUpstream(conn, *node)
    pb >> UpstreamConnected(conn)
    pb << Write(conn, data)
