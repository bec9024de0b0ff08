"""Playbooks for routing and traffic policy: retries, mirrors, mutation, breakers, outliers,
rate limits, faults, weighted clusters and route-table swaps (issue 3)."""

from __future__ import annotations

from dataclasses import replace

from metaprotocol.core.config import (
    CircuitBreakers,
    ClusterConfig,
    Endpoint,
    FaultConfig,
    GlobalRateLimitConfig,
    LocalRateLimitCondition,
    LocalRateLimitConfig,
    MirrorPolicy,
    OutlierDetection,
    RetryPolicy,
    RouteAction,
    RouteMatch,
    StringMatcher,
    TokenBucket,
    WeightedCluster,
)
from metaprotocol.core.events import (
    Accepted,
    Closed,
    DataReceived,
    ExternalCallCompleted,
    UpstreamConnected,
    UpstreamConnectFailed,
)
from metaprotocol.core.message import ErrorType, Mutation
from metaprotocol.core.outputs import CloseConnection, ExternalCall, OpenUpstream, Write
from metaprotocol.testing import Playbook

from .helpers import UP, config, error_reply, playbook, req, resp, route

A = ("10.0.0.1", 9000)
B = ("10.0.0.2", 9000)
TWO = (ClusterConfig("main", (Endpoint(*A), Endpoint(*B))),)


def close_all(pb: Playbook, *conns: int) -> None:
    for conn in conns:
        pb >> Closed(conn)
    pb << None
    pb.assert_clean()


def test_retry_on_connect_failure_lands_on_the_other_endpoint() -> None:
    action = RouteAction(cluster="main", retries=RetryPolicy(attempts=1))
    pb = playbook(config(routes=(route(action=action),), clusters=TWO))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(-1, *B)  # round robin starts at the second endpoint
    pb >> UpstreamConnectFailed(-1, "refused")
    pb << OpenUpstream(-2, *A)  # the retry avoids the endpoint that failed
    pb >> UpstreamConnected(-2)
    pb << Write(-2, req(1))
    pb >> DataReceived(-2, resp(1))
    pb << Write(1, resp(1))
    assert pb.proxy.stats.counter("upstream_rq_retry", (("cluster", "main"),)) == 1
    close_all(pb, 1, -2)


def test_retry_on_timeout_then_late_response_from_first_try_dropped() -> None:
    retry = RetryPolicy(attempts=1, retry_on=frozenset({"timeout"}))
    action = RouteAction(cluster="main", timeout=1.0, retries=retry)
    pb = playbook(config(routes=(route(action=action),), clusters=TWO))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(-1, *B)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, req(1))
    pb.tick(1.0)
    pb << OpenUpstream(-2, *A)
    pb >> UpstreamConnected(-2)
    pb << Write(-2, req(1))
    pb >> DataReceived(-1, resp(1, b"late"))
    pb << None
    pb >> DataReceived(-2, resp(1, b"second"))
    pb << Write(1, resp(1, b"second"))
    close_all(pb, 1, -1, -2)


def test_retries_exhausted_give_one_error_reply() -> None:
    action = RouteAction(cluster="main", retries=RetryPolicy(attempts=1))
    pb = playbook(config(routes=(route(action=action),), clusters=TWO))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(-1, *B)
    pb >> UpstreamConnectFailed(-1, "refused")
    pb << OpenUpstream(-2, *A)
    pb >> UpstreamConnectFailed(-2, "refused again")
    pb << Write(1, error_reply(1, "connect_failure", "connect failed", 8))
    close_all(pb, 1)


def test_oneway_is_never_retried() -> None:
    from .helpers import oneway

    action = RouteAction(cluster="main", retries=RetryPolicy(attempts=3))
    pb = playbook(config(routes=(route(action=action),), clusters=TWO))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, oneway(1))
    pb << OpenUpstream(-1, *B)
    pb >> UpstreamConnectFailed(-1, "refused")
    pb << None
    close_all(pb, 1)


def test_mirror_failure_is_invisible_to_the_client() -> None:
    clusters = (
        ClusterConfig("main", (Endpoint(*A),)),
        ClusterConfig("shadow", (Endpoint(*B),)),
    )
    action = RouteAction(cluster="main", mirror=(MirrorPolicy("shadow", 1.0),))
    pb = playbook(config(routes=(route(action=action),), clusters=clusters))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(-1, *B)  # the mirror copy
    pb << OpenUpstream(-2, *A)
    pb >> UpstreamConnectFailed(-1, "refused")
    pb << None  # nothing reaches the client
    pb >> UpstreamConnected(-2)
    pb << Write(-2, req(1))
    pb >> DataReceived(-2, resp(1))
    pb << Write(1, resp(1))
    assert pb.proxy.stats.counter("mirror_failed", (("listener", "main"),)) == 1
    close_all(pb, 1, -2)


