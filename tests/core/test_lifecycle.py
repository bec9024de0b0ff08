"""The request lifecycle table (core/lifecycle.py) and the engine keeping to it."""

from __future__ import annotations

import pytest

from metaprotocol.core.events import Accepted, Closed, DataReceived, UpstreamConnected
from metaprotocol.core.lifecycle import (
    FINAL,
    RULES,
    IllegalTransition,
    RequestState,
    advance,
)
from metaprotocol.core.message import Message, MessageType
from metaprotocol.core.outputs import OpenUpstream, Write
from metaprotocol.core.proxy import Proxy
from metaprotocol.core.state import ActiveRequest

from .helpers import config, req, resp

S = RequestState


def test_every_state_has_a_rule_and_the_ends_are_final() -> None:
    assert set(RULES) == set(RequestState)
    assert frozenset({S.ANSWERED, S.FAILED, S.ABANDONED}) == FINAL


def test_a_move_the_rules_do_not_allow_raises() -> None:
    proxy = Proxy(config(), now=0.0)
    (listener,) = proxy.runtime.listeners.values()
    request = ActiveRequest(None, listener, Message(MessageType.REQUEST, b""), 0.0)
    with pytest.raises(IllegalTransition, match="DECODED to SENT"):
        advance(request, S.SENT)  # never routed
    advance(request, S.ROUTED)
    advance(request, S.SENT)
    advance(request, S.ANSWERED)
    assert request.done
    with pytest.raises(IllegalTransition):
        advance(request, S.FAILED)  # answered is final


def test_a_proxied_request_is_sent_then_answered_and_connections_know_they_are_closed() -> None:
    proxy = Proxy(config(), now=0.0)
    proxy.handle(Accepted(1, "main"), 0.0)
    out = proxy.handle(DataReceived(1, req(7)), 0.0)
    (opened,) = [o for o in out if isinstance(o, OpenUpstream)]
    ds = proxy.downstreams[1]
    (request,) = ds.active
    sent = request.state
    assert sent is S.SENT
    proxy.handle(UpstreamConnected(opened.conn), 0.0)
    out = proxy.handle(DataReceived(opened.conn, resp(7)), 0.0)
    assert Write(1, resp(7)) in out
    assert request.state is S.ANSWERED and not ds.active
    up = proxy.upstreams[opened.conn]
    proxy.handle(Closed(1), 0.0)
    assert ds.closed and not up.closed
    proxy.handle(Closed(opened.conn), 0.0)
    assert up.closed and not proxy.upstreams


def test_a_request_whose_client_goes_away_is_abandoned() -> None:
    proxy = Proxy(config(), now=0.0)
    proxy.handle(Accepted(1, "main"), 0.0)
    proxy.handle(DataReceived(1, req(7)), 0.0)
    (request,) = proxy.downstreams[1].active
    proxy.handle(Closed(1), 0.0)
    assert request.state is S.ABANDONED
