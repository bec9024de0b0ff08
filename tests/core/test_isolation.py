"""Playbooks for isolation: a client that does not read its replies is held to its own limits
and never stalls another client through a shared upstream connection."""

from __future__ import annotations

from metaprotocol.core.config import (
    DEFAULT_OUTPUT_BUFFER_LIMIT,
    RetryPolicy,
    RouteAction,
    RouteMatch,
    StringMatcher,
)
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
from metaprotocol.core.pools import SHARE_THRESHOLD
from metaprotocol.testing import ANY, Playbook

from .helpers import UP, bulk, cmd, config, error_reply, fifo_playbook, playbook, req, resp, route
from .test_redis_pipelines import SESSIONS_UP, connected, two_clusters

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


def test_a_new_request_avoids_an_ordered_connection_held_up_by_a_slow_reader() -> None:
    pb = fifo_playbook(config(codec="fifo"))
    pb >> Accepted(1, "main") >> Accepted(2, "main")
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(UPSTREAM, *UP)
    pb >> UpstreamConnected(UPSTREAM)
    pb << Write(UPSTREAM, req(1))
    pb >> WriteBufferHigh(1)
    pb << ReadDisable(1)
    pb << ReadDisable(UPSTREAM)
    pb >> DataReceived(2, req(2))
    pb << OpenUpstream(-2, *UP)  # not behind the answers client 1 does not read
    pb >> UpstreamConnected(-2)
    pb << Write(-2, req(2))
    pb >> DataReceived(-2, resp(0, b"two"))
    pb << Write(2, resp(0, b"two"))
    pb >> Closed(1)
    pb << CloseConnection(UPSTREAM, flush=False)  # its answer is owed to nobody now
    pb >> Closed(2) >> Closed(-2)
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


def test_replies_written_after_the_last_reported_size_count_against_the_limit() -> None:
    # An adapter reports its buffer's size after it flushes, and may hand the core several
    # upstream reads before it flushes once (uvloop reads megabytes a loop iteration): the
    # replies written to a client above its watermark since the last report count too, or
    # the client is closed one flush (many answers) past its limit.
    limit = 4096
    pb = two_clients_on_one_upstream(playbook(config(output_buffer_limit=limit)))
    pb >> WriteBufferHigh(1)
    pb << ReadDisable(1)
    pb >> WriteBufferGrew(1, limit - 100)
    pb << None
    pb >> DataReceived(UPSTREAM, resp(1, b"x" * 200))  # no report in between
    pb << Write(1, resp(1, b"x" * 200))
    pb << CloseConnection(1, flush=False)
    pb << None
    assert pb.proxy.stats.counter("downstream_cx_output_overflow", LABELS) == 1
    pb >> DataReceived(UPSTREAM, resp(2))
    pb << Write(2, resp(2))  # the other client goes on
    pb >> Closed(UPSTREAM) >> Closed(2)
    pb << None
    pb.assert_clean()


def test_a_client_that_reads_again_starts_counting_afresh() -> None:
    limit = 4096
    pb = two_clients_on_one_upstream(playbook(config(output_buffer_limit=limit)))
    pb >> WriteBufferHigh(1)
    pb << ReadDisable(1)
    pb >> WriteBufferGrew(1, limit - 100)
    pb >> WriteBufferLow(1)
    pb << ReadEnable(1)
    pb >> DataReceived(UPSTREAM, resp(1, b"x" * 200) + resp(2))
    pb << Write(1, resp(1, b"x" * 200)) << Write(2, resp(2))
    pb << None  # below its watermark: the adapter's buffer is small, nothing to count
    pb >> Closed(UPSTREAM) >> Closed(1) >> Closed(2)
    pb << None
    pb.assert_clean()


# -- a reset of a shared connection: the other requests on it go out again, once, when safe ---

# Requests are idempotent unless their "method" is "set": those are never sent twice.
# attempts=0: no retries of a request's own failures; resending after a reset it did not cause
# only needs the policy to allow "reset" for it.
SAFE = RetryPolicy(
    attempts=0, non_idempotent=RouteMatch((("method", StringMatcher("exact", "set")),))
)


