"""tRPC end to end on every adapter: plain-socket tRPC peers on both sides of the proxy.

Two echo servers (tests/e2e/trpc_peers.py, built on the official protobuf definitions and not
on the codec under test); routes on the ``func`` prefix: ``/trpc.test.alpha.`` to upstream
"a", ``/trpc.test.beta.`` to "b", ``/trpc.test.stream.`` to "a" through a request mutation;
a local rate limit refuses one func; anything else has no route.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from metaprotocol.core.proxy import Proxy
from metaprotocol.testing.serving import RunningProxy, start_proxy
from tests.codecs import trpc_proto as pb
from tests.codecs.vectors import load_vectors
from tests.e2e import trpc_peers as peers
from tests.e2e.servers import DEADLINE, proxy_config
from tests.e2e.trpc_peers import TrpcClient, TrpcEchoServer, echo_server

CLIENTS = 50
CALLS = 200
FRAMES = peers.SERVER_CLOSE_AFTER  # DATA frames each way on a stream
ALPHA = "/trpc.test.alpha.Greeter/SayHello"
BETA = "/trpc.test.beta.Greeter/SayHi"
BLOCKED = "/trpc.test.alpha.Greeter/Blocked"
CHAT = "/trpc.test.stream.Echo/Chat"
SERVER_CLOSES = "/trpc.test.stream.Echo/ServerClose"
ROUTES: list[dict[str, Any]] = [
    {"name": "alpha", "match": {"metadata": {"func": {"prefix": "/trpc.test.alpha."}}},
     "route": {"cluster": "a"}},
    {"name": "beta", "match": {"metadata": {"func": {"prefix": "/trpc.test.beta."}}},
     "route": {"cluster": "b"}},
    {"name": "stream", "match": {"metadata": {"func": {"prefix": "/trpc.test.stream."}}},
     "route": {"cluster": "a", "request_mutation": {"add": {"x-proxy": "metaprotocol"}}}},
]  # fmt: skip
FILTERS: list[Any] = [
    {"local_ratelimit": {
        "token_bucket": {"max_tokens": 100000, "tokens_per_fill": 100000, "fill_interval": "1s"},
        "conditions": [{"match": {"metadata": {"func": {"exact": BLOCKED}}},
                        "token_bucket": {"max_tokens": 0, "tokens_per_fill": 0,
                                         "fill_interval": "1s"}}],
    }},
    "router",
]  # fmt: skip


@pytest.fixture
def servers() -> Iterator[tuple[TrpcEchoServer, TrpcEchoServer]]:
    with echo_server("a") as a, echo_server("b") as b:
        yield a, b


@pytest.fixture
def proxy(adapter: str, servers: tuple[TrpcEchoServer, TrpcEchoServer]) -> Iterator[RunningProxy]:
    a, b = servers
    # Every client's calls may be in flight (and queued for a connection still opening) at
    # once: the circuit breakers are sized for it.
    breakers = {"max_pending_requests": 2 * CLIENTS * CALLS, "max_requests": 2 * CLIENTS * CALLS}
    config = proxy_config(
        "trpc",
        {"a": [a.port], "b": [b.port]},
        ROUTES,
        listener={"filters": FILTERS},
        cluster_options={"circuit_breakers": breakers},
        admin=False,
    )
    with start_proxy(config, adapter) as running:
        yield running


def _eventually(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def _live(running: RunningProxy) -> int:
    """Requests and streams the proxy still holds (read in its own thread)."""
    core = running.proxy
    assert isinstance(core, Proxy)
    count: int = running.call(core.request_count)
    return count


def test_the_peers_build_the_golden_frames() -> None:
    """The test peers write exactly what trpc-go wrote for the same fields."""
    vectors = {v["id"]: bytes.fromhex(v["hex"]) for v in load_vectors("trpc")}
    assert vectors["trpc-090"] == peers.request_frame(
        1, "/trpc.test.helloworld.Greeter/SayHello", bytes.fromhex("0a0568656c6c6f"),
        caller="trpc.app.client.service", callee="trpc.test.helloworld.Greeter", timeout=1000,
        trans_info={"app-key": b"app-value"},
    )  # fmt: skip
    assert vectors["trpc-092"] == peers.request_frame(
        3, "/trpc.test.helloworld.Greeter/Notify", bytes.fromhex("0a0568656c6c6f"),
        caller="trpc.app.client.service", callee="trpc.test.helloworld.Greeter", oneway=True,
    )  # fmt: skip
    assert vectors["trpc-095"] == peers.response_frame(
        1, func_ret=1001, error_msg=b"user not found", trans_info={"app-key": b"app-value"}
    )
    assert vectors["trpc-096"] == peers.init_frame(
        100, "/trpc.test.helloworld.Greeter/SayHello", caller="trpc.app.server.service"
    )
    assert vectors["trpc-112"] == peers.init_frame(
        100, "/trpc.test.helloworld.Greeter/SayHello", caller="trpc.app.server.service",
        trans_info={"key": b"value"},
    )  # fmt: skip
    assert vectors["trpc-100"] == peers.data_frame(100, b"hello world")
    assert vectors["trpc-103"] == peers.close_frame(100)
    assert vectors["trpc-102"] == peers.close_frame(100, reset=True, ret=1, msg="test error")
    # The only FEEDBACK vector has a corrupt fixed header on purpose; its meta is sound.
    assert vectors["trpc-110"][16:] == peers.feedback_frame(100, 10000)[16:]


def _client_calls(port: int, client: int) -> dict[int, tuple[str, bytes]]:
    """200 calls pipelined on one connection, ids 1..200 like every other client."""
    conn = TrpcClient(port, DEADLINE)
    try:
        requests = b"".join(
            peers.request_frame(i, ALPHA if i % 2 else BETA, b"%d-%d" % (client, i))
            for i in range(1, CALLS + 1)
        )
        conn.send(requests)
        replies: dict[int, tuple[str, bytes]] = {}
        for _ in range(CALLS):
            frame = conn.read()
            header = frame.response()
            assert header.request_id not in replies, "two answers for one request"
            assert header.ret == 0, header.error_msg
            replies[header.request_id] = (header.trans_info["server"].decode(), frame.body)
        return replies
    finally:
        conn.close()


def test_many_clients_with_colliding_ids_routed_by_func(
    proxy: RunningProxy, servers: tuple[TrpcEchoServer, TrpcEchoServer]
) -> None:
    port = proxy.ports["trpc"]
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(lambda c: _client_calls(port, c), range(CLIENTS)))
    for client, replies in enumerate(results):
        assert sorted(replies) == list(range(1, CALLS + 1))
        for i, (server, body) in replies.items():
            want = "a" if i % 2 else "b"
            assert (server, body) == (want, b"%s:%d-%d" % (want.encode(), client, i))
    conn = TrpcClient(port, DEADLINE)
    try:
        # An unrouted func and a rate-limited one get tRPC error replies with their ids.
        conn.send(peers.request_frame(777, "/trpc.test.nosuch.Svc/Method"))
        conn.send(peers.request_frame(778, BLOCKED))
        errors = {}
        for _ in range(2):
            header = conn.read().response()
            errors[header.request_id] = (header.ret, header.error_msg)
        assert errors == {777: (11, b"no route matched"), 778: (23, errors[778][1])}
        # Oneway calls reach their server and get no answer; the connection goes on.
        conn.send(b"".join(peers.request_frame(i, ALPHA, oneway=True) for i in range(5)))
        conn.send(peers.request_frame(5, BETA, b"after"))
        frame = conn.read()
        assert (frame.response().request_id, frame.body) == (5, b"b:after")
        _eventually(lambda: servers[0].oneway == 5)
    finally:
        conn.close()
    _eventually(lambda: _live(proxy) == 0)


@pytest.mark.parametrize("closer", ["client", "server", "reset"])
def test_bidirectional_stream_through_a_filter_and_a_route(
    proxy: RunningProxy, servers: tuple[TrpcEchoServer, TrpcEchoServer], closer: str
) -> None:
    a, b = servers
    sid = 1
    conn = TrpcClient(proxy.ports["trpc"], DEADLINE)
    try:
        func = SERVER_CLOSES if closer == "server" else CHAT
        conn.send(peers.init_frame(sid, func, caller="tests", trans_info={"tenant": b"t1"}))
        answer = conn.read()
        assert (answer.stream_type, answer.stream_id) == (peers.INIT, sid)
        assert answer.meta(pb.InitMeta).response_meta.ret == 0
        # The INIT reached upstream "a" through the route's mutation, trans_info intact.
        assert len(a.inits) == 1 and not b.inits
        assert dict(a.inits[0].trans_info) == {"tenant": b"t1", "x-proxy": b"metaprotocol"}
        echoed: list[bytes] = []
        server_feedback = 0
        for batch in range(0, FRAMES, peers.FEEDBACK_EVERY):  # a window's worth at a time
            window = range(batch, batch + peers.FEEDBACK_EVERY)
            conn.send(b"".join(peers.data_frame(sid, b"%d" % i) for i in window))
            while len(echoed) < window.stop:
                frame = conn.read()
                assert frame.stream_id == sid
                if frame.stream_type == peers.FEEDBACK:
                    server_feedback += 1
                    assert frame.meta(pb.FeedBackMeta).window_size_increment > 0
                    continue
                assert frame.stream_type == peers.DATA
                echoed.append(frame.body)
            if window.stop < FRAMES:  # the client's window update for what it read
                conn.send(peers.feedback_frame(sid, peers.FEEDBACK_EVERY * 64))
        assert echoed == [b"%d" % i for i in range(FRAMES)]  # in order, each once
        if server_feedback < FRAMES // peers.FEEDBACK_EVERY:  # the last one follows the data
            frame = conn.read()
            assert frame.stream_type == peers.FEEDBACK
            server_feedback += 1
        assert server_feedback == FRAMES // peers.FEEDBACK_EVERY
        _eventually(lambda: a.feedback == FRAMES // peers.FEEDBACK_EVERY - 1)
        if closer == "reset":
            conn.send(peers.close_frame(sid, reset=True, ret=1, msg="enough"))
            _eventually(lambda: len(a.client_closes) == 1)
            assert a.client_closes[0].close_type == 1
        else:
            if closer == "client":
                conn.send(peers.close_frame(sid))
            end = conn.read()
            assert (end.stream_type, end.stream_id) == (peers.CLOSE, sid)
            assert end.meta(pb.CloseMeta).ret == 0
            if closer == "server":
                conn.send(peers.close_frame(sid))  # the client's side, after the server's
        _eventually(lambda: _live(proxy) == 0)  # the stream's state is gone on every side
        # The connection is still good, and nothing else arrived for the stream.
        conn.send(peers.request_frame(sid, ALPHA, b"unary after the stream"))
        frame = conn.read()
        assert (frame.data_type, frame.response().request_id) == (peers.UNARY, sid)
        assert frame.body == b"a:unary after the stream"
    finally:
        conn.close()