def test_mirror_response_is_discarded() -> None:
    clusters = (
        ClusterConfig("main", (Endpoint(*A),)),
        ClusterConfig("shadow", (Endpoint(*B),)),
    )
    action = RouteAction(cluster="main", mirror=(MirrorPolicy("shadow", 1.0),))
    pb = playbook(config(routes=(route(action=action),), clusters=clusters))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(-1, *B)
    pb << OpenUpstream(-2, *A)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, req(1))
    pb >> DataReceived(-1, resp(1, b"shadow"))
    pb << None
    pb >> UpstreamConnected(-2)
    pb << Write(-2, req(1))
    pb >> DataReceived(-2, resp(1, b"real"))
    pb << Write(1, resp(1, b"real"))
    close_all(pb, 1, -1, -2)


def test_request_and_response_mutation_applied_by_the_codec() -> None:
    from metaprotocol.codecs.lengthprefixed import build_frame

    action = RouteAction(
        cluster="main",
        request_mutation=Mutation(add=(("x-proxy", "mp"),), remove=("secret",)),
        response_mutation=Mutation(add=(("served-by", "mp"),)),
    )
    pb = playbook(config(routes=(route(action=action),)))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, build_frame(1, 1, {"secret": "s", "keep": "k"}, b"body"))
    pb << OpenUpstream(-1, *A)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, build_frame(1, 1, {"keep": "k", "x-proxy": "mp"}, b"body"))
    pb >> DataReceived(-1, build_frame(2, 1, {}, b"ok"))
    pb << Write(1, build_frame(2, 1, {"served-by": "mp"}, b"ok"))
    close_all(pb, 1, -1)


def test_circuit_breaker_overflow_reply() -> None:
    breakers = CircuitBreakers(max_requests=2)
    clusters = (ClusterConfig("main", (Endpoint(*A),), circuit_breakers=breakers),)
    pb = playbook(config(clusters=clusters))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1) + req(2) + req(3))
    pb << OpenUpstream(-1, *A)
    pb << Write(1, error_reply(3, "over_limit", "cluster max_requests reached", 5))
    pb >> UpstreamConnected(-1)
    pb << Write(-1, req(1) + req(2))
    assert pb.proxy.stats.counter("upstream_rq_pending_overflow", (("cluster", "main"),)) == 1
    pb >> DataReceived(-1, resp(1) + resp(2))
    pb << Write(1, resp(1))
    pb << Write(1, resp(2))
    close_all(pb, 1, -1)


def test_outlier_ejected_then_restored_after_its_time() -> None:
    od = OutlierDetection(consecutive_failures=1, base_ejection_time=10.0, max_ejection_percent=50)
    clusters = (ClusterConfig("main", (Endpoint(*A), Endpoint(*B)), outlier_detection=od),)
    pb = playbook(config(clusters=clusters))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(-1, *B)
    pb >> UpstreamConnectFailed(-1, "refused")  # B ejected for 10s
    pb << Write(1, error_reply(1, "connect_failure", "connect failed", 8))
    pb >> DataReceived(1, req(2) + req(3))
    pb << OpenUpstream(-2, *A)  # both go to A while B is out
    pb >> UpstreamConnected(-2)
    pb << Write(-2, req(2) + req(3))
    pb >> DataReceived(-2, resp(2) + resp(3))
    pb << Write(1, resp(2))
    pb << Write(1, resp(3))
    pb.tick(10.0)
    pb >> DataReceived(1, req(4) + req(5))
    pb << Write(-2, req(4))
    pb << OpenUpstream(-3, *B)  # restored: round robin reaches B again
    pb >> UpstreamConnected(-3)
    pb << Write(-3, req(5))
    pb >> DataReceived(-3, resp(5))
    pb << Write(1, resp(5))
    pb >> DataReceived(-2, resp(4))
    pb << Write(1, resp(4))
    assert pb.proxy.stats.counter("outlier_ejection", (("cluster", "main"),)) == 1
    close_all(pb, 1, -2, -3)


