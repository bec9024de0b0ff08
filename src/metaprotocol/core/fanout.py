"""Fan-out and hash tags, the pure parts (docs/architecture.md, "Fan-out and hash tags"):
where a request with given properties would go (``SplitTarget``, the ``target`` a codec's
``SplitsRequests.split`` groups keys by), what consistent hashing sees of a property
(``narrowing``: the codec's ``NarrowsHashInput.hash_input``), the child request of one part
(``child_request``) and how the parts' outcomes name the parent's end (``merged_status``).

The engine side: ``Router.fan_out`` (core/router.py) splits and routes the parts;
``Replies.part_done`` (core/replies.py) records each part's outcome and answers the parent
with the codec's ``merge`` when the last one has come.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Final, cast

from metaprotocol.codecs.redis.slots import key_slot
from metaprotocol.core.codec import NarrowsHashInput, PartFailed
from metaprotocol.core.message import ErrorType, Message, ResponseStatus
from metaprotocol.core.routing import hash_key, match_route
from metaprotocol.core.state import ActiveRequest, ClusterRuntime, ListenerRuntime

__all__ = ["HASHED_POLICIES", "SplitTarget", "child_request", "merged_status", "narrowing"]

# The load-balancing policies whose endpoint follows from the request's hash key alone
# (any other picks per request: a cluster of them is one target).
HASHED_POLICIES: Final = frozenset({"ring_hash", "maglev"})


def narrowing(listener: ListenerRuntime) -> Callable[[str, str], str] | None:
    """The listener codec's ``hash_input`` (None without the hook): what ``hash_key`` hashes
    of each ``hash_policy`` property."""
    if not listener.caps.hash_input:
        return None
    return cast(NarrowsHashInput, listener.codec_factory).hash_input


class SplitTarget:
    """``target(properties)`` for a codec's ``split``: where a request with ``properties``
    would go, as a hashable id equal for equal destinations. The one place that decides
    what a "target" is:

    - no route matches: None (every such part is answered ``ROUTE_NOT_FOUND``);
    - a route with weighted clusters: the route (its parts pick a cluster each);
    - a cluster without a hashing policy, or a route without ``hash_policy``: the cluster;
    - a ``ring_hash`` / ``maglev`` cluster with the route's ``hash_policy``: the endpoint
      the hash picks (hash tags narrowed by ``narrowing``), as ``Sender.send`` will pick it;
    - a Redis Cluster (``ClusterRuntime.slots``): the ``key``'s slot, not its node:
      redis-server refuses a multi-key command across slots even on one node.
    """

    __slots__ = ("clusters", "listener", "narrow", "now")

    def __init__(
        self, listener: ListenerRuntime, clusters: Mapping[str, ClusterRuntime], now: float
    ) -> None:
        self.listener = listener
        self.clusters = clusters
        self.now = now
        self.narrow = narrowing(listener)

    def __call__(self, properties: Mapping[str, str]) -> Hashable:
        route = match_route(self.listener.routes, dict(properties))
        if route is None:
            return None
        action = route.action
        name = action.cluster
        if name is None:
            return ("route", route.name)
        cluster = self.clusters.get(name)
        if cluster is not None and cluster.slots is not None:
            key = properties.get("key")
            return ("cluster", name) if key is None else ("slot", name, key_slot(key))
        if (
            cluster is None
            or not action.hash_policy
            or cluster.config.lb_policy not in HASHED_POLICIES
        ):
            return ("cluster", name)
        key = hash_key(action, properties, self.narrow)
        if key is None:
            return ("cluster", name)
        endpoint = cluster.balancer.pick(self.now, key, frozenset())
        return ("endpoint", name, endpoint.label if endpoint is not None else "")


def child_request(parent: ActiveRequest, part: Message, index: int, now: float) -> ActiveRequest:
    """The request of one part of ``parent``: same client and listener, past the filters
    (they ran on the parent), no reply slot of its own (the parent holds the client's one
    place in the reply order)."""
    child = ActiveRequest(parent.downstream, parent.listener, part, now)
    child.parent = parent
    child.part = index
    child.filter_index = len(parent.listener.filters)
    return child


def merged_status(outcomes: Sequence[Message | PartFailed]) -> tuple[str, ErrorType | None]:
    """The parent's ``RequestCompleted`` status from its parts' outcomes: ``local_error``
    (with the first failure's error) if a part got no answer, ``error`` if a part's answer
    was an error, else ``ok``."""
    status = "ok"
    for outcome in outcomes:
        if isinstance(outcome, PartFailed):
            return "local_error", outcome.error
        if outcome.status is not ResponseStatus.OK:
            status = "error"
    return status, None
