"""Playbooks for ordered (FIFO) upstreams, exclusive pools and streaming frames."""

from __future__ import annotations

from typing import ClassVar

import pytest

from metaprotocol.codecs.lengthprefixed import LengthPrefixedCodec, build_frame
from metaprotocol.core import pools
from metaprotocol.core.codec import Ordering
from metaprotocol.core.config import ClusterConfig, Endpoint, RetryPolicy, RouteAction
from metaprotocol.core.events import Accepted, Closed, DataReceived, UpstreamConnected
from metaprotocol.core.outputs import CloseConnection, OpenUpstream, Write
from metaprotocol.core.proxy import Proxy
from metaprotocol.testing import Playbook

from .helpers import UP, config, error_reply, fifo_playbook, req, resp, route


def test_fifo_ordering_with_three_pipelined_requests() -> None:
    pb = fifo_playbook(config(codec="fifo"))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1, b"a") + req(1, b"b") + req(1, b"c"))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, req(1, b"a") + req(1, b"b") + req(1, b"c"))  # no id rewriting
    pb >> DataReceived(-1, resp(0, b"A") + resp(0, b"B"))
    pb << Write(1, resp(0, b"A"))
    pb << Write(1, resp(0, b"B"))
    pb >> DataReceived(-1, resp(0, b"C"))
    pb << Write(1, resp(0, b"C"))
    pb >> Closed(1)
    pb >> Closed(-1)
    pb << None
    pb.assert_clean()


def test_fifo_local_reply_waits_for_earlier_answers() -> None:
    routes_cfg = config(codec="fifo", routes=())
    pb = fifo_playbook(routes_cfg)
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1) + req(2))
    pb << Write(1, error_reply(1, "route_not_found", "no route matched", 1))
    pb << Write(1, error_reply(2, "route_not_found", "no route matched", 1))
    pb >> Closed(1)
    pb.assert_clean()


def test_fifo_answers_keep_request_order_across_clusters() -> None:
    from .helpers import route

    clusters = (
        ClusterConfig("main", (Endpoint(*UP),)),
        ClusterConfig("other", (Endpoint("10.0.0.2", 9000),)),
    )
    cfg = config(codec="fifo", routes=(route("other", name="o", m="x"), route()), clusters=clusters)
    pb = fifo_playbook(cfg)
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1, m="x") + req(2))
    pb << OpenUpstream(-1, "10.0.0.2", 9000)
    pb << OpenUpstream(-2, *UP)
    pb >> UpstreamConnected(-2)
    pb << Write(-2, req(2))
    pb >> DataReceived(-2, resp(2))
    pb << None  # the answer to the second request waits for the first
    pb >> UpstreamConnected(-1)
    pb << Write(-1, req(1, m="x"))
    pb >> DataReceived(-1, resp(1))
    pb << Write(1, resp(1) + resp(2))
    for conn in (1, -1, -2):
        pb >> Closed(conn)
    pb.assert_clean()


class ExclusiveCodec(LengthPrefixedCodec):
    name: ClassVar[str] = "exclusive"
    ordering: ClassVar[Ordering] = Ordering.EXCLUSIVE


def test_exclusive_pool_one_request_per_connection_and_queueing() -> None:
    clusters = (ClusterConfig("main", (Endpoint(*UP),), max_connections_per_endpoint=1),)
    proxy = Proxy(config(codec="exclusive", clusters=clusters), now=0.0,
                  codecs={"exclusive": ExclusiveCodec})  # fmt: skip
    pb = Playbook(proxy)
    pb >> Accepted(1, "main")
    pb >> Accepted(2, "main")
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(-1, *UP)
    pb >> DataReceived(2, req(2))
    pb << None  # waits: the only connection is busy
    pb >> UpstreamConnected(-1)
    pb << Write(-1, req(1))
    pb >> DataReceived(-1, resp(1))
    pb << Write(1, resp(1))
    pb << Write(-1, req(2))
    pb >> DataReceived(-1, resp(2))
    pb << Write(2, resp(2))
    for conn in (1, 2, -1):
        pb >> Closed(conn)
    pb.assert_clean()


