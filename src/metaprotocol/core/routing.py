"""Routing: the first-match walk over a route table, a cluster from an action (weighted
picks) and the consistent-hash key. Pure functions; the ``Router`` (router.py) uses them."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from metaprotocol.core.config import RouteAction, RouteConfig

__all__ = ["hash_key", "match_route", "pick_cluster"]


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


def hash_key(
    action: RouteAction,
    properties: Mapping[str, str],
    narrow: Callable[[str, str], str] | None = None,
) -> str | None:
    """The consistent-hashing key built from the route's ``hash_policy`` metadata keys.
    ``narrow(name, value)``: the part of each value that hashing sees (the codec's
    ``NarrowsHashInput.hash_input``: a Redis key's hash tag), when the codec has one."""
    policy = action.hash_policy
    if not policy:
        return None
    if len(policy) == 1:  # the common case (``[key]``), once per key of a split: no join
        name = policy[0]
        value = properties.get(name)
        if value is None:
            return None
        return value if narrow is None else narrow(name, value)
    parts = [properties.get(k) for k in policy]
    if all(p is None for p in parts):
        return None
    if narrow is not None:
        names = action.hash_policy
        return "\x1f".join("" if p is None else narrow(names[i], p) for i, p in enumerate(parts))
    return "\x1f".join(p or "" for p in parts)
