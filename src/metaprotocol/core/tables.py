"""The tables a request is entered in, each with its attach/detach pair
(docs/architecture.md, "The request lifecycle").

- its client's ``Downstream.active`` (with ``streams`` and its reply slot):
  ``attach_request`` / ``detach_request``;
- its endpoint's and cluster's request counts: ``attach_endpoint`` / ``detach_endpoint``;
- an exclusive pool's ``Pool.waiting``: ``attach_waiting`` / ``detach_upstream_tables``;
- an upstream's ``inflight`` / ``streams`` / ``fifo``: ``attach_sent`` /
  ``detach_upstream_tables``.

``RequestLifecycle.finish`` (core/requests.py) undoes them all through these functions.
"""

from __future__ import annotations

from typing import Final

from metaprotocol.core.message import MessageType
from metaprotocol.core.state import ActiveRequest, Downstream, Pool, ReplySlot, Upstream

__all__ = [
    "attach_endpoint",
    "attach_request",
    "attach_sent",
    "attach_waiting",
    "detach_endpoint",
    "detach_request",
    "detach_upstream_tables",
]

# An enum member as a module constant: a compiled build reads it without a class lookup.
_STREAM_INIT: Final = MessageType.STREAM_INIT


def attach_request(ds: Downstream, req: ActiveRequest) -> None:
    """A two-way request waits for its answer on ``ds`` (in reply order when ordered)."""
    n = req.message.count
    ds.active[req] = None
    ds.pending += n
    req.listener.counters.active_requests += n
    if req.listener.ordered:
        req.slot = ReplySlot()
        ds.add_slot(req.slot)
    msg = req.message
    if msg.type is _STREAM_INIT and msg.request_id is not None:
        ds.streams[msg.request_id] = req


def detach_request(ds: Downstream, req: ActiveRequest) -> None:
    """``req`` no longer waits on ``ds`` (its reply slot stays: the order is kept)."""
    if req not in ds.active:
        return
    active = ds.active
    del active[req]
    if not active:
        # Nothing in flight: free the tables' storage (idle connections stay small),
        # and no pipeline order left to keep, so the next request may go anywhere.
        active.clear()
        if ds.pinned:
            ds.pinned.clear()
    n = req.message.count
    ds.pending -= n
    req.listener.counters.active_requests -= n
    if ds.streams:
        mid = req.message.request_id
        if mid is not None and ds.streams.get(mid) is req:
            del ds.streams[mid]


def attach_endpoint(req: ActiveRequest, pool: Pool) -> bool:
    """Count ``req`` against its pool's endpoint and cluster; False if it was counted."""
    if req.endpoint is not None:
        return False
    req.endpoint = pool.endpoint
    n = req.message.count
    pool.endpoint.active_requests += n
    assert req.cluster is not None
    req.cluster.active_requests += n
    return True


def detach_endpoint(req: ActiveRequest) -> None:
    ep = req.endpoint
    if ep is not None:
        n = req.message.count
        ep.active_requests -= n
        req.endpoint = None
        if req.cluster is not None:
            req.cluster.active_requests -= n
    req.pool = None


def attach_waiting(pool: Pool, req: ActiveRequest) -> None:
    req.pool = pool
    pool.waiting.append(req)


def attach_sent(up: Upstream, req: ActiveRequest, up_id: int | None) -> None:
    """``req`` was encoded for ``up`` under ``up_id`` (None: matched by order)."""
    req.upstream = up
    req.upstream_id = up_id
    msg = req.message
    if up_id is not None:
        if msg.type is _STREAM_INIT:
            up.streams[up_id] = req
        else:
            up.inflight[up_id] = req
    else:
        up.fifo.append(req)
        if msg.count > 1:
            up.merged_extra += msg.count - 1


def detach_upstream_tables(req: ActiveRequest) -> None:
    """Remove ``req`` from its upstream connection's and pool's tables (it stays counted on
    its endpoint: ``detach_endpoint``)."""
    up = req.upstream
    if up is not None:
        uid = req.upstream_id
        if uid is not None:
            if up.inflight.get(uid) is req:
                del up.inflight[uid]
            if up.streams.get(uid) is req:
                del up.streams[uid]
        # Ordered connections keep the entry as a placeholder: the response still comes
        # and must be matched to this (now finished) request to keep the order right.
        req.upstream = None
    pool = req.pool
    if pool is not None and pool.waiting and req in pool.waiting:
        pool.waiting.remove(req)