def resend_playbook(codec: str = "fifo") -> Playbook:
    cfg = config(codec=codec, routes=(route(action=RouteAction(cluster="main", retries=SAFE)),))
    return fifo_playbook(cfg) if codec == "fifo" else playbook(cfg)


def shared_ordered(pb: Playbook, second: bytes) -> Playbook:
    """Client 1's two GETs, then client 2's ``second``, on one ordered upstream connection."""
    pb >> Accepted(1, "main") >> Accepted(2, "main")
    pb >> DataReceived(1, req(1, method="get") + req(2, method="get"))
    pb << OpenUpstream(UPSTREAM, *UP)
    pb >> DataReceived(2, second)
    pb >> UpstreamConnected(UPSTREAM)
    pb << Write(UPSTREAM, req(1, method="get") + req(2, method="get") + second)
    pb << None
    return pb


def test_answers_for_a_closed_client_are_not_awaited_when_the_others_can_be_resent() -> None:
    pb = shared_ordered(resend_playbook(), req(3, method="get"))
    pb >> WriteBufferHigh(1)
    pb << ReadDisable(1)
    pb >> WriteBufferGrew(1, DEFAULT_OUTPUT_BUFFER_LIMIT + 1)
    pb << CloseConnection(1, flush=False)
    # Two answers nobody reads are ahead of client 2's: a fresh connection serves it sooner.
    pb << CloseConnection(UPSTREAM, flush=False)
    pb << OpenUpstream(-2, *UP)
    pb >> UpstreamConnected(-2)
    pb << Write(-2, req(3, method="get"))
    pb >> DataReceived(-2, resp(0, b"three"))
    pb << Write(2, resp(0, b"three"))
    assert pb.proxy.stats.counter("upstream_rq_resent", CLUSTER) == 1
    assert pb.proxy.stats.counter("upstream_cx_destroy_with_active_rq", CLUSTER) == 1
    pb >> Closed(2) >> Closed(-2)
    pb << None
    pb.assert_clean()


def test_a_non_idempotent_request_waits_for_the_answers_of_a_closed_client_instead() -> None:
    pb = shared_ordered(resend_playbook(), req(3, method="set"))
    pb >> Closed(1)
    pb << None  # the SET may have run already: it is never sent twice
    pb >> DataReceived(UPSTREAM, resp(0, b"one") + resp(0, b"two") + resp(0, b"three"))
    pb << Write(2, resp(0, b"three"))  # the answers for client 1 were dropped
    assert pb.proxy.stats.counter("upstream_rq_resent", CLUSTER) == 0
    pb >> Closed(2) >> Closed(UPSTREAM)
    pb << None
    pb.assert_clean()


def test_a_bad_response_fails_its_own_request_and_the_others_are_resent() -> None:
    pb = shared_ordered(resend_playbook(), req(3, method="get"))
    pb >> DataReceived(UPSTREAM, b"\x00\x00\x00\x20\x63" + b"\x00" * 40)  # not a response
    pb << CloseConnection(UPSTREAM, flush=False)
    pb << Write(1, ANY)  # the oldest request's answer was the unreadable one: bad_response
    pb << OpenUpstream(-2, *UP)  # its second request and client 2's go out again
    pb >> UpstreamConnected(-2)
    pb << Write(-2, req(2, method="get") + req(3, method="get"))
    pb >> DataReceived(-2, resp(0, b"two") + resp(0, b"three"))
    pb << Write(1, resp(0, b"two"))
    pb << Write(2, resp(0, b"three"))
    assert pb.proxy.stats.counter("upstream_rq_resent", CLUSTER) == 2
    assert pb.proxy.stats.counter("upstream_cx_destroy_with_active_rq", CLUSTER) == 1
    pb >> Closed(1) >> Closed(2) >> Closed(-2)
    pb << None
    pb.assert_clean()


