"""Playbooks for isolation: a client that does not read its replies is held to its own limits
and never stalls another client through a shared upstream connection."""

from __future__ import annotations

from metaprotocol.core.events import (
    Accepted,
    Closed,
    DataReceived,
    UpstreamConnected,
    WriteBufferGrew,
    WriteBufferHigh,
    WriteBufferLow,
)
from metaprotocol.core.outputs import CloseConnection, OpenUpstream, ReadDisable, ReadEnable, Write
from metaprotocol.testing import ANY, Playbook

from .helpers import UP, config, playbook, req, resp

UPSTREAM = -1
LABELS = (("listener", "main"),)
CLUSTER = (("cluster", "main"),)


def two_clients_on_one_upstream(pb: Playbook) -> Playbook:
    """Clients 1 and 2 each have one request in flight on the same upstream connection."""
    pb >> Accepted(1, "main") >> Accepted(2, "main")
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(UPSTREAM, *UP)
    pb >> DataReceived(2, req(2))
    pb >> UpstreamConnected(UPSTREAM)
    pb << Write(UPSTREAM, req(1) + req(2))
    pb << None
    return pb


def test_a_client_above_its_watermark_gets_nothing_decoded_even_when_its_requests_end() -> None:
    # max_pending_requests stops decoding; a timed-out request frees a place, but a client
    # that does not read its replies must not get more requests decoded from its buffer.
    pb = playbook(config(max_pending_requests=1, request_timeout=1.0))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1) + req(2) + req(3))
    pb << OpenUpstream(UPSTREAM, *UP)
    pb << ReadDisable(1)
    pb >> UpstreamConnected(UPSTREAM)
    pb << Write(UPSTREAM, req(1))
    pb >> WriteBufferHigh(1)
    pb << ReadDisable(UPSTREAM)  # it is all this upstream serves
    pb.tick(1.0)
    pb << Write(1, ANY)  # the timeout's error reply
    pb << None  # and no request 2 upstream
    assert pb.proxy.request_count() == 0
    pb >> WriteBufferLow(1)
    pb << ReadEnable(1)
    pb << ReadEnable(UPSTREAM)
    pb << Write(UPSTREAM, req(2))
    pb << ReadDisable(1)  # one in flight again: max_pending_requests holds
    pb >> Closed(1) >> Closed(UPSTREAM)
    pb << None
    pb.assert_clean()


def test_a_slow_client_does_not_pause_an_upstream_another_client_waits_on() -> None:
    pb = two_clients_on_one_upstream(playbook())
    pb >> WriteBufferHigh(1)
    pb << ReadDisable(1)
    pb << None  # client 2 waits on this upstream too: it keeps being read
    pb >> DataReceived(UPSTREAM, resp(1) + resp(2))
    pb << Write(1, resp(1))  # client 1's answer goes to its own output buffer
    pb << Write(2, resp(2))
    assert pb.proxy.stats.counter("upstream_flow_control_paused", CLUSTER) == 0
    pb >> Closed(1) >> Closed(2) >> Closed(UPSTREAM)
    pb << None
    pb.assert_clean()


def test_an_upstream_serving_only_slow_clients_pauses_until_another_client_needs_it() -> None:
    pb = playbook()
    pb >> Accepted(1, "main") >> Accepted(2, "main")
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(UPSTREAM, *UP)
    pb >> UpstreamConnected(UPSTREAM)
    pb << Write(UPSTREAM, req(1))
    pb >> WriteBufferHigh(1)
    pb << ReadDisable(1)
    pb << ReadDisable(UPSTREAM)  # nobody else waits on it: the upstream server holds the answer
    assert pb.proxy.stats.counter("upstream_flow_control_paused", CLUSTER) == 1
    pb >> DataReceived(2, req(2))
    pb << Write(UPSTREAM, req(2))
    pb << ReadEnable(UPSTREAM)  # client 2 now waits on it
    pb >> DataReceived(UPSTREAM, resp(2) + resp(1))
    pb << Write(2, resp(2))
    pb << Write(1, resp(1))
    pb >> Closed(1) >> Closed(2) >> Closed(UPSTREAM)
    pb << None
    pb.assert_clean()


def test_an_upstream_paused_for_two_slow_clients_resumes_when_the_last_one_goes() -> None:
    pb = two_clients_on_one_upstream(playbook())
    pb >> WriteBufferHigh(1)
    pb << ReadDisable(1)
    pb << None
    pb >> WriteBufferHigh(2)
    pb << ReadDisable(2)
    pb << ReadDisable(UPSTREAM)  # now every client it serves is slow
    pb >> WriteBufferLow(1)
    pb << ReadEnable(1)
    pb << ReadEnable(UPSTREAM)  # client 1 reads again and waits on it
    pb >> WriteBufferHigh(1)
    pb << ReadDisable(1)
    pb << ReadDisable(UPSTREAM)
    pb >> Closed(1)
    pb << None  # client 2 is still slow: stays paused
    pb >> Closed(2)
    pb << ReadEnable(UPSTREAM)
    pb >> Closed(UPSTREAM)
    pb << None
    pb.assert_clean()


def test_a_client_whose_unread_replies_exceed_the_limit_is_closed_and_counted() -> None:
    limit = 4096
    pb = two_clients_on_one_upstream(playbook(config(output_buffer_limit=limit)))
    pb >> WriteBufferHigh(1)
    pb << ReadDisable(1)
    pb >> WriteBufferGrew(1, limit)  # at the limit: still fine
    pb << None
    pb >> WriteBufferGrew(1, limit + 1)
    pb << CloseConnection(1, flush=False)  # what it did not read is dropped with it
    pb << None
    assert pb.proxy.stats.counter("downstream_cx_output_overflow", LABELS) == 1
    assert pb.proxy.stats.counter("cx_destroy_local_with_active_rq", LABELS) == 1
    pb >> DataReceived(UPSTREAM, resp(1) + resp(2))
    pb << Write(2, resp(2))  # the other client is served; client 1's answer is dropped
    pb >> WriteBufferGrew(2, limit + 1) >> WriteBufferGrew(UPSTREAM, limit + 1)
    pb << CloseConnection(2, flush=False)  # only downstream connections have the limit
    pb << None
    pb >> Closed(UPSTREAM)
    pb << None
    pb.assert_clean()
