"""Runtime: everything the engine derives from one Config; swapped atomically on reload."""

from __future__ import annotations

from collections.abc import Callable

from metaprotocol.core.balancer import EndpointState, make_balancer
from metaprotocol.core.codec import CodecFactory
from metaprotocol.core.config import ClusterConfig, Config, RouteConfig
from metaprotocol.core.fanout import one_target
from metaprotocol.core.filters import build_filters
from metaprotocol.core.slotrouting import SlotRouting
from metaprotocol.core.state import ClusterRuntime, ListenerRuntime
from metaprotocol.core.stats import EndpointStatus, Stats

__all__ = ["Runtime"]


class Runtime:
    """Listeners (with codec, filters and counters) and clusters (with balancers)."""

    def __init__(
        self,
        config: Config,
        stats: Stats,
        random: Callable[[], float],
        codec_factory: Callable[[str], CodecFactory],
        now: float,
    ) -> None:
        self.config = config
        self.listeners: dict[str, ListenerRuntime] = {}
        for lc in config.listeners:
            labels = (("listener", lc.name),)
            filters = build_filters(lc.filters, stats, labels, random, now)
            factory = codec_factory(lc.codec)
            self.listeners[lc.name] = ListenerRuntime(lc, factory, filters, labels, stats)
        self.clusters: dict[str, ClusterRuntime] = {
            cc.name: _build_cluster(cc, stats, random) for cc in config.clusters
        }
        # A listener whose requests all go to one place has nothing to split (fanout.py).
        for listener in self.listeners.values():
            if listener.splits and one_target(listener.routes, self.clusters):
                listener.splits = False
        # Each key of a pipelined run may live on another Redis Cluster node: no merging.
        slotted = {name for name, c in self.clusters.items() if c.slots is not None}
        if slotted:
            for listener in self.listeners.values():
                if any(_clusters_of(r) & slotted for r in listener.routes):
                    listener.batchable = False

    def endpoint_statuses(self, now: float) -> list[EndpointStatus]:
        """Every endpoint of every cluster, in config order: health and load right now."""
        out: list[EndpointStatus] = []
        for name, cluster in self.clusters.items():
            for ep in cluster.endpoints:
                ejected_for = max(0.0, ep.ejected_until - now)
                connections = sum(len(pool.connections) for pool in ep.pools.values())
                out.append(
                    EndpointStatus(
                        name,
                        ep.label,
                        ejected_for == 0.0,
                        ejected_for,
                        ep.ejection_count,
                        ep.consecutive_failures,
                        connections,
                        ep.active_requests,
                    )
                )
        return out


def _build_cluster(cc: ClusterConfig, stats: Stats, random: Callable[[], float]) -> ClusterRuntime:
    endpoints = [EndpointState(e) for e in cc.endpoints]
    balancer = make_balancer(cc.lb_policy, endpoints, random)
    cluster = ClusterRuntime(cc, endpoints, balancer, (("cluster", cc.name),), stats)
    if cc.redis_cluster is not None:
        cluster.slots = SlotRouting(cc, endpoints)
    return cluster


def _clusters_of(route: RouteConfig) -> set[str]:
    action = route.action
    names = {w.cluster for w in action.weighted_clusters}
    names.update(m.cluster for m in action.mirror)
    if action.cluster is not None:
        names.add(action.cluster)
    return names
