"""Pipelined Redis commands merged into one message (the codec's ``decode_many``).

Without observers (the production setting) a run of plain pipelined commands that take
the same route travels as one merged message: one upstream write, one answer write. These
playbooks check that nothing about the answers changes: order, one answer per command,
error replies for each command still owed, counters per command, and clean state.
"""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from metaprotocol.codecs.redis.commands import refusal_reason
from metaprotocol.core.config import (
    CircuitBreakers,
    ClusterConfig,
    Endpoint,
    RouteAction,
    RouteConfig,
    RouteMatch,
    StringMatcher,
)
from metaprotocol.core.events import (
    Accepted,
    Closed,
    DataReceived,
    UpstreamConnected,
)
from metaprotocol.core.outputs import (
    CloseConnection,
    OpenUpstream,
    ReadDisable,
    ReadEnable,
    Write,
)
from metaprotocol.core.proxy import Proxy
from metaprotocol.testing.playbook import Playbook

from .helpers import UP, bulk, cmd, config

SESSIONS_UP = ("10.0.0.2", 9000)


def two_clusters(**listener: object) -> Proxy:
    """Keys starting with ``session:`` go to the ``sessions`` cluster, the rest to ``main``."""
    routes = (
        RouteConfig(
            "sessions",
            RouteAction(cluster="sessions"),
            RouteMatch((("key", StringMatcher("prefix", "session:")),)),
        ),
        RouteConfig("default", RouteAction(cluster="main")),
    )
    clusters = (
        ClusterConfig("main", (Endpoint(*UP),)),
        ClusterConfig("sessions", (Endpoint(*SESSIONS_UP),)),
    )
    cfg = config(routes, clusters, codec="redis", **listener)  # type: ignore[arg-type]
    return Proxy(cfg, now=0.0, observe=False)


def counters(proxy: Proxy) -> dict[str, int]:
    c = proxy.runtime.listeners["main"].counters
    names = ("request", "response", "response_success", "response_error")
    values = {name: getattr(c, name) for name in names}
    values["local_response_error"] = c.local_response_error
    return values


def connected(pb: Playbook, first: bytes) -> None:
    """Client 1 connected, ``first`` sent, upstream -1 opened and connected."""
    pb >> Accepted(1, "main") >> DataReceived(1, first)
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, first)


def test_a_pipeline_travels_as_one_write_each_way_and_counts_every_command() -> None:
    proxy = two_clusters()
    pb = Playbook(proxy)
    connected(pb, cmd("GET", "warm"))
    pb >> DataReceived(-1, bulk("w"))
    pb << Write(1, bulk("w"))
    pipeline = cmd("SET", "a", "1") + cmd("GET", "a") + cmd("INCR", "n") + cmd("PING")
    pb >> DataReceived(1, pipeline)
    pb << Write(-1, pipeline)
    pb >> DataReceived(-1, b"+OK\r\n" + bulk("1") + b":5\r\n+PONG\r\n")
    pb << Write(1, b"+OK\r\n" + bulk("1") + b":5\r\n+PONG\r\n")
    assert counters(proxy) == {
        "request": 5,
        "response": 5,
        "response_success": 5,
        "response_error": 0,
        "local_response_error": 0,
    }
    assert proxy.runtime.listeners["main"].route_counters["default"].route_hit == 5
    assert proxy.runtime.listeners["main"].counters.request_merged == 4  # not the first GET
    assert proxy.runtime.listeners["main"].duration.count == 5
    pb >> Closed(1) >> Closed(-1)
    pb.assert_clean()


def test_a_change_of_route_ends_the_merged_run() -> None:
    pb = Playbook(two_clusters())
    pb >> Accepted(1, "main")
    pb >> DataReceived(
        1, cmd("GET", "a") + cmd("GET", "b") + cmd("GET", "session:1") + cmd("GET", "c")
    )
    pb << OpenUpstream(-1, *UP) << OpenUpstream(-2, *SESSIONS_UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, cmd("GET", "a") + cmd("GET", "b") + cmd("GET", "c"))
    pb >> UpstreamConnected(-2)
    pb << Write(-2, cmd("GET", "session:1"))
    pb >> DataReceived(-1, bulk("A") + bulk("B") + bulk("C"))  # C waits behind the session
    pb << Write(1, bulk("A") + bulk("B"))
    pb >> DataReceived(-2, bulk("S"))
    pb << Write(1, bulk("S") + bulk("C"))
    pb >> Closed(1) >> Closed(-1) >> Closed(-2)
    pb.assert_clean()