def test_outlier_never_ejects_past_max_percent() -> None:
    od = OutlierDetection(consecutive_failures=1, base_ejection_time=10.0, max_ejection_percent=0)
    clusters = (ClusterConfig("main", (Endpoint(*A),), outlier_detection=od),)
    pb = playbook(config(clusters=clusters))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(-1, *A)
    pb >> UpstreamConnectFailed(-1, "refused")
    pb << Write(1, error_reply(1, "connect_failure", "connect failed", 8))
    pb >> DataReceived(1, req(2))
    pb << OpenUpstream(-2, *A)  # still picked: never eject the last one
    close_all(pb, 1, -2)


def test_local_rate_limit_over_limit_reply_while_others_pass() -> None:
    rl = LocalRateLimitConfig(
        token_bucket=TokenBucket(max_tokens=10, tokens_per_fill=10, fill_interval=1.0),
        conditions=(
            LocalRateLimitCondition(
                RouteMatch((("method", StringMatcher("exact", "flush")),)),
                TokenBucket(max_tokens=1, tokens_per_fill=1, fill_interval=1.0),
            ),
        ),
    )
    pb = playbook(config(filters=(rl,)))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1, method="flush") + req(2, method="flush") + req(3, method="get"))
    pb << OpenUpstream(-1, *A)
    pb << Write(1, error_reply(2, "over_limit", "local rate limit exceeded", 5))
    pb >> UpstreamConnected(-1)
    pb << Write(-1, req(1, method="flush") + req(3, method="get"))
    pb.tick(1.0)  # refilled
    pb >> DataReceived(1, req(4, method="flush"))
    pb << Write(-1, req(4, method="flush"))
    pb >> DataReceived(-1, resp(1) + resp(3) + resp(4))
    pb << Write(1, resp(1))
    pb << Write(1, resp(3))
    pb << Write(1, resp(4))
    close_all(pb, 1, -1)


def test_global_rate_limit_pauses_until_completion_then_routes_or_rejects() -> None:
    grl = GlobalRateLimitConfig("d", ("method",), requests_per_unit=5, timeout=1.0)
    pb = playbook(config(filters=(grl,)))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1, method="get") + req(2, method="get"))
    payload = {"domain": "d", "descriptor": [["method", "get"]], "limit": 5, "unit": 1.0}
    pb << ExternalCall(1, "global_ratelimit", payload)
    pb << ExternalCall(2, "global_ratelimit", payload)
    pb << None  # both paused
    pb >> ExternalCallCompleted(2, False)
    pb << Write(1, error_reply(2, "over_limit", "global rate limit exceeded", 5))
    pb >> ExternalCallCompleted(1, True)
    pb << OpenUpstream(-1, *A)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, req(1, method="get"))
    pb >> DataReceived(-1, resp(1))
    pb << Write(1, resp(1))
    close_all(pb, 1, -1)


def test_global_rate_limit_failure_mode_allow_and_deny() -> None:
    for deny in (False, True):
        grl = GlobalRateLimitConfig("d", ("method",), 5, timeout=1.0, failure_mode_deny=deny)
        pb = playbook(config(filters=(grl,)))
        pb >> Accepted(1, "main")
        pb >> DataReceived(1, req(1, method="get"))
        pb << ExternalCall(1, "global_ratelimit", {"domain": "d", "descriptor": [["method", "get"]],
                                                   "limit": 5, "unit": 1.0})  # fmt: skip
        pb.tick(1.0)  # the rate-limit service never answers
        if deny:
            pb << Write(1, error_reply(1, "over_limit", "rate limit service failed: timeout", 5))
            close_all(pb, 1)
        else:
            pb << OpenUpstream(-1, *A)
            pb >> ExternalCallCompleted(1, False)  # too late: ignored
            pb << None
            close_all(pb, 1, -1)


def test_fault_abort_and_delay() -> None:
    fault = FaultConfig(abort_percent=50, abort_error=ErrorType.UNSPECIFIED, delay_percent=100,
                        delay=2.0)  # fmt: skip
    # random() values: 0.1 -> abort (10 < 50); 0.9 -> no abort, then 0.2 -> delay
    pb = playbook(config(filters=(fault,)), random_values=[0.1, 0.9, 0.2])
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1))
    pb << Write(1, error_reply(1, "unspecified", "fault injected", 11))
    pb >> DataReceived(1, req(2))
    pb << None
    pb.tick(2.0)
    pb << OpenUpstream(-1, *A)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, req(2))
    pb >> DataReceived(-1, resp(2))
    pb << Write(1, resp(2))
    close_all(pb, 1, -1)


