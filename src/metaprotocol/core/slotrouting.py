"""Redis Cluster upstreams (a cluster with ``redis_cluster``): the slot map, the node a
request goes to, and following ``-MOVED`` / ``-ASK`` (docs/architecture.md, "Redis Cluster
upstreams").

- ``SlotRouting`` is one cluster's state (``ClusterRuntime.slots``): the latest
  ``SlotMap`` (None until the first one arrives) and an ``EndpointState`` per node it has
  named, kept in the cluster's ``endpoints`` (so pools, outlier detection and ``/clusters``
  treat nodes as endpoints). The seeds (the configured endpoints) stay.
- ``SlotRouting.pick`` is the ``Sender``'s choice of endpoint for such a cluster: a
  redirected request's named node, else the node owning the slot of the request's ``key``
  property (CRC16 with hash tags, codecs/redis/slots.py), a healthy replica for a read with
  ``read_from: replica_preferred``. None means "any node": the balancer picks a seed (a
  keyless command, or no slot map yet: the node's ``-MOVED`` then sets it right).
- ``SlotRouting.redirected`` reads a ``-MOVED`` / ``-ASK`` answer: a ``ClusterHop`` for the
  request's next try (``MOVED`` also updates the map with ``SlotMap.moved``; the caller
  then asks the adapter for a refresh with ``RefreshSlotMap``).
"""

from __future__ import annotations

from typing import Final

from metaprotocol.codecs.redis.cluster import ASKING, SlotMap, parse_redirect
from metaprotocol.codecs.redis.keys import READ_COMMANDS
from metaprotocol.codecs.redis.slots import key_slot
from metaprotocol.core.balancer import EndpointState
from metaprotocol.core.config import ClusterConfig, Endpoint

__all__ = ["ASKING", "MAX_REDIRECTS", "READONLY_VARIANT", "ClusterHop", "SlotRouting"]

MAX_REDIRECTS: Final = 5
"""Redirections followed for one request; past them the client gets the last one as is
(a cluster that keeps bouncing a slot is misconfigured or mid-failover)."""

READONLY_VARIANT: Final = "readonly"
"""The Redis codec's upstream variant for replica connections (they open with READONLY)."""


class ClusterHop:
    """Where a request of a Redis Cluster goes next: ``endpoint`` (None: by its slot),
    with ``ASKING`` first (``asking``, cleared when its ``+OK`` is dropped) or over a
    ``readonly`` connection (``readonly``: a replica read); ``redirects`` so far."""

    __slots__ = ("asking", "endpoint", "readonly", "redirects")

    def __init__(
        self,
        endpoint: EndpointState | None,
        asking: bool = False,
        readonly: bool = False,
        redirects: int = 0,
    ) -> None:
        self.endpoint = endpoint
        self.asking = asking
        self.readonly = readonly
        self.redirects = redirects


class SlotRouting:
    """One Redis Cluster's slot map and nodes (see the module docstring)."""

    __slots__ = ("by_label", "endpoints", "replica_reads", "seeds", "slot_map")

    def __init__(self, config: ClusterConfig, endpoints: list[EndpointState]) -> None:
        assert config.redis_cluster is not None
        self.replica_reads = config.redis_cluster.read_from == "replica_preferred"
        self.endpoints = endpoints  # the cluster's own list: learned nodes are appended
        self.seeds = frozenset(ep.label for ep in endpoints)
        self.by_label: dict[str, EndpointState] = {ep.label: ep for ep in endpoints}
        self.slot_map: SlotMap | None = None

    def node(self, host: str, port: int) -> EndpointState:
        """The endpoint of node ``host:port``, made (and added to the cluster) if new."""
        label = f"{host}:{port}"
        ep = self.by_label.get(label)
        if ep is None:
            ep = self.by_label[label] = EndpointState(Endpoint(host, port))
            self.endpoints.append(ep)
        return ep

    def changed(self, slot_map: SlotMap) -> list[EndpointState]:
        """Take a new slot map; returns the endpoints of nodes it no longer names (not
        seeds): they leave the cluster, the caller retires their pools."""
        self.slot_map = slot_map
        named = set()
        for member in slot_map.nodes():
            named.add(self.node(member.host, member.port).label)
        gone = [ep for ep in self.endpoints if ep.label not in named and ep.label not in self.seeds]
        for ep in gone:
            self.endpoints.remove(ep)
            del self.by_label[ep.label]
        return gone

    def pick(
        self, hop: ClusterHop | None, properties: dict[str, str], tried: frozenset[str]
    ) -> tuple[EndpointState | None, bool]:
        """The node for a request (None: any, the balancer picks a seed) and whether it
        is a replica read (a ``readonly`` connection)."""
        target = hop.endpoint if hop is not None else None
        if target is not None and target.label not in tried and target.label in self.by_label:
            return target, False  # the node a -MOVED / -ASK named
        slot_map = self.slot_map
        key = properties.get("key")
        if slot_map is None or key is None:
            return None, False
        shard = slot_map.shard(key_slot(key))
        if shard is None:
            return None, False
        if self.replica_reads and properties.get("command") in READ_COMMANDS:
            for replica in shard.replicas:
                if replica.healthy:
                    ep = self.by_label.get(f"{replica.host}:{replica.port}")
                    if ep is not None and ep.label not in tried:
                        return ep, True
        primary = shard.primary
        if primary is None:
            return None, False
        return self.by_label.get(f"{primary.host}:{primary.port}"), False

    def redirected(
        self, reply: bytes, asked_host: str, hop: ClusterHop | None
    ) -> ClusterHop | None:
        """The next hop after ``reply`` if it is a ``-MOVED`` or ``-ASK`` to follow (a
        ``MOVED`` updates the map), else None (an answer for the client, including a
        redirection past ``MAX_REDIRECTS``)."""
        redirect = parse_redirect(reply, asked_host)
        if redirect is None:
            return None
        redirects = hop.redirects + 1 if hop is not None else 1
        if redirects > MAX_REDIRECTS:
            return None
        if not redirect.ask and self.slot_map is not None:
            self.slot_map = self.slot_map.moved(redirect.slot, redirect.host, redirect.port)
        target = self.node(redirect.host, redirect.port)
        return ClusterHop(target, asking=redirect.ask, redirects=redirects)