def test_answers_arriving_in_pieces_reach_the_client_in_order() -> None:
    pb = Playbook(two_clusters())
    connected(pb, cmd("GET", "a") + cmd("GET", "b") + cmd("GET", "c"))
    pb >> DataReceived(-1, bulk("A") + b"$1\r")
    pb << None  # one answer of three: kept until the merged message is complete
    pb >> DataReceived(-1, b"\nB\r\n")
    pb << None
    pb >> DataReceived(-1, b"-ERR wrong type\r\n")
    pb << Write(1, bulk("A") + bulk("B") + b"-ERR wrong type\r\n")
    pb >> Closed(1) >> Closed(-1)
    pb.assert_clean()


def test_answers_of_other_kinds_are_framed_one_by_one() -> None:
    proxy = two_clusters()
    pb = Playbook(proxy)
    connected(pb, cmd("LRANGE", "a", "0", "-1") + cmd("HGETALL", "h") + cmd("GET", "c"))
    array = b"*2\r\n" + bulk("A") + b"$-1\r\n"
    pb >> DataReceived(-1, array + b"*0\r\n" + b"$-1\r\n")
    pb << Write(1, array + b"*0\r\n" + b"$-1\r\n")
    assert counters(proxy)["response"] == 3
    pb >> Closed(1) >> Closed(-1)
    pb.assert_clean()


def test_an_upstream_reset_answers_every_command_still_owed() -> None:
    proxy = two_clusters()
    pb = Playbook(proxy)
    connected(pb, cmd("GET", "a") + cmd("GET", "b") + cmd("GET", "c"))
    pb >> DataReceived(-1, bulk("A"))
    pb << None
    pb >> Closed(-1)
    reset = b"-ERR upstream connection reset: upstream connection closed\r\n"
    pb << Write(1, bulk("A") + reset + reset)
    assert counters(proxy) == {
        "request": 3,
        "response": 1,
        "response_success": 1,
        "response_error": 0,
        "local_response_error": 2,
    }
    pb >> Closed(1)
    pb.assert_clean()


def test_a_timeout_answers_every_command_and_resets_the_upstream() -> None:
    pb = Playbook(two_clusters(request_timeout=1.0))
    connected(pb, cmd("GET", "a") + cmd("GET", "b"))
    pb.tick(1.5)
    timeout = b"-ERR upstream request timeout: request timed out\r\n"
    pb << CloseConnection(-1, flush=False)
    pb << Write(1, timeout + timeout)
    pb >> Closed(1)
    pb.assert_clean()


def test_a_merged_message_counts_each_command_against_max_pending_requests() -> None:
    pb = Playbook(two_clusters(max_pending_requests=2))
    connected(pb, cmd("GET", "a") + cmd("GET", "b"))
    pb >> DataReceived(1, cmd("GET", "c"))
    pb << ReadDisable(1)  # two commands pending: the limit
    pb >> DataReceived(-1, bulk("A") + bulk("B"))
    pb << Write(1, bulk("A") + bulk("B"))
    pb << ReadEnable(1)
    pb << Write(-1, cmd("GET", "c"))
    pb >> DataReceived(-1, bulk("C"))
    pb << Write(1, bulk("C"))
    pb >> Closed(1) >> Closed(-1)
    pb.assert_clean()


def test_a_client_leaving_mid_pipeline_closes_the_upstream_it_alone_used() -> None:
    pb = Playbook(two_clusters())
    connected(pb, cmd("GET", "a") + cmd("GET", "b") + cmd("GET", "c"))
    pb >> DataReceived(-1, bulk("A"))
    pb >> Closed(1)
    pb << CloseConnection(-1, flush=False)
    pb.assert_clean()


def test_a_refused_command_in_a_pipeline_is_answered_in_its_place() -> None:
    pb = Playbook(two_clusters())
    pb >> Accepted(1, "main")
    pb >> DataReceived(
        1, cmd("GET", "a") + cmd("GET", "b") + cmd("MULTI") + cmd("GET", "c") + cmd("GET", "d")
    )
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, cmd("GET", "a") + cmd("GET", "b") + cmd("GET", "c") + cmd("GET", "d"))
    pb >> DataReceived(-1, bulk("A") + bulk("B") + bulk("C") + bulk("D"))
    refused = b"-ERR " + refusal_reason("MULTI").encode() + b"\r\n"
    pb << Write(1, bulk("A") + bulk("B") + refused)  # the refusal, in its place
    pb << Write(1, bulk("C") + bulk("D"))
    pb >> Closed(1) >> Closed(-1)
    pb.assert_clean()


# -- property: merging never changes what a client receives ------------------------------

_COMMANDS = st.sampled_from(
    [
        ("GET", "k"),
        ("SET", "k", "v"),
        ("GET", "session:9"),
        ("PING",),
        ("INCR", "counter"),
        ("MULTI",),  # refused by the proxy, answered in its place
        ("GET", "x" * 120),  # a three-digit length
    ]
)