def test_requests_on_a_multiplexed_connection_that_closes_are_resent_once() -> None:
    pb = resend_playbook("lengthprefixed")
    pb >> Accepted(1, "main") >> Accepted(2, "main")
    pb >> DataReceived(1, req(1, method="get"))
    pb << OpenUpstream(UPSTREAM, *UP)
    pb >> DataReceived(2, req(2, method="set"))
    pb >> UpstreamConnected(UPSTREAM)
    pb << Write(UPSTREAM, req(1, method="get") + req(2, method="set"))
    pb >> Closed(UPSTREAM)
    pb << OpenUpstream(-2, *UP)  # the GET goes out again; the SET never does
    pb << Write(2, error_reply(2, "upstream_reset", "upstream connection closed", 7))
    pb >> UpstreamConnected(-2)
    pb << Write(-2, req(1, method="get"))
    pb >> Closed(-2)  # and only once
    pb << Write(1, error_reply(1, "upstream_reset", "upstream connection closed", 7))
    assert pb.proxy.stats.counter("upstream_rq_resent", CLUSTER) == 1
    assert pb.proxy.stats.counter("upstream_cx_destroy_with_active_rq", CLUSTER) == 2
    pb >> Closed(1) >> Closed(2)
    pb << None
    pb.assert_clean()


# -- answers the core holds back count against the client's limit too ---------------------


def test_big_answers_to_a_merged_pipeline_go_out_before_the_last_one_comes() -> None:
    pb = Playbook(two_clusters())
    connected(pb, cmd("GET", "a") + cmd("GET", "b") + cmd("GET", "c"))
    big = bulk("x" * 200_000)
    pb >> DataReceived(-1, big)
    pb << None  # small enough to wait for the rest, as usual
    pb >> DataReceived(-1, big)
    pb << Write(1, big + big)  # not up to max_pending_requests answers kept for the client
    pb >> DataReceived(-1, bulk("C"))
    pb << Write(1, bulk("C"))
    pb >> Closed(1) >> Closed(-1)
    pb << None
    pb.assert_clean()


def test_answers_held_behind_an_unanswered_request_count_against_the_limit() -> None:
    proxy = two_clusters(output_buffer_limit=10_000)
    pb = Playbook(proxy)
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, cmd("GET", "session:1") + cmd("GET", "a") + cmd("GET", "b"))
    pb << OpenUpstream(-1, *SESSIONS_UP) << OpenUpstream(-2, *UP)
    pb >> UpstreamConnected(-2)
    pb << Write(-2, cmd("GET", "a") + cmd("GET", "b"))
    pb >> DataReceived(-2, bulk("x" * 6_000))
    pb << None  # held: the session's answer comes first
    pb >> DataReceived(-2, bulk("x" * 6_000))
    pb << CloseConnection(1, flush=False)  # 12,000 bytes held for it: over its limit
    pb << CloseConnection(-1, flush=False)  # the session's answer is owed to nobody now
    assert proxy.stats.counter("downstream_cx_output_overflow", LABELS) == 1
    pb >> Closed(-2)
    pb.assert_clean()


def test_a_merged_pipeline_loads_its_connection_as_the_commands_it_carries() -> None:
    pb = Playbook(two_clusters())
    pipeline = b"".join(cmd("GET", f"k{i}") for i in range(SHARE_THRESHOLD))
    connected(pb, pipeline)  # one merged message of 64 commands on -1
    pb >> Accepted(2, "main") >> DataReceived(2, cmd("GET", "x"))
    pb << OpenUpstream(-2, *UP)  # not behind 64 answers: a connection of its own
    pb >> UpstreamConnected(-2)
    pb << Write(-2, cmd("GET", "x"))
    pb >> DataReceived(-2, bulk("X"))
    pb << Write(2, bulk("X"))
    pb >> DataReceived(-1, b"".join(bulk(str(i)) for i in range(SHARE_THRESHOLD)))
    pb << Write(1, b"".join(bulk(str(i)) for i in range(SHARE_THRESHOLD)))
    pb >> DataReceived(1, cmd("GET", "y"))  # the load is gone with the answers
    pb << Write(-1, cmd("GET", "y"))
    pb >> DataReceived(-1, bulk("Y"))
    pb << Write(1, bulk("Y"))
    pb >> Closed(1) >> Closed(2) >> Closed(-1) >> Closed(-2)
    pb << None
    pb.assert_clean()
