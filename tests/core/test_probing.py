"""core/probing.py: probe sessions as traces of instructions in and events out."""

from __future__ import annotations

from collections.abc import Iterator

from metaprotocol.codecs.dubbo import DubboCodec
from metaprotocol.codecs.http1 import Http1Codec
from metaprotocol.codecs.redis import RedisCodec
from metaprotocol.codecs.thrift import ThriftCodec
from metaprotocol.core.codec import CodecFactory
from metaprotocol.core.config import (
    ClusterConfig,
    ClusterTls,
    Endpoint,
    HealthCheck,
    HealthCheckRequest,
)
from metaprotocol.core.health import EndpointHealth, HealthChange
from metaprotocol.core.outputs import CloseConnection, OpenUpstream, Write
from metaprotocol.core.probing import HealthProber, ProbeTarget
from metaprotocol.core.secrets import Credentials, Secret
from tests.codecs.vectors import load_vectors

A, B = Endpoint("10.0.0.1", 6379), Endpoint("10.0.0.2", 6379)
PING = b"*1\r\n$4\r\nPING\r\n"
PONG = b"+PONG\r\n"
CHECK = HealthCheck(interval=5.0, timeout=1.0, unhealthy_threshold=2, healthy_threshold=2)
PENDING, HEALTHY, UNHEALTHY = (
    EndpointHealth.PENDING,
    EndpointHealth.HEALTHY,
    EndpointHealth.UNHEALTHY,
)
DUBBO = {v["id"]: bytes.fromhex(v["hex"]) for v in load_vectors("dubbo")}


def _ids() -> Iterator[int]:
    n = -1
    while True:
        yield n
        n -= 1


def _prober() -> HealthProber:
    ids = _ids()
    return HealthProber(lambda: next(ids))


def _target(
    codec: CodecFactory | None = RedisCodec,
    *endpoints: Endpoint,
    check: HealthCheck = CHECK,
    **cluster: object,
) -> ProbeTarget:
    endpoints = endpoints or (A,)
    config = ClusterConfig("cache", endpoints, health_check=check, **cluster)  # type: ignore[arg-type]
    return ProbeTarget(config, endpoints, codec)


def _changes(prober: HealthProber) -> list[tuple[EndpointHealth, EndpointHealth]]:
    found = [(c.before, c.after) for _, c in prober.changes]
    prober.changes.clear()
    return found


def test_a_redis_probe_pings_on_its_own_connection_and_reuses_it() -> None:
    prober = _prober()
    assert prober.configure({"cache": _target()}, now=0.0) == []
    assert prober.next_deadline() == 0.0  # the first probe is due at once
    assert prober.tick(0.0) == [OpenUpstream(-1, "10.0.0.1", 6379, None)]
    assert prober.owns(-1) and prober.next_deadline() == 1.0  # the timeout
    assert prober.connected(-1, 0.01) == [Write(-1, PING)]
    assert prober.data(-1, PONG[:3], 0.02) == []
    assert prober.data(-1, PONG[3:], 0.02) == []
    assert prober.changes == [("cache", HealthChange(A, PENDING, HEALTHY))]
    assert prober.next_deadline() == 5.0
    assert prober.tick(4.9) == []
    assert prober.tick(5.0) == [Write(-1, PING)]  # the same connection, still open
    counters = prober.counters("cache")
    assert counters is not None and (counters.attempts, counters.passed) == (2, 1)


def test_timeouts_take_an_endpoint_out_and_passes_bring_it_back() -> None:
    prober = _prober()
    prober.configure({"cache": _target()}, 0.0)
    prober.tick(0.0)
    prober.connected(-1, 0.0)
    prober.data(-1, PONG, 0.0)
    _changes(prober)
    assert prober.tick(5.0) == [Write(-1, PING)]
    # No answer within the timeout: a failure, and the connection (in an unknown state) closes.
    assert prober.tick(6.0) == [CloseConnection(-1, flush=False)]
    assert not prober.owns(-1) and _changes(prober) == []  # 1 of 2 failures
    assert prober.tick(10.0) == [OpenUpstream(-2, "10.0.0.1", 6379, None)]
    assert prober.tick(11.0) == [CloseConnection(-2, flush=False)]  # the connect timed out
    assert _changes(prober) == [(HEALTHY, UNHEALTHY)]
    table = prober.table("cache")
    assert table is not None and table.health(A) is UNHEALTHY
    assert prober.next_deadline() == 15.0


