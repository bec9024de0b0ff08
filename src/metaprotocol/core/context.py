"""What every collaborator of the engine shares: the output list, the clock reading, the
services (stats, timers, randomness) and the connection tables with their attach/detach
pairs (docs/architecture.md, "The parts of the core").

A connection enters its table only through ``attach_*`` and leaves it only through
``detach_*``, which also sets its ``closed`` field: "is it still there?" is that field, never
a lookup in the table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, cast

from metaprotocol.core.lifecycle import PendingCall
from metaprotocol.core.outputs import Output, Write
from metaprotocol.core.stats import Stats
from metaprotocol.core.timers import DeadlineQueue, Timers

if TYPE_CHECKING:
    from metaprotocol.core.config import TracingConfig
    from metaprotocol.core.filters import Abort
    from metaprotocol.core.runtime import Runtime
    from metaprotocol.core.state import ActiveRequest, Downstream, Pool, Upstream

__all__ = ["Context", "write"]

# ``Write`` is a frozen dataclass of core/outputs.py, which stays interpreted in the compiled
# build: calling it runs its generated ``__init__`` in a Python frame, each field set through
# ``object.__setattr__`` (about 0.3 us; two per request/response round trip). ``write`` makes
# the same object by filling its two slots directly, a third of the cost.
_new_object: Final = object.__new__
_set_conn: Final = cast(Any, Write).__dict__["conn"].__set__
_set_data: Final = cast(Any, Write).__dict__["data"].__set__


def write(conn: int, data: bytes) -> Write:
    """``Write(conn, data)``, made faster (the outputs' hot path): equal to it in every way."""
    instruction = _new_object(Write)
    _set_conn(instruction, conn)
    _set_data(instruction, data)
    return instruction


class Context:
    """The shared state of one engine. ``out`` is one list for the engine's life: the
    facade hands a copy of it to the adapter and empties it after each call."""

    __slots__ = (
        "calls",
        "deadline_queues",
        "downstreams",
        "draining",
        "next_call",
        "next_conn",
        "now",
        "observe",
        "out",
        "pools",
        "random",
        "runtime",
        "stats",
        "timers",
        "tracing",
        "upstreams",
    )

    def __init__(self, now: float, random: Callable[[], float], observe: bool) -> None:
        self.out: list[Output] = []
        self.now = now  # the time ``handle`` was called with: for paths that are not passed it
        self.random = random
        self.observe = observe
        self.stats = Stats()
        self.timers = Timers()
        self.deadline_queues: dict[float, DeadlineQueue] = {}  # request timeouts, per duration
        self.runtime: Runtime  # set by the facade: the listeners, routes and clusters
        self.tracing: TracingConfig | None = None
        self.draining = False
        self.downstreams: dict[int, Downstream] = {}
        self.upstreams: dict[int, Upstream] = {}
        self.pools: dict[Pool, None] = {}  # every pool with connections (an ordered set)
        self.calls: dict[int, PendingCall] = {}  # external call id -> the paused request
        self.next_conn = -1  # upstream ids are negative: never the adapter's
        self.next_call = 1

    # -- downstream connections --------------------------------------------------------------

    def attach_downstream(self, ds: Downstream) -> None:
        self.downstreams[ds.id] = ds
        counters = ds.listener.counters
        counters.downstream_cx_total += 1
        counters.downstream_cx_active += 1

    def detach_downstream(self, ds: Downstream) -> None:
        ds.closed = True
        del self.downstreams[ds.id]
        ds.listener.counters.downstream_cx_active -= 1

    # -- upstream connections and their pools ------------------------------------------------

    def attach_pool(self, pool: Pool) -> None:
        pool.endpoint.pools[pool.key] = pool
        self.pools[pool] = None

    def retire_pool(self, pool: Pool) -> None:
        """No new requests go to ``pool``: it leaves its endpoint (it stays in ``pools``
        until its last connection and waiting request are gone: ``detach_upstream``)."""
        if not pool.retired:
            pool.retired = True
            del pool.endpoint.pools[pool.key]
        self._drop_pool_if_empty(pool)

    def _drop_pool_if_empty(self, pool: Pool) -> None:
        if pool.retired and not pool.connections and not pool.waiting:
            self.pools.pop(pool, None)

    def attach_upstream(self, up: Upstream) -> None:
        self.upstreams[up.id] = up
        pool = up.pool
        pool.connections.append(up)
        pool.cluster.connections += 1
        pool.cluster.counters.upstream_cx_total += 1

    def detach_upstream(self, up: Upstream) -> bool:
        """Take ``up`` out of the tables; False if it was out already."""
        if up.closed:
            return False
        up.closed = True
        del self.upstreams[up.id]
        pool = up.pool
        pool.connections.remove(up)  # there since attach_upstream: it was not closed
        pool.cluster.connections -= 1
        if up.connected:
            pool.cluster.counters.upstream_cx_active -= 1
        self._drop_pool_if_empty(pool)
        return True

    # -- external calls of paused requests ---------------------------------------------------

    def attach_call(self, req: ActiveRequest, decide: Callable[[Any, str], Abort | None]) -> int:
        call_id = self.next_call
        self.next_call += 1
        req.call = call_id
        self.calls[call_id] = PendingCall(req, decide)
        return call_id

    def detach_call(self, call_id: int) -> PendingCall | None:
        """The paused request of ``call_id``, now out of the table (None: it was out)."""
        pending = self.calls.pop(call_id, None)
        if pending is not None:
            pending.request.call = None
        return pending
