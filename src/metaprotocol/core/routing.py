"""Routing: the first-match walk over a route table, the merge decision for pipelined
requests, a cluster from an action (weighted picks) and the consistent-hash key."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

from metaprotocol.core.config import RouteAction, RouteConfig

if TYPE_CHECKING:
    from metaprotocol.core.state import ClusterRuntime

__all__ = ["MergeRun", "hash_key", "match_route", "pick_cluster"]

_NO_LIMIT: Final = 2**62


def match_route(routes: tuple[RouteConfig, ...], properties: dict[str, str]) -> RouteConfig | None:
    """The first route matching ``properties`` (exact-only matches checked inline)."""
    get = properties.get
    for candidate in routes:
        exact = candidate.match.exact
        if exact is None:
            if candidate.match.matches(properties):
                return candidate
            continue
        for key, value in exact:
            if get(key) != value:
                break
        else:
            return candidate
    return None


class MergeRun:
    """The ``same_route(first, other)`` a codec's ``decode_many`` calls: may the request
    with properties ``other`` join the merged message that ``first`` started?

    Only if both take the same route, and only while the route's cluster has room under its
    ``max_requests`` circuit breaker, so a merged message is admitted exactly when its
    requests, sent one by one, would have been. The engine sets ``routes``, ``clusters``
    and ``first = None`` before each decode pass over a connection's buffer.
    """

    __slots__ = ("clusters", "first", "room", "route", "routes")

    def __init__(self) -> None:
        self.routes: tuple[RouteConfig, ...] = ()
        self.clusters: dict[str, ClusterRuntime] = {}
        self.first: dict[str, str] | None = None
        self.route: RouteConfig | None = None
        self.room = 0  # requests the run may still take

    def __call__(self, first: dict[str, str], other: dict[str, str]) -> bool:
        routes = self.routes
        if first is not self.first:  # a new run: route its first request
            self.first = first
            route = self.route = match_route(routes, first)
            cluster = self.clusters.get(route.action.cluster or "") if route else None
            if cluster is None:
                self.room = _NO_LIMIT  # answered with an error per request anyway
            else:
                limit = cluster.config.circuit_breakers.max_requests
                self.room = limit - cluster.active_requests - 1
        route = self.route
        if route is None or self.room <= 0 or match_route(routes, other) is not route:
            return False
        self.room -= 1
        return True


def pick_cluster(action: RouteAction, random: Callable[[], float]) -> str | None:
    """The action's cluster, or one of its weighted clusters in proportion to weight."""
    if action.cluster is not None:
        return action.cluster
    weighted = action.weighted_clusters
    if not weighted:
        return None
    total = sum(w.weight for w in weighted)
    point = random() * total
    for w in weighted:
        point -= w.weight
        if point < 0:
            return w.cluster
    return weighted[-1].cluster


def hash_key(action: RouteAction, properties: Mapping[str, str]) -> str | None:
    """The consistent-hashing key built from the route's ``hash_policy`` metadata keys."""
    if not action.hash_policy:
        return None
    parts = [properties.get(k) for k in action.hash_policy]
    if all(p is None for p in parts):
        return None
    return "\x1f".join(p or "" for p in parts)
