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
from metaprotocol.core.balancer import Balancer
from metaprotocol.core.codec import NarrowsHashInput, PartFailed
from metaprotocol.core.config import RouteAction, RouteConfig
from metaprotocol.core.message import ErrorType, Message, ResponseStatus
from metaprotocol.core.routing import hash_key, match_route
from metaprotocol.core.state import ActiveRequest, ClusterRuntime, ListenerRuntime

__all__ = [
    "HASHED_POLICIES",
    "SplitTarget",
    "child_request",
    "merged_status",
    "narrowing",
    "one_target",
]

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

    One instance serves one split, which asks once per key: the route and cluster are
    looked up once per combination of the values the routes match on
    (``ListenerRuntime.route_reads``, usually just the command, the same for every key),
    so a key costs only its hash or slot.
    """

    __slots__ = ("clusters", "listener", "narrow", "now", "plans", "reads")

    def __init__(
        self, listener: ListenerRuntime, clusters: Mapping[str, ClusterRuntime], now: float
    ) -> None:
        self.listener = listener
        self.clusters = clusters
        self.now = now
        self.narrow = narrowing(listener)
        self.reads = listener.route_reads
        self.plans: dict[tuple[str | None, ...], _Plan] = {}

    def __call__(self, properties: Mapping[str, str]) -> Hashable:
        get = properties.get
        memo = tuple([get(name) for name in self.reads])
        plan = self.plans.get(memo)
        if plan is None:
            plan = self.plans[memo] = self._plan(properties)
        kind = plan.kind
        if kind == _FIXED:
            return plan.fixed
        if kind == _SLOT:
            key = get("key")
            return plan.fixed if key is None else ("slot", plan.name, key_slot(key))
        key = hash_key(plan.action, properties, self.narrow)
        if key is None:
            return plan.fixed
        balancer = plan.balancer
        assert balancer is not None  # a _HASHED plan has its cluster's
        endpoint = balancer.pick(self.now, key, frozenset())
        return ("endpoint", plan.name, endpoint.label if endpoint is not None else "")

    def _plan(self, properties: Mapping[str, str]) -> _Plan:
        route = match_route(self.listener.routes, dict(properties))
        if route is None:
            return _Plan(_FIXED, None)
        action = route.action
        name = action.cluster
        if name is None:
            return _Plan(_FIXED, ("route", route.name))
        whole = ("cluster", name)
        cluster = self.clusters.get(name)
        if cluster is None:
            return _Plan(_FIXED, whole)
        if cluster.slots is not None:
            return _Plan(_SLOT, whole, name)
        if not action.hash_policy or cluster.config.lb_policy not in HASHED_POLICIES:
            return _Plan(_FIXED, whole)
        return _Plan(_HASHED, whole, name, action, cluster.balancer)


# How a ``_Plan`` answers for a key: its ``fixed`` target, the key's slot, the key's hash.
_FIXED: Final = 0
_SLOT: Final = 1
_HASHED: Final = 2
_NO_ACTION: Final = RouteAction()  # a plan without a route's (it never hashes)


class _Plan:
    """What ``SplitTarget`` found for one route: ``fixed`` is the target of every key
    (``_FIXED``), or of a key without a slot or hash key."""

    __slots__ = ("action", "balancer", "fixed", "kind", "name")

    def __init__(
        self,
        kind: int,
        fixed: Hashable,
        name: str = "",
        action: RouteAction = _NO_ACTION,
        balancer: Balancer | None = None,
    ) -> None:
        self.kind = kind
        self.fixed = fixed
        self.name = name
        self.action = action
        self.balancer = balancer


def one_target(routes: Sequence[RouteConfig], clusters: Mapping[str, ClusterRuntime]) -> bool:
    """Whether ``SplitTarget`` has one answer for every request of ``routes``: each route
    names the same cluster, which is no Redis Cluster and does not hash a route's
    ``hash_policy`` to an endpoint, and one route matches everything (no request goes
    unrouted). Such a listener never splits (its keys cannot span targets), so the router
    does not ask the codec (``ListenerRuntime.splits``)."""
    names = {route.action.cluster for route in routes}
    if len(names) != 1:
        return False
    (name,) = names
    if name is None:
        return False  # weighted clusters: each route is a target of its own
    cluster = clusters.get(name)
    if cluster is not None and (
        cluster.slots is not None
        or (
            cluster.config.lb_policy in HASHED_POLICIES
            and any(route.action.hash_policy for route in routes)
        )
    ):
        return False
    return any(not route.match.metadata for route in routes)


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