def test_two_passes_in_a_row_make_an_unhealthy_endpoint_healthy() -> None:
    prober = _prober()
    prober.configure({"cache": _target()}, 0.0)
    prober.tick(0.0)
    assert prober.connect_failed(-1, 0.1) == []
    assert _changes(prober) == [(PENDING, UNHEALTHY)]
    prober.tick(5.0)
    prober.connected(-2, 5.0)
    prober.data(-2, PONG, 5.0)
    assert _changes(prober) == []
    prober.tick(10.0)
    prober.data(-2, PONG, 10.0)
    assert _changes(prober) == [(UNHEALTHY, HEALTHY)]


def test_a_wrong_answer_fails_and_closes_the_connection() -> None:
    prober = _prober()
    prober.configure({"cache": _target()}, 0.0)
    prober.tick(0.0)
    prober.connected(-1, 0.0)
    assert prober.data(-1, b"-LOADING Redis is loading\r\n", 0.0) == [
        CloseConnection(-1, flush=False)
    ]
    assert _changes(prober) == [(PENDING, UNHEALTHY)]


def test_undecodable_bytes_fail_the_probe() -> None:
    prober = _prober()
    prober.configure({"cache": _target()}, 0.0)
    prober.tick(0.0)
    prober.connected(-1, 0.0)
    assert prober.data(-1, b"?garbage\r\n", 0.0) == [CloseConnection(-1, flush=False)]
    assert _changes(prober) == [(PENDING, UNHEALTHY)]


def test_the_server_closing_mid_probe_fails_it_and_while_idle_does_not() -> None:
    prober = _prober()
    prober.configure({"cache": _target()}, 0.0)
    prober.tick(0.0)
    prober.connected(-1, 0.0)
    prober.data(-1, PONG, 0.0)
    _changes(prober)
    # Closed between probes (an idle timeout on the server): no verdict, a new one next time.
    assert prober.closed(-1, 1.0) == [CloseConnection(-1, flush=False)]
    assert _changes(prober) == [] and not prober.owns(-1)
    assert prober.tick(5.0) == [OpenUpstream(-2, "10.0.0.1", 6379, None)]
    prober.connected(-2, 5.0)
    prober.closed(-2, 5.1)
    table = prober.table("cache")
    assert table is not None and table.health(A) is HEALTHY  # 1 of 2 failures
    counters = prober.counters("cache")
    assert counters is not None and counters.failed == 1


def test_a_cluster_login_goes_first_on_the_probe_connection() -> None:
    auth = Credentials(Secret("pw"), "app")
    prober = _prober()
    prober.configure({"cache": _target(auth=auth)}, 0.0)
    prober.tick(0.0)
    (write,) = prober.connected(-1, 0.0)
    assert write == Write(-1, b"*3\r\n$4\r\nAUTH\r\n$3\r\napp\r\n$2\r\npw\r\n" + PING)
    prober.data(-1, b"+OK\r\n" + PONG, 0.0)  # the login's answer is the codec's
    assert _changes(prober) == [(PENDING, HEALTHY)]


def test_a_refused_login_is_a_failed_probe() -> None:
    prober = _prober()
    prober.configure({"cache": _target(auth=Credentials(Secret("bad")))}, 0.0)
    prober.tick(0.0)
    prober.connected(-1, 0.0)
    out = prober.data(-1, b"-WRONGPASS invalid username-password pair\r\n", 0.0)
    assert out == [CloseConnection(-1, flush=False)]
    assert _changes(prober) == [(PENDING, UNHEALTHY)]