def test_stream_frames_follow_their_init_to_one_upstream() -> None:
    def frame(kind: int, rid: int, body: bytes = b"") -> bytes:
        return build_frame(kind, rid, {}, body)

    pb = Playbook(Proxy(config(), now=0.0))
    pb >> Accepted(1, "main")
    pb >> Accepted(2, "main")
    pb >> DataReceived(1, frame(6, 10, b"init-1"))
    pb << OpenUpstream(-1, *UP)
    pb >> DataReceived(2, frame(6, 10, b"init-2"))  # same stream id from another client
    pb >> UpstreamConnected(-1)
    pb << Write(-1, frame(6, 10, b"init-1") + frame(6, 1, b"init-2"))
    pb >> DataReceived(2, frame(7, 10, b"data-2"))
    pb << Write(-1, frame(7, 1, b"data-2"))  # pinned, id rewritten like its init
    pb >> DataReceived(-1, frame(7, 1, b"down-2") + frame(7, 10, b"down-1"))
    pb << Write(2, frame(7, 10, b"down-2"))
    pb << Write(1, frame(7, 10, b"down-1"))
    pb >> DataReceived(-1, frame(8, 1) + frame(8, 10))
    pb << Write(2, frame(8, 10))
    pb << Write(1, frame(8, 10))
    for conn in (1, 2, -1):
        pb >> Closed(conn)
    pb.assert_clean()


def test_a_clients_pipelined_requests_stay_on_one_upstream_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pools, "SHARE_THRESHOLD", 1)  # open a 2nd connection early
    pb = fifo_playbook(config(codec="fifo"))
    pb >> Accepted(1, "main")
    pb >> Accepted(2, "main")
    pb >> DataReceived(1, req(1, b"SET k"))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, req(1, b"SET k"))
    pb >> DataReceived(1, req(2, b"GET k"))  # the first connection is "full"...
    pb << Write(-1, req(2, b"GET k"))  # ...but this client's order matters more
    pb >> DataReceived(2, req(3, b"GET j"))
    pb << OpenUpstream(-2, *UP)  # another client may go elsewhere
    pb >> Closed(1)
    pb << CloseConnection(-1, flush=False)  # it owed answers only to the client that left
    pb >> Closed(2)
    pb << CloseConnection(-2, flush=False)
    pb.assert_clean()


def test_fifo_timeout_resets_the_upstream_connection() -> None:
    pb = fifo_playbook(config(codec="fifo", request_timeout=1.0))
    pb >> Accepted(1, "main")
    pb >> Accepted(2, "main")
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, req(1))
    pb.tick(0.5)
    pb >> DataReceived(2, req(2))
    pb << Write(-1, req(2))
    pb.tick(0.5)  # the first request times out: its late answer would block the second
    pb << CloseConnection(-1, flush=False)
    detail = "upstream connection closed after a request timed out"
    pb << Write(2, error_reply(2, "upstream_reset", detail, 7))
    pb << Write(1, error_reply(1, "timeout", "request timed out", 6))
    for conn in (1, 2):
        pb >> Closed(conn)
    pb.assert_clean()


def test_fifo_timeout_retry_goes_to_a_fresh_connection() -> None:
    """The timed-out connection is reset before the retry is sent, so the retry cannot be
    pinned to it (and failed by its reset)."""
    retries = RetryPolicy(attempts=1, retry_on=frozenset({"timeout"}))
    action = RouteAction(cluster="main", timeout=1.0, retries=retries)
    pb = fifo_playbook(config(routes=(route(action=action),), codec="fifo"))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, req(1))
    pb.tick(1.5)
    pb << CloseConnection(-1, flush=False)
    pb << OpenUpstream(-2, *UP)
    pb >> UpstreamConnected(-2)
    pb << Write(-2, req(1))
    pb >> DataReceived(-2, resp(1, b"late but fine"))
    pb << Write(1, resp(1, b"late but fine"))
    for conn in (1, -2):
        pb >> Closed(conn)
    pb.assert_clean()


def test_fifo_client_gone_closes_an_upstream_that_owes_only_it() -> None:
    pb = fifo_playbook(config(codec="fifo"))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, req(1))
    pb >> Closed(1)
    pb << CloseConnection(-1, flush=False)  # nothing else waits on it: no stale answer kept
    pb.assert_clean()


def test_fifo_client_gone_keeps_a_shared_upstream_until_the_deadline() -> None:
    pb = fifo_playbook(config(codec="fifo", request_timeout=5.0))
    pb >> Accepted(1, "main")
    pb >> Accepted(2, "main")
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(-1, *UP)
    pb >> DataReceived(2, req(2))
    pb >> UpstreamConnected(-1)
    pb << Write(-1, req(1) + req(2))
    pb >> Closed(1)
    pb << None  # client 2 still waits on the same connection
    pb >> DataReceived(-1, resp(1) + resp(2))
    pb << Write(2, resp(2))  # the first answer (for nobody) was dropped in order
    pb.tick(5.0)
    pb << None  # the abandoned request's timer found its answer already in
    pb >> Closed(2)
    pb >> Closed(-1)
    pb.assert_clean()