def test_weighted_clusters_use_the_injected_randomness() -> None:
    clusters = (ClusterConfig("main", (Endpoint(*A),)), ClusterConfig("canary", (Endpoint(*B),)))
    action = RouteAction(
        weighted_clusters=(WeightedCluster("main", 90), WeightedCluster("canary", 10))
    )
    pb = playbook(config(routes=(route(action=action),), clusters=clusters),
                  random_values=[0.5, 0.95])  # fmt: skip
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1) + req(2))
    pb << OpenUpstream(-1, *A)
    pb << OpenUpstream(-2, *B)
    close_all(pb, 1, -1, -2)


def test_route_table_swap_is_atomic_and_in_flight_requests_finish() -> None:
    pb = playbook(config())
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(-1, *A)
    new = config(
        routes=(route("next"),),
        clusters=(ClusterConfig("next", (Endpoint(*B),)),),
    )
    assert pb.proxy.reload(new, pb.now) == []  # the busy old connection stays for now
    pb >> DataReceived(1, req(2))
    pb << OpenUpstream(-2, *B)  # new requests use the new table
    pb >> UpstreamConnected(-1)
    pb << Write(-1, req(1))
    pb >> DataReceived(-1, resp(1))
    pb << Write(1, resp(1))  # the old request finished where it started
    pb << CloseConnection(-1, flush=True)  # and the retired pool closed after it
    close_all(pb, 1, -2)


def test_reload_keeps_warm_connections_to_endpoints_that_stay() -> None:
    pb = playbook(config())
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(-1, *A)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, req(1))
    pb >> DataReceived(-1, resp(1))
    pb << Write(1, resp(1))
    same_endpoint = config(routes=(route(name="renamed"),))
    assert pb.proxy.reload(same_endpoint, pb.now) == []
    pb >> DataReceived(1, req(2))
    pb << Write(-1, req(2))  # no new connection
    pb >> DataReceived(-1, resp(2))
    pb << Write(1, resp(2))
    close_all(pb, 1, -1)


def test_reload_without_a_listener_drains_its_connections() -> None:
    main_only = config()
    both = replace(
        main_only, listeners=(*main_only.listeners, replace(main_only.listeners[0], name="old"))
    )
    pb = playbook(both)
    pb >> Accepted(1, "old") >> Accepted(2, "old") >> Accepted(3, "main")
    pb >> DataReceived(1, req(1))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, req(1))
    # The idle connection of the removed listener closes now; the busy one is answered first.
    assert pb.proxy.reload(main_only, pb.now) == [CloseConnection(2, flush=True)]
    pb >> Closed(2)
    pb >> DataReceived(1, req(2))  # a draining connection is not read any more
    pb << None
    pb >> DataReceived(-1, resp(1))
    pb << Write(1, resp(1))
    pb << CloseConnection(1, flush=True)
    pb << CloseConnection(-1, flush=True)  # the old listener's pool, retired, is idle
    pb >> Closed(1) >> Closed(-1)
    pb >> DataReceived(3, req(3))  # the listener that stays is served as before
    pb << OpenUpstream(-2, *UP)
    pb >> UpstreamConnected(-2)
    pb << Write(-2, req(3))
    pb >> DataReceived(-2, resp(3))
    pb << Write(3, resp(3))
    close_all(pb, 3, -2)


def test_non_idempotent_requests_are_not_retried_after_a_reset() -> None:
    policy = RetryPolicy(
        attempts=1,
        non_idempotent=RouteMatch((("method", StringMatcher("prefix", "create")),)),
    )
    pb = playbook(config(routes=(route(action=RouteAction(cluster="main", retries=policy)),),
                         clusters=TWO))  # fmt: skip
    detail = "upstream connection closed"
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1, method="createOrder"))
    pb << OpenUpstream(-1, *B)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, req(1, method="createOrder"))
    pb >> Closed(-1)  # it may have reached the upstream: never sent twice
    pb << Write(1, error_reply(1, "upstream_reset", detail, 7))
    pb >> DataReceived(1, req(2, method="getOrder"))
    pb << OpenUpstream(-2, *A)
    pb >> UpstreamConnected(-2)
    pb << Write(-2, req(2, method="getOrder"))
    pb >> Closed(-2)
    pb << OpenUpstream(-3, *B)  # an idempotent request is retried on the other endpoint
    pb >> UpstreamConnected(-3)
    pb << Write(-3, req(2, method="getOrder"))
    pb >> DataReceived(-3, resp(2))
    pb << Write(1, resp(2))
    close_all(pb, 1, -3)