def test_codecs_without_a_probe_are_checked_by_connecting_over_the_clusters_tls() -> None:
    tls = ClusterTls(server_name="thrift.internal")
    for codec in (ThriftCodec, None):
        prober = _prober()
        prober.configure({"t": _target(codec, tls=tls)}, 0.0)
        assert prober.tick(0.0) == [OpenUpstream(-1, "10.0.0.1", 6379, tls)]
        assert prober.connected(-1, 0.0) == [CloseConnection(-1, flush=False)]
        assert _changes(prober) == [(PENDING, HEALTHY)]
        assert prober.tick(5.0) == [OpenUpstream(-2, "10.0.0.1", 6379, tls)]


def test_dubbo_answers_the_providers_heartbeat_and_waits_for_its_own() -> None:
    prober = _prober()
    prober.configure({"d": _target(DubboCodec)}, 0.0)
    prober.tick(0.0)
    assert prober.connected(-1, 0.0) == [Write(-1, DUBBO["dubbo-008"])]  # Java's heartbeat, id 1
    provider_heartbeat = DUBBO["dubbo-024"]  # a heartbeat request (id 6) from the provider
    (reply,) = prober.data(-1, provider_heartbeat, 0.1)
    assert isinstance(reply, Write) and reply.data[2] == 0x22  # an event response
    assert _changes(prober) == []
    assert prober.data(-1, DUBBO["dubbo-009"], 0.2) == []  # Java's answer to id 1
    assert _changes(prober) == [(PENDING, HEALTHY)]


def test_http_probes_ask_the_path_with_the_endpoints_authority_by_default() -> None:
    prober = _prober()
    check = HealthCheck(request=HealthCheckRequest("/healthz"))
    prober.configure({"web": _target(Http1Codec, Endpoint("10.0.0.9", 8080), check=check)}, 0.0)
    prober.tick(0.0)
    (write,) = prober.connected(-1, 0.0)
    assert isinstance(write, Write)
    assert write.data.startswith(b"GET /healthz HTTP/1.1\r\nHost: 10.0.0.9:8080\r\n")
    answer = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
    assert prober.data(-1, answer, 0.1) == [CloseConnection(-1, flush=False)]
    assert _changes(prober) == [(PENDING, UNHEALTHY)]


def test_new_endpoint_sets_keep_remaining_sessions_and_close_removed_ones() -> None:
    prober = _prober()
    prober.configure({"cache": _target(RedisCodec, A, B)}, 0.0)
    assert prober.tick(0.0) == [
        OpenUpstream(-1, "10.0.0.1", 6379, None),
        OpenUpstream(-2, "10.0.0.2", 6379, None),
    ]
    for conn in (-1, -2):
        prober.connected(conn, 0.0)
        prober.data(conn, PONG, 0.0)
    C = Endpoint("10.0.0.3", 6379)
    out = prober.configure({"cache": _target(RedisCodec, B, C)}, 1.0)
    assert out == [CloseConnection(-1, flush=False)]
    table = prober.table("cache")
    assert table is not None and table.snapshot() == {B: HEALTHY, C: PENDING}
    assert prober.tick(1.0) == [OpenUpstream(-3, "10.0.0.3", 6379, None)]  # only the new one
    prober.connected(-3, 1.0)
    prober.data(-3, PONG, 1.0)
    assert prober.tick(5.0) == [Write(-2, PING)]  # B's connection and pace carried over
    # Probed another way (a new timeout): everything starts over.
    other = HealthCheck(interval=5.0, timeout=2.0)
    out = prober.configure({"cache": _target(RedisCodec, B, C, check=other)}, 5.5)
    assert out == [CloseConnection(-2, flush=False), CloseConnection(-3, flush=False)]
    table = prober.table("cache")
    assert table is not None and table.snapshot() == {B: PENDING, C: PENDING}
    # A cluster no longer listed (or without a health check) stops being probed.
    prober.tick(6.0)
    out = prober.configure({}, 7.0)
    assert out == [CloseConnection(-4, flush=False), CloseConnection(-5, flush=False)]
    assert prober.table("cache") is None and prober.next_deadline() is None
