"""Playbooks with the real HTTP/1.1 codec: FIFO answers, Connection: close on either side,
responses framed by the upstream closing."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from metaprotocol.core.config import (
    ClusterConfig,
    Endpoint,
    RouteAction,
    RouteConfig,
    RouteMatch,
    StringMatcher,
)
from metaprotocol.core.events import Accepted, Closed, DataReceived, EofReceived, UpstreamConnected
from metaprotocol.core.message import Mutation
from metaprotocol.core.outputs import CloseConnection, OpenUpstream, Write
from metaprotocol.core.proxy import Proxy

from .helpers import UP, config, playbook, route


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


def ok(body: bytes, extra: str = "") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra.encode()) + body


def test_pipelined_http_requests_are_answered_in_order() -> None:
    pb = playbook(config(codec="http1"))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, get("/a") + get("/b"))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, get("/a") + get("/b"))
    pb >> DataReceived(-1, ok(b"A") + ok(b"B"))
    pb << Write(1, ok(b"A"))
    pb << Write(1, ok(b"B"))
    for conn in (1, -1):
        pb >> Closed(conn)
    pb.assert_clean()


def test_client_connection_close_closes_after_the_answer() -> None:
    pb = playbook(config(codec="http1"))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, get("/a", "Connection: close\r\n"))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, get("/a"))  # hop by hop: the shared upstream connection stays open
    pb >> DataReceived(-1, ok(b"A", "Keep-Alive: timeout=5\r\n"))
    pb << Write(1, ok(b"A", "Connection: close\r\n"))  # the client is told, then closed
    pb << CloseConnection(1, flush=True)
    pb >> Closed(-1)
    pb.assert_clean()


def test_http10_clients_share_one_kept_alive_upstream_connection() -> None:
    pb = playbook(config(codec="http1"))
    request = b"GET /a HTTP/1.0\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nX-End: 2\r\n\r\n"
    forwarded = b"GET /a HTTP/1.0\r\nX-End: 2\r\nConnection: keep-alive\r\n\r\n"
    pb >> Accepted(1, "main") >> Accepted(2, "main")
    pb >> DataReceived(1, request)
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, forwarded)
    pb >> DataReceived(-1, ok(b"A", "Connection: keep-alive\r\n"))
    pb << Write(1, ok(b"A", "Connection: close\r\n"))
    pb << CloseConnection(1, flush=True)
    pb >> DataReceived(2, b"GET /b HTTP/1.0\r\n\r\n")  # the same upstream connection
    pb << Write(-1, b"GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    pb >> DataReceived(-1, ok(b"B", "Connection: keep-alive\r\n"))
    pb << Write(2, ok(b"B", "Connection: close\r\n"))
    pb << CloseConnection(2, flush=True)
    pb >> Closed(-1)
    pb.assert_clean()


def test_only_the_last_answer_before_a_requested_close_says_close() -> None:
    pb = playbook(config(codec="http1"))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, get("/a") + get("/b", "Connection: close\r\n"))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, get("/a") + get("/b"))
    pb >> DataReceived(-1, ok(b"A") + ok(b"B"))
    pb << Write(1, ok(b"A"))  # untouched
    pb << Write(1, ok(b"B", "Connection: close\r\n"))
    pb << CloseConnection(1, flush=True)
    pb >> Closed(-1)
    pb.assert_clean()


def test_keep_alive_requests_and_answers_pass_through_untouched() -> None:
    pb = playbook(config(codec="http1"))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, get("/a", "Connection: keep-alive\r\n"))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, get("/a", "Connection: keep-alive\r\n"))
    pb >> DataReceived(-1, ok(b"A", "Connection: keep-alive\r\n"))
    pb << Write(1, ok(b"A", "Connection: keep-alive\r\n"))
    for conn in (1, -1):
        pb >> Closed(conn)
    pb.assert_clean()


def test_the_servers_connection_fields_do_not_reach_the_client() -> None:
    # Keep-Alive, Proxy-Connection and the fields Connection names describe the server's
    # connection to the proxy; the client's connection has its own.
    pb = playbook(config(codec="http1"))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, get("/a") + get("/b"))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, get("/a") + get("/b"))
    pb >> DataReceived(-1, ok(b"A", "Keep-Alive: timeout=5, max=100\r\n"))
    pb << Write(1, ok(b"A"))
    pb >> DataReceived(-1, ok(b"B", "Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nX-End: 2\r\n"))
    pb << Write(1, ok(b"B", "X-End: 2\r\n"))
    for conn in (1, -1):
        pb >> Closed(conn)
    pb.assert_clean()


def test_te_is_not_forwarded() -> None:
    pb = playbook(config(codec="http1"))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, get("/a", "TE: trailers\r\nX-End: 1\r\n"))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, get("/a", "X-End: 1\r\n"))
    pb >> DataReceived(-1, ok(b"A"))
    pb << Write(1, ok(b"A"))
    for conn in (1, -1):
        pb >> Closed(conn)
    pb.assert_clean()


def test_http10_keep_alive_client_is_told_keep_alive_whatever_the_server_says() -> None:
    pb = playbook(config(codec="http1"))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    pb >> DataReceived(-1, ok(b"A"))  # no Connection field: HTTP/1.0 would read it as close
    pb << Write(1, ok(b"A", "Connection: keep-alive\r\n"))
    pb >> DataReceived(1, b"GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    pb << Write(-1, b"GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    pb >> DataReceived(-1, ok(b"B", "Connection: close\r\n"))  # the server recycles its own
    pb << Write(1, ok(b"B", "Connection: keep-alive\r\n"))
    pb << CloseConnection(-1, flush=False)
    for conn in (1,):
        pb >> Closed(conn)
    pb.assert_clean()


def test_each_answer_follows_the_http_version_of_its_own_request() -> None:
    # An HTTP/1.0 keep-alive request pipelined ahead of an HTTP/1.1 one: the first answer
    # must say keep-alive (1.0 closes by default), the second needs nothing.
    old = b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    pb = playbook(config(codec="http1"))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, old + get("/b"))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, old + get("/b"))
    pb >> DataReceived(-1, ok(b"A") + ok(b"B"))
    pb << Write(1, ok(b"A", "Connection: keep-alive\r\n"))
    pb << Write(1, ok(b"B"))
    for conn in (1, -1):
        pb >> Closed(conn)
    pb.assert_clean()


def test_answers_from_two_clusters_out_of_order_each_say_their_own() -> None:
    # /slow goes to one cluster, the closing /fast to another, which answers first: its
    # answer is held back until /slow's, and only it says close.
    slow = RouteConfig(
        "slow",
        RouteAction(cluster="slow"),
        RouteMatch(((":path", StringMatcher("exact", "/slow")),)),
    )
    routes = (slow, route("fast", name="fast"))
    clusters = (
        ClusterConfig("slow", (Endpoint(*UP),)),
        ClusterConfig("fast", (Endpoint("10.0.0.2", 9000),)),
    )
    pb = playbook(config(routes, clusters, codec="http1"))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, get("/slow") + get("/fast", "Connection: close\r\n"))
    pb << OpenUpstream(-1, *UP)
    pb << OpenUpstream(-2, "10.0.0.2", 9000)
    pb >> UpstreamConnected(-2)
    pb << Write(-2, get("/fast"))  # upstream connections stay alive
    pb >> UpstreamConnected(-1)
    pb << Write(-1, get("/slow"))
    pb >> DataReceived(-2, ok(b"F"))
    pb >> DataReceived(-1, ok(b"S"))
    pb << Write(1, ok(b"S") + ok(b"F", "Connection: close\r\n"))
    pb << CloseConnection(1)
    for conn in (-1, -2):
        pb >> Closed(conn)
    pb.assert_clean()


def test_a_request_mutation_that_cannot_be_sent_is_answered_500() -> None:
    # The config loader rejects such a mutation; one built in code reaches the codec.
    bad = Mutation(add=(("x-bad", "a\r\nInjected: 1"),))
    routes = (
        RouteConfig(
            "bad",
            RouteAction(cluster="main", request_mutation=bad),
            RouteMatch(((":path", StringMatcher("exact", "/bad")),)),
        ),
        route(),
    )
    pb = playbook(config(routes, codec="http1"))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, get("/bad") + get("/good"))
    pb << OpenUpstream(-1, *UP)
    reply = pb.take()
    assert isinstance(reply, Write) and reply.conn == 1
    assert reply.data.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"cannot add header" in reply.data
    pb >> UpstreamConnected(-1)
    pb << Write(-1, get("/good"))
    pb >> DataReceived(-1, ok(b"G"))
    pb << Write(1, ok(b"G"))
    for conn in (1, -1):
        pb >> Closed(conn)
    pb.assert_clean()


def test_requests_pipelined_after_a_requested_close_are_not_processed() -> None:
    # RFC 9112 section 9.6: the answer to the closing request is the last, says so, and
    # the connection closes; /c never reaches the server.
    pb = playbook(config(codec="http1"))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, get("/a") + get("/b", "Connection: close\r\n") + get("/c"))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, get("/a") + get("/b"))
    pb >> DataReceived(1, get("/d"))
    pb >> DataReceived(-1, ok(b"A") + ok(b"B"))
    pb << Write(1, ok(b"A"))
    pb << Write(1, ok(b"B", "Connection: close\r\n"))
    pb << CloseConnection(1, flush=True)
    pb >> Closed(-1)
    pb.assert_clean()


def test_upstream_connection_close_resends_the_requests_pipelined_behind_it() -> None:
    pb = playbook(config(codec="http1"))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, get("/a") + get("/b"))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, get("/a") + get("/b"))
    pb >> DataReceived(-1, ok(b"A", "Connection: close\r\n"))
    pb << Write(1, ok(b"A"))  # the server recycles its connection: not the client's business
    pb << CloseConnection(-1, flush=False)
    pb << OpenUpstream(-2, *UP)  # /b was never processed: it goes out again
    pb >> UpstreamConnected(-2)
    pb << Write(-2, get("/b"))
    pb >> DataReceived(-2, ok(b"B"))
    pb << Write(1, ok(b"B"))
    for conn in (1, -2):
        pb >> Closed(conn)
    pb.assert_clean()


def test_upstream_close_resends_unprocessed_requests_of_other_clients() -> None:
    pb = playbook(config(codec="http1"))
    pb >> Accepted(1, "main")
    pb >> Accepted(2, "main")
    pb >> DataReceived(1, get("/a"))
    pb << OpenUpstream(-1, *UP)
    pb >> DataReceived(2, get("/b"))
    pb >> UpstreamConnected(-1)
    pb << Write(-1, get("/a") + get("/b"))
    pb >> DataReceived(-1, ok(b"A", "Connection: close\r\n"))
    pb << Write(1, ok(b"A"))
    pb << CloseConnection(-1, flush=False)
    pb << OpenUpstream(-2, *UP)  # /b was never processed: it goes out again
    pb >> UpstreamConnected(-2)
    pb << Write(-2, get("/b"))
    pb >> DataReceived(-2, ok(b"B"))
    pb << Write(2, ok(b"B"))
    for conn in (1, 2, -2):
        pb >> Closed(conn)
    pb.assert_clean()


def test_a_closing_client_answered_by_a_closing_server_is_told_once() -> None:
    pb = playbook(config(codec="http1"))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, get("/a", "Connection: close\r\n"))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, get("/a"))
    pb >> DataReceived(-1, ok(b"A", "Connection: close\r\n"))
    pb << Write(1, ok(b"A", "Connection: close\r\n"))  # as the server said it
    pb << CloseConnection(1, flush=True)
    pb << CloseConnection(-1, flush=False)
    pb.assert_clean()


def test_response_framed_by_upstream_close_is_completed() -> None:
    pb = playbook(config(codec="http1"))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, get("/old"))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, get("/old"))
    pb >> DataReceived(-1, b"HTTP/1.0 200 OK\r\n\r\nuntil-close")
    pb << None
    pb >> EofReceived(-1)
    reply = pb.take()
    assert isinstance(reply, Write) and reply.conn == 1
    assert b"Content-Length: 11\r\n" in reply.data and reply.data.endswith(b"until-close")
    pb << CloseConnection(-1, flush=False)
    pb >> Closed(1)  # the client decides: an HTTP/1.0 answer tells it not to persist
    pb.assert_clean()


def test_bad_request_gets_400_and_close() -> None:
    pb = playbook(config(codec="http1"))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, b"NOT HTTP AT ALL\r\n\r\n")
    reply = pb.take()
    assert isinstance(reply, Write) and reply.data.startswith(b"HTTP/1.1 400 ")
    pb << CloseConnection(1, flush=True)
    pb.assert_clean()


def test_expect_100_continue_is_answered_by_the_proxy() -> None:
    head = b"POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
    pb = playbook(config(codec="http1"))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, head)
    pb << Write(1, b"HTTP/1.1 100 Continue\r\n\r\n")
    pb >> DataReceived(1, b"da")
    pb << None  # only once per request
    pb >> DataReceived(1, b"ta")
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    forwarded = pb.take()  # the upstream gets the request without the expectation
    assert isinstance(forwarded, Write) and b"Expect" not in forwarded.data
    assert forwarded.data.endswith(b"\r\n\r\ndata")
    pb >> DataReceived(-1, ok(b"done"))
    pb << Write(1, ok(b"done"))
    for conn in (1, -1):
        pb >> Closed(conn)
    pb.assert_clean()


_KINDS = {
    "1.1": (b"GET /%s/%d HTTP/1.1\r\nHost: x\r\n\r\n", None),
    "1.0 keep-alive": (b"GET /%s/%d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", b"keep-alive"),
    "1.1 close": (b"GET /%s/%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"close"),
    "1.0": (b"GET /%s/%d HTTP/1.0\r\n\r\n", b"close"),
}


@st.composite
def _pipelines(draw: st.DrawFn) -> tuple[list[tuple[str, str]], list[int]]:
    """Requests of mixed versions for two clusters (only the last may ask to close), and
    the order in which the two servers' answers arrive (each server answers in order)."""
    size = draw(st.integers(1, 6))
    kinds = [draw(st.sampled_from(["1.1", "1.0 keep-alive"])) for _ in range(size - 1)]
    kinds.append(draw(st.sampled_from(list(_KINDS))))
    clusters = [draw(st.sampled_from("ab")) for _ in range(size)]
    # Arrival order: a shuffle of the requests that keeps each cluster's own order.
    order = draw(st.permutations(range(size)))
    for name in "ab":
        mine = [i for i in order if clusters[i] == name]
        it = iter(sorted(mine))
        order = [next(it) if clusters[i] == name else i for i in order]
    return list(zip(kinds, clusters, strict=True)), order