def _server_reply(serial: int) -> bytes:
    """A distinct answer per command (of the kinds merged and not), so any reordering shows."""
    if serial % 7 == 6:
        return b"*2\r\n" + bulk(f"a{serial}") + b"$-1\r\n"
    if serial % 5 == 4:
        return b"-ERR number %d\r\n" % serial
    if serial % 3 == 2:
        return b":%d\r\n" % serial
    return bulk(f"reply-{serial}")


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def _frames(data: bytes) -> int:
    """How many multibulk commands ``data`` holds."""
    n = pos = 0
    while pos < len(data):
        eol = data.index(b"\r\n", pos)
        elements = int(data[pos + 1 : eol])
        pos = eol + 2
        for _ in range(elements):
            eol = data.index(b"\r\n", pos)
            pos = eol + 2 + int(data[pos + 1 : eol]) + 2
        n += 1
    return n


@settings(max_examples=150, deadline=None)
@given(
    commands=st.lists(_COMMANDS, min_size=1, max_size=30),
    client_cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=6),
    server_cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=6),
    limit=st.integers(min_value=1, max_value=40),
)
def test_merging_never_changes_the_answers(
    commands: list[tuple[str, ...]], client_cuts: list[int], server_cuts: list[int], limit: int
) -> None:
    """Any pipeline, cut anywhere, answered in any pieces by two servers: the client gets
    one answer per command, in order, and the proxy is clean afterwards."""
    proxy = two_clusters(max_pending_requests=limit)
    received = bytearray()
    sent: dict[int, bytearray] = {}  # upstream conn -> bytes the proxy wrote to it
    host: dict[int, tuple[str, int]] = {}
    answers: dict[tuple[str, int], list[bytes]] = {UP: [], SESSIONS_UP: []}
    serial = 0

    def run(event: object) -> None:
        for out in proxy.handle(event, 0.0):  # type: ignore[arg-type]
            if isinstance(out, OpenUpstream):
                sent[out.conn] = bytearray()
                host[out.conn] = (out.host, out.port)
                opened.append(out.conn)
            elif isinstance(out, Write):
                (received if out.conn == 1 else sent[out.conn]).extend(out.data)

    def serve() -> None:
        """Each server answers every command it got so far, in pieces."""
        nonlocal serial
        while opened:
            run(UpstreamConnected(opened.pop(0)))
        for conn, data in list(sent.items()):
            if not data:
                continue
            reply = b""
            for _ in range(_frames(bytes(data))):
                one = _server_reply(serial)
                serial += 1
                answers[host[conn]].append(one)
                reply += one
            data.clear()
            for piece in _split(reply, server_cuts):
                run(DataReceived(conn, piece))

    opened: list[int] = []
    run(Accepted(1, "main"))
    for chunk in _split(b"".join(cmd(*c) for c in commands), client_cuts):
        run(DataReceived(1, chunk))
        serve()
    while any(sent.values()) or opened:  # requests held back by max_pending_requests
        serve()

    expected = b""
    for command in commands:
        if command[0] == "MULTI":
            expected += b"-ERR " + refusal_reason("MULTI").encode() + b"\r\n"
        elif len(command) > 1 and command[1].startswith("session:"):
            expected += answers[SESSIONS_UP].pop(0)
        else:
            expected += answers[UP].pop(0)
    assert bytes(received) == expected
    c = counters(proxy)
    forwarded = sum(1 for command in commands if command[0] != "MULTI")
    assert c["request"] == forwarded
    assert c["response"] == forwarded
    for conn in [1, *sent]:
        run(Closed(conn))
    assert proxy.request_count() == 0
    assert not proxy.downstreams and not proxy.upstreams


def test_a_merged_run_stops_at_the_circuit_breaker_like_single_requests_do() -> None:
    breakers = CircuitBreakers(max_requests=3)
    routes = (RouteConfig("default", RouteAction(cluster="main")),)
    clusters = (ClusterConfig("main", (Endpoint(*UP),), circuit_breakers=breakers),)
    proxy = Proxy(config(routes, clusters, codec="redis"), now=0.0, observe=False)
    pb = Playbook(proxy)
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, b"".join(cmd("GET", k) for k in "abcde"))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, cmd("GET", "a") + cmd("GET", "b") + cmd("GET", "c"))
    pb >> DataReceived(-1, bulk("A") + bulk("B") + bulk("C"))
    over = b"-ERR rate limit exceeded: cluster max_requests reached\r\n"
    pb << Write(1, bulk("A") + bulk("B") + bulk("C") + over + over)
    pb >> Closed(1) >> Closed(-1)
    pb.assert_clean()