@settings(max_examples=150, deadline=None)
@given(_pipelines())
def test_every_pipelined_answer_says_what_holds_for_its_own_request(
    made: tuple[list[tuple[str, str]], list[int]],
) -> None:
    requests, order = made
    routes = tuple(
        RouteConfig(
            name,
            RouteAction(cluster=name),
            RouteMatch(((":path", StringMatcher("prefix", f"/{name}/")),)),
        )
        for name in "ab"
    )
    clusters = tuple(
        ClusterConfig(name, (Endpoint(f"10.0.0.{i}", 80),)) for i, name in enumerate("ab", 1)
    )
    proxy = Proxy(config(routes, clusters, codec="http1"), now=0.0)
    wire = b"".join(_KINDS[kind][0] % (name.encode(), i) for i, (kind, name) in enumerate(requests))
    outputs = proxy.handle(Accepted(1, "main"), 0.0) + proxy.handle(DataReceived(1, wire), 0.0)
    upstream = {o.host: o.conn for o in outputs if isinstance(o, OpenUpstream)}
    for conn in upstream.values():
        outputs += proxy.handle(UpstreamConnected(conn), 0.0)
    for i in order:  # each server answers with the request's own number, no Connection field
        conn = upstream[f"10.0.0.{'ab'.index(requests[i][1]) + 1}"]
        outputs += proxy.handle(DataReceived(conn, ok(b"%d" % i)), 0.0)
    to_client = b"".join(o.data for o in outputs if isinstance(o, Write) and o.conn == 1)
    answers = to_client.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert len(answers) == len(requests)
    for i, answer in enumerate(answers):  # in request order, each with its own field
        head, _, body = answer.partition(b"\r\n\r\n")
        assert body == b"%d" % i
        fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n"))
        assert fields.get(b"Connection") == _KINDS[requests[i][0]][1]
    closes = [o for o in outputs if isinstance(o, CloseConnection) and o.conn == 1]
    assert len(closes) == (_KINDS[requests[-1][0]][1] == b"close")
