"""The YAML/JSON config loader: dataclasses out, every error in, each named by its path."""

from __future__ import annotations

import copy
import json
import re
import sys
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, cast

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from metaprotocol.codecs.http1 import Http1Codec
from metaprotocol.configfile import (
    ConfigError,
    load_config,
    parse_address,
    parse_config,
    parse_duration,
    parse_size,
)
from metaprotocol.core.codec import CodecFactory, Ordering, Side
from metaprotocol.core.config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_PENDING_REQUESTS,
    DEFAULT_MAX_UPSTREAM_CONNECTIONS_PER_ENDPOINT,
    DEFAULT_OUTPUT_BUFFER_LIMIT,
    DEFAULT_REQUEST_TIMEOUT,
    AdminConfig,
    CircuitBreakers,
    ClusterConfig,
    Endpoint,
    FaultConfig,
    GlobalRateLimitConfig,
    ListenerConfig,
    LocalRateLimitCondition,
    LocalRateLimitConfig,
    MirrorPolicy,
    OutlierDetection,
    RetryPolicy,
    RouteAction,
    RouteConfig,
    RouteMatch,
    StringMatcher,
    TokenBucket,
    WeightedCluster,
)
from metaprotocol.core.message import ErrorType, Mutation


class _FakeCodec:
    """Stands in for a real codec: accepts one option, ``mode: a|b``."""

    name: ClassVar[str] = "fake"
    ordering: ClassVar[Ordering] = Ordering.MULTIPLEXED
    supports_mutation: ClassVar[bool] = True

    def __init__(self, side: Side, options: Mapping[str, Any], max_message_size: int) -> None:
        unknown = set(options) - {"mode"}
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)}")
        if options.get("mode", "a") not in ("a", "b"):
            raise ValueError(f"mode: expected a or b, got {options['mode']!r}")


class _NoMutationCodec(_FakeCodec):
    name: ClassVar[str] = "nomut"
    supports_mutation: ClassVar[bool] = False


class _ValidatingCodec(_FakeCodec):
    name: ClassVar[str] = "validating"

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> list[str]:
        problems = []
        if "level" in options and options["level"] not in (1, 2):
            problems.append(f"level: expected 1 or 2, got {options['level']!r}")
        if "strict" not in options:
            problems.append("strict is required")
        return problems


CODECS: dict[str, CodecFactory] = {
    c.name: cast(CodecFactory, c) for c in (_FakeCodec, _NoMutationCodec, _ValidatingCodec)
}

SAMPLE = """
admin:
  address: 127.0.0.1:9901
listeners:
  - name: redis
    address: 127.0.0.1:6380
    codec: fake
    idle_timeout: 60s
    max_message_size: 8MiB
    filters:
      - local_ratelimit:
          token_bucket: {max_tokens: 1000, tokens_per_fill: 1000, fill_interval: 1s}
          conditions:
            - match: {metadata: {command: {exact: FLUSHALL}}}
              token_bucket: {max_tokens: 0, tokens_per_fill: 0, fill_interval: 1s}
      - router: {}
    routes:
      - name: sessions
        match: {metadata: {key: {prefix: "session:"}}}
        route: {cluster: sessions, timeout: 2s}
      - name: default
        route:
          weighted_clusters: [{cluster: main, weight: 90}, {cluster: canary, weight: 10}]
clusters:
  - name: main
    endpoints: [127.0.0.1:6379]
  - {name: canary, endpoints: [127.0.0.1:6381]}
  - {name: sessions, endpoints: [127.0.0.1:6382, 127.0.0.1:6383], lb_policy: ring_hash}
"""


def sample() -> dict[str, Any]:
    return cast(dict[str, Any], yaml.safe_load(SAMPLE))


def errors_of(data: Mapping[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, codecs=CODECS)
    return info.value.errors


def edited(edit: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    data = sample()
    edit(data)
    return data


# --- a good config ------------------------------------------------------------------


def test_design_sample_parses_to_the_expected_dataclasses() -> None:
    config = parse_config(sample(), codecs=CODECS)

    bucket = TokenBucket(max_tokens=1000, tokens_per_fill=1000, fill_interval=1.0)
    closed = TokenBucket(max_tokens=0, tokens_per_fill=0, fill_interval=1.0)
    flushall = RouteMatch((("command", StringMatcher("exact", "FLUSHALL")),))
    assert config.admin == AdminConfig("127.0.0.1", 9901)
    assert config.access_log is None
    assert config.listeners == (
        ListenerConfig(
            name="redis",
            host="127.0.0.1",
            port=6380,
            codec="fake",
            routes=(
                RouteConfig(
                    "sessions",
                    RouteAction(cluster="sessions", timeout=2.0),
                    RouteMatch((("key", StringMatcher("prefix", "session:")),)),
                ),
                RouteConfig(
                    "default",
                    RouteAction(
                        weighted_clusters=(
                            WeightedCluster("main", 90),
                            WeightedCluster("canary", 10),
                        )
                    ),
                ),
            ),
            filters=(LocalRateLimitConfig(bucket, (LocalRateLimitCondition(flushall, closed),)),),
            idle_timeout=60.0,
            max_message_size=8 * 1024 * 1024,
        ),
    )
    assert config.clusters == (
        ClusterConfig("main", (Endpoint("127.0.0.1", 6379),)),
        ClusterConfig("canary", (Endpoint("127.0.0.1", 6381),)),
        ClusterConfig(
            "sessions",
            (Endpoint("127.0.0.1", 6382), Endpoint("127.0.0.1", 6383)),
            lb_policy="ring_hash",
        ),
    )
    assert config.raw == sample()


def test_absent_keys_take_the_core_defaults() -> None:
    data = {
        "listeners": [{"name": "l", "address": "0.0.0.0:0", "codec": "fake"}],
        "clusters": [{"name": "c", "endpoints": ["10.0.0.1:1"]}],
    }
    config = parse_config(data, codecs=CODECS)
    (listener,) = config.listeners
    assert (listener.host, listener.port) == ("0.0.0.0", 0)
    assert listener.routes == () and listener.filters == ()
    assert listener.codec_options == {}
    assert listener.idle_timeout == DEFAULT_IDLE_TIMEOUT
    assert listener.request_timeout == DEFAULT_REQUEST_TIMEOUT
    assert listener.max_message_size == DEFAULT_MAX_MESSAGE_SIZE
    assert listener.max_pending_requests == DEFAULT_MAX_PENDING_REQUESTS
    assert listener.output_buffer_limit == DEFAULT_OUTPUT_BUFFER_LIMIT
    (cluster,) = config.clusters
    assert cluster.lb_policy == "round_robin"
    assert cluster.connect_timeout == DEFAULT_CONNECT_TIMEOUT
    assert cluster.max_connections_per_endpoint == DEFAULT_MAX_UPSTREAM_CONNECTIONS_PER_ENDPOINT
    assert cluster.circuit_breakers == CircuitBreakers()
    assert cluster.outlier_detection is None
    assert config.admin is None and config.access_log is None


def test_every_route_action_and_cluster_option_maps_to_its_field() -> None:
    data = {
        "access_log": {"path": "-"},
        "admin": {},
        "global_ratelimit_redis": {"address": "127.0.0.1:6379"},
        "listeners": [
            {
                "name": "l",
                "address": "[::1]:8080",
                "codec": "fake",
                "codec_options": {"mode": "b"},
                "idle_timeout": 0,
                "request_timeout": None,
                "max_message_size": "64KiB",
                "max_pending_requests": 7,
                "output_buffer_limit": "1MiB",
                "filters": [
                    {
                        "global_ratelimit": {
                            "domain": "edge",
                            "descriptors": [":Authority", "x-user"],
                            "requests_per_unit": 10,
                            "unit": "minute",
                            "failure_mode_deny": True,
                            "timeout": "50ms",
                        }
                    },
                    {
                        "fault": {
                            "abort": {"percentage": 5, "error": "over_limit"},
                            "delay": {"percentage": 2.5, "duration": "1.5s"},
                        }
                    },
                    "router",
                ],
                "routes": [
                    {
                        "match": {
                            "metadata": {
                                "Method": "GET",
                                "version": 2,
                                "path": {"regex": "/a/.*", "invert": True},
                                "x-user": {"present": True},
                                "x-debug": {"present": False},
                                "host": {"suffix": ".example.com"},
                            }
                        },
                        "route": {
                            "cluster": "c",
                            "hash_policy": ["X-User"],
                            "mirror": {"cluster": "c", "fraction": 0.25},
                            "request_mutation": {"add": {"x-a": "1", "x-n": 2}, "remove": ["x-b"]},
                            "response_mutation": {"remove": ["x-c"]},
                            "timeout": "250ms",
                            "retries": {"attempts": 0, "retry_on": ["timeout"]},
                        },
                    },
                    {"route": {"cluster": "c", "mirror": [{"cluster": "c"}], "retries": {}}},
                ],
            }
        ],
        "clusters": [
            {
                "name": "c",
                "endpoints": ["h:1", {"address": "[fe80::1]:2", "weight": 3}],
                "lb_policy": "maglev",
                "connect_timeout": "2m",
                "max_connections_per_endpoint": 2,
                "circuit_breakers": {"max_pending_requests": 0},
                "outlier_detection": {"base_ejection_time": "1h"},
            }
        ],
    }
    config = parse_config(data, codecs=CODECS)
    assert config.access_log == "-"
    assert config.admin == AdminConfig()
    assert config.raw["global_ratelimit_redis"] == {"address": "127.0.0.1:6379"}
    (listener,) = config.listeners
    assert (listener.host, listener.port) == ("::1", 8080)
    assert listener.codec_options == {"mode": "b"}
    assert listener.idle_timeout is None and listener.request_timeout is None
    assert (listener.max_message_size, listener.max_pending_requests) == (65536, 7)
    assert listener.output_buffer_limit == 1 << 20
    assert listener.filters == (
        GlobalRateLimitConfig("edge", (":authority", "x-user"), 10, 60.0, True, 0.05),
        FaultConfig(5.0, ErrorType.OVER_LIMIT, 2.5, 1.5),
    )
    first, second = listener.routes
    assert first.name == "route_0" and second.name == "route_1"
    assert dict(first.match.metadata) == {
        "method": StringMatcher("exact", "GET"),
        "version": StringMatcher("exact", "2"),
        "path": StringMatcher("regex", "/a/.*", invert=True),
        "x-user": StringMatcher("present"),
        "x-debug": StringMatcher("present", invert=True),
        "host": StringMatcher("suffix", ".example.com"),
    }
    assert first.action == RouteAction(
        cluster="c",
        hash_policy=("x-user",),
        mirror=(MirrorPolicy("c", 0.25),),
        request_mutation=Mutation((("x-a", "1"), ("x-n", "2")), ("x-b",)),
        response_mutation=Mutation((), ("x-c",)),
        timeout=0.25,
        retries=RetryPolicy(0, frozenset({"timeout"})),
    )
    assert second.action.mirror == (MirrorPolicy("c", 1.0),)
    assert second.action.retries == RetryPolicy()
    assert first.match.matches(
        {"method": "GET", "version": "2", "path": "/b", "x-user": "u", "host": "a.example.com"}
    )
    assert not first.match.matches(
        {
            "method": "GET",
            "version": "2",
            "path": "/b",
            "x-user": "u",
            "x-debug": "1",
            "host": "a.example.com",
        }
    )
    (cluster,) = config.clusters
    assert cluster.endpoints == (Endpoint("h", 1), Endpoint("fe80::1", 2, 3))
    assert (cluster.lb_policy, cluster.connect_timeout) == ("maglev", 120.0)
    assert cluster.max_connections_per_endpoint == 2
    assert cluster.circuit_breakers == CircuitBreakers(max_pending_requests=0)
    assert cluster.outlier_detection == OutlierDetection(base_ejection_time=3600.0)


# --- scalar syntax ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("1s", 1.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        (2, 2.0),
        (0.5, 0.5),
        ("3", 3.0),
        ("0", 0.0),
        (" 10 ms ", 0.01),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["1d", "-1s", "", "ms", "1.2.3s", True, None, -1, float("nan")])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (123, 123),
        ("512B", 512),
        ("64KiB", 65536),
        ("8MiB", 8 << 20),
        ("1GiB", 1 << 30),
        ("10KB", 10_000),
        ("1MB", 1_000_000),
        ("2GB", 2_000_000_000),
        ("1.5KiB", 1536),
    ],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["1TB", "1kib", "MiB", -1, True, 1.5, None, "8 MiB extra"])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("[::1]:6379", ("::1", 6379)),
        ("example.com:65535", ("example.com", 65535)),
    ],
)
def test_addresses(text: str, address: tuple[str, int]) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize(
    "bad", ["localhost", "::1:80", ":80", "h:", "h:x", "h:65536", "h:0", "[::1]80", 80, None]
)
def test_bad_addresses(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_address(bad)


def test_port_zero_only_for_listening() -> None:
    assert parse_address("127.0.0.1:0", allow_port_zero=True) == ("127.0.0.1", 0)
    assert errors_of(edited(lambda d: d["clusters"][0].update(endpoints=["h:0"]))) == [
        "clusters[0].endpoints[0]: port must be in 1..65535, got 'h:0'"
    ]


# --- each error, exactly ------------------------------------------------------------

L0 = "listeners[0]"
R0 = "listeners[0].routes[0].route"


def _listener(d: dict[str, Any]) -> dict[str, Any]:
    return cast(dict[str, Any], d["listeners"][0])


def _route(d: dict[str, Any], i: int = 0) -> dict[str, Any]:
    return cast(dict[str, Any], _listener(d)["routes"][i]["route"])


# Each case: one or more edits of the sample (`path = yaml-value`, `path ~` deletes,
# `list.+i = value` inserts at i), then `=> the one expected error`.
ERROR_CASES = """
clusters.2.endpoints = ["127.0.0.1:1", localhost]
=> clusters[2].endpoints[1]: expected host:port, got 'localhost'
listeners.0.idle_timout = 1s
=> listeners[0].idle_timout: unknown key (did you mean 'idle_timeout'?)
clusters.0.zzz = 1
=> clusters[0].zzz: unknown key (expected one of: name, endpoints, lb_policy, \
connect_timeout, max_connections_per_endpoint, circuit_breakers, outlier_detection, auth, tls, \
discovery, dns_refresh, health_check, redis_cluster)
cluster = []
=> cluster: unknown key (did you mean 'clusters'?)
listeners.0.max_pending_requests = many
=> listeners[0].max_pending_requests: expected an integer, got 'many'
listeners.0.max_pending_requests = true
=> listeners[0].max_pending_requests: expected an integer, got true
admin = ["127.0.0.1:1"]
=> admin: expected a mapping, got a list
clusters = {name: x}
=> clusters: expected a list, got a mapping
listeners.0.codec ~
=> listeners[0].codec: missing required key
clusters.0.name = null
=> clusters[0].name: required, got null
listeners.0.routes.1.route.weighted_clusters.0.weight = 0
=> listeners[0].routes[1].route.weighted_clusters[0].weight: must be > 0, got 0
clusters.0.endpoints = [{address: "h:1", weight: -2}]
=> clusters[0].endpoints[0].weight: must be > 0, got -2
clusters.0.endpoints = [{address: h}]
=> clusters[0].endpoints[0].address: expected host:port, got 'h'
clusters.0.endpoints = [6379]
=> clusters[0].endpoints[0]: expected host:port or {address, weight}, got 6379
listeners.0.routes.0.route.mirror = {cluster: main, fraction: 1.5}
=> listeners[0].routes[0].route.mirror.fraction: must be between 0 and 1, got 1.5
listeners.0.filters.+0 = {fault: {abort: {percentage: 150}}}
=> listeners[0].filters[0].fault.abort.percentage: must be between 0 and 100, got 150
listeners.0.routes.0.route.retries = {attempts: -1}
=> listeners[0].routes[0].route.retries.attempts: must be >= 0, got -1
listeners.0.routes.0.route.retries = {retry_on: [reset, rest]}
=> listeners[0].routes[0].route.retries.retry_on[1]: expected one of connect_failure, \
reset, timeout, got 'rest' (did you mean 'reset'?)
listeners.1 = {name: redis, address: "h:1", codec: fake}
=> listeners[1].name: duplicate listener name 'redis'
listeners.1 = {name: two, address: "127.0.0.1:6380", codec: fake}
=> listeners[1].address: 127.0.0.1:6380 is already used by 'redis'
clusters.3 = {name: main, endpoints: ["h:1"]}
=> clusters[3].name: duplicate cluster name 'main'
listeners.0.routes.1.name = sessions
=> listeners[0].routes[1].name: duplicate route name 'sessions'
listeners.0.routes.0.route.cluster = sesions
=> listeners[0].routes[0].route.cluster: unknown cluster 'sesions' (did you mean 'sessions'?)
listeners.0.routes.1.route.weighted_clusters.1.cluster = nope
=> listeners[0].routes[1].route.weighted_clusters[1].cluster: unknown cluster 'nope'
listeners.0.routes.0.route.mirror = [{cluster: main}, {cluster: x}]
=> listeners[0].routes[0].route.mirror[1].cluster: unknown cluster 'x'
listeners.0.codec = fak
=> listeners[0].codec: unknown codec 'fak' (did you mean 'fake'?)
listeners.0.codec_options = {mode: c}
=> listeners[0].codec_options.mode: expected a or b, got 'c'
listeners.0.codec_options = {x: 1}
=> listeners[0].codec_options: unknown option(s) ['x']
listeners.0.codec_options = [1]
=> listeners[0].codec_options: expected a mapping, got a list
clusters.0.lb_policy = roundrobin
=> clusters[0].lb_policy: expected one of round_robin, random, least_request, ring_hash, \
maglev, got 'roundrobin' (did you mean 'round_robin'?)
listeners.0.filters.+0 = {local_ratelimt: {}}
=> listeners[0].filters[0]: unknown filter 'local_ratelimt' (did you mean 'local_ratelimit'?)
listeners.0.filters = [router, fault]
=> listeners[0].filters[0]: router must be the last filter
listeners.0.filters.1 = {router: {x: 1}}
=> listeners[0].filters[1].router.x: unknown key (expected one of: )
listeners.0.filters.+0 = {fault: {}, router: {}}
=> listeners[0].filters[0]: expected a filter like {router: {}}, got a mapping
listeners.0.filters.0.local_ratelimit.token_bucket.fill_interval ~
=> listeners[0].filters[0].local_ratelimit.token_bucket.fill_interval: missing required key
listeners.0.filters.0.local_ratelimit.conditions.0.match.metadata.command.prefix = B
=> listeners[0].filters[0].local_ratelimit.conditions[0].match.metadata.command: \
expected exactly one of exact, prefix, suffix, regex, present
listeners.0.routes.0.match.metadata = {k: {exact: true}}
=> listeners[0].routes[0].match.metadata.k.exact: expected a string, got true
listeners.0.routes.0.match.metadata = {":path": {x: 1}}
=> listeners[0].routes[0].match.metadata[':path'].x: unknown key (expected one of: exact, \
prefix, suffix, regex, present, invert)
listeners.0.routes.0.match.metadata = {k: {present: true, invert: "yes"}}
=> listeners[0].routes[0].match.metadata.k.invert: expected true or false, got 'yes'
listeners.0.routes.0.route.weighted_clusters = [{cluster: main, weight: 1}]
=> listeners[0].routes[0].route: expected exactly one of cluster or weighted_clusters
listeners.0.routes.0.route.cluster ~
=> listeners[0].routes[0].route: expected exactly one of cluster or weighted_clusters
listeners.0.routes.0.route ~
=> listeners[0].routes[0].route: missing required key
listeners.0.idle_timeout = 5 minutes
=> listeners[0].idle_timeout: expected a duration like 250ms, 1s, 5m, got '5 minutes'
listeners.0.routes.0.route.timeout = 0s
=> listeners[0].routes[0].route.timeout: must be > 0, got '0s'
listeners.0.max_message_size = 8MB!
=> listeners[0].max_message_size: expected a size like 65536, 64KiB, 8MiB, got '8MB!'
listeners.0.max_message_size = 0
=> listeners[0].max_message_size: must be > 0, got 0
listeners.0.output_buffer_limit = 4MiB
=> listeners[0].output_buffer_limit: must be at least max_message_size (8388608 bytes), got 4194304
listeners.0.address = "6380"
=> listeners[0].address: expected host:port, got '6380'
admin.address = 127.0.0.1
=> admin.address: expected host:port, got '127.0.0.1'
global_ratelimit_redis = {address: redis}
=> global_ratelimit_redis.address: expected host:port, got 'redis'
access_log = 5
=> access_log: expected a non-empty string, got 5
listeners.0.filters.+0 = {fault: {abort: {percentage: 1, error: overlimit}}}
=> listeners[0].filters[0].fault.abort.error: expected one of route_not_found, \
cluster_not_found, no_healthy_upstream, bad_response, over_limit, timeout, upstream_reset, \
connect_failure, message_too_large, bad_request, unspecified, unauthenticated, \
permission_denied, got 'overlimit' \
(did you mean 'over_limit'?)
listeners.0.filters.+0 = {global_ratelimit: {domain: d, requests_per_unit: 1, unit: day}}
=> listeners[0].filters[0].global_ratelimit.unit: expected second, minute, hour or a \
duration, got 'day'
listeners.0.filters.+0 = {global_ratelimit: {domain: d}}
=> listeners[0].filters[0].global_ratelimit.requests_per_unit: missing required key
listeners = []
=> listeners: at least one listener is required
clusters.0.endpoints = []
=> clusters[0].endpoints: at least one endpoint is required
clusters.0.outlier_detection = {max_ejection_percent: 101}
=> clusters[0].outlier_detection.max_ejection_percent: must be between 0 and 100, got 101
clusters.0.circuit_breakers = {max_requests: 0}
=> clusters[0].circuit_breakers.max_requests: must be > 0, got 0
listeners.0.routes.0.route.request_mutation = {add: {k: [1]}}
=> listeners[0].routes[0].route.request_mutation.add.k: expected a string, got a list
clusters.0.endpoints = ["h:0"]
=> clusters[0].endpoints[0]: port must be in 1..65535, got 'h:0'
"""


def apply_edit(data: dict[str, Any], line: str) -> None:
    """``a.0.b = value`` sets (YAML value), ``a.0.b ~`` deletes, ``a.+0 = value`` inserts."""
    if line.endswith(" ~"):
        target, value = line[:-2], None
    else:
        target, _, text = line.partition(" = ")
        value = yaml.safe_load(text)
    *parents, last = target.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if line.endswith(" ~"):
        del node[int(last) if last.isdigit() else last]
    elif last.startswith("+"):
        node.insert(int(last[1:]), value)
    elif last.isdigit() and int(last) == len(node):
        node.append(value)
    else:
        node[int(last) if last.isdigit() else last] = value


def error_cases() -> list[tuple[list[str], str]]:
    cases: list[tuple[list[str], str]] = []
    edits: list[str] = []
    for line in ERROR_CASES.strip().splitlines():
        if line.startswith("=> "):
            cases.append((edits, line[3:]))
            edits = []
        else:
            edits.append(line)
    return cases


@pytest.mark.parametrize(("edits", "expected"), error_cases(), ids=lambda v: str(v)[:60])
def test_each_error_is_reported_at_its_path(edits: list[str], expected: str) -> None:
    data = sample()
    for line in edits:
        apply_edit(data, line)
    assert errors_of(data) == [expected]


def test_an_unknown_codec_lists_the_given_codecs_and_the_registrys() -> None:
    data = edited(lambda d: _listener(d).update(codec="zzzz"))
    assert errors_of(data) == [
        f"{L0}.codec: unknown codec 'zzzz' (known: dubbo, fake, http1, lengthprefixed, nomut, "
        "redis, thrift, trpc, validating)"
    ]


def test_invalid_regex_names_the_pattern_and_the_reason() -> None:
    data = edited(
        lambda d: _listener(d)["routes"][0].update(match={"metadata": {"m": {"regex": "get("}}})
    )
    reason = ""
    try:
        re.compile("get(")
    except re.error as exc:
        reason = str(exc)
    assert reason
    assert errors_of(data) == [
        f"listeners[0].routes[0].match.metadata.m.regex: invalid regex 'get(': {reason}"
    ]


def test_mutations_a_codec_cannot_send_are_rejected_at_load() -> None:
    def edit(d: dict[str, Any]) -> None:
        _listener(d)["codec"] = "http1"
        _route(d)["request_mutation"] = {"add": {"x-a": "1\r\nInjected: 1", ":path": "a b"}}
        _route(d, 1)["response_mutation"] = {"add": {"x-ok": "1", ":path": "ignored"}}

    with pytest.raises(ConfigError) as info:
        parse_config(edited(edit), codecs={**CODECS, "http1": Http1Codec})
    assert info.value.errors == [
        f"{R0}.request_mutation: cannot add header 'x-a': '1\\r\\nInjected: 1'",
        f"{R0}.request_mutation: bad :path 'a b'",
    ]


def test_mutation_is_rejected_for_a_codec_without_mutation_support() -> None:
    def edit(d: dict[str, Any]) -> None:
        _listener(d)["codec"] = "nomut"
        _route(d)["request_mutation"] = {"add": {"x": "1"}}
        _route(d, 1)["response_mutation"] = {"remove": ["y"]}

    assert errors_of(edited(edit)) == [
        f"{R0}.request_mutation: codec 'nomut' does not support mutation",
        "listeners[0].routes[1].route.response_mutation: codec 'nomut' does not support mutation",
    ]
    # An empty mutation changes nothing, so it is harmless.
    ok = edited(
        lambda d: (_listener(d).update(codec="nomut"), _route(d).update(request_mutation={}))
    )
    assert parse_config(ok, codecs=CODECS).listeners[0].routes[0].action.request_mutation is None


def test_validate_options_messages_are_prefixed_with_the_path() -> None:
    def edit(d: dict[str, Any]) -> None:
        _listener(d)["codec"] = "validating"
        _listener(d)["codec_options"] = {"level": 3}

    assert errors_of(edited(edit)) == [
        f"{L0}.codec_options.level: expected 1 or 2, got 3",
        f"{L0}.codec_options: strict is required",
    ]
    good = edited(edit)
    _listener(good)["codec_options"] = {"strict": True}
    assert parse_config(good, codecs=CODECS).listeners[0].codec_options == {"strict": True}


def test_many_errors_are_all_reported_in_document_order() -> None:
    def edit(d: dict[str, Any]) -> None:
        _listener(d)["idle_timout"] = "1s"
        _listener(d)["max_message_size"] = "huge"
        _route(d)["cluster"] = "missing"
        d["clusters"][0]["endpoints"] = ["localhost"]
        d["clusters"][1]["lb_policy"] = "fastest"
        d["admin"]["address"] = "nowhere"

    with pytest.raises(ConfigError) as info:
        parse_config(edited(edit), codecs=CODECS)
    expected = [
        "admin.address: expected host:port, got 'nowhere'",
        f"{L0}.idle_timout: unknown key (did you mean 'idle_timeout'?)",
        f"{L0}.max_message_size: expected a size like 65536, 64KiB, 8MiB, got 'huge'",
        "clusters[0].endpoints[0]: expected host:port, got 'localhost'",
        "clusters[1].lb_policy: expected one of round_robin, random, least_request, ring_hash,"
        " maglev, got 'fastest'",
        f"{R0}.cluster: unknown cluster 'missing'",
    ]
    assert info.value.errors == expected
    assert str(info.value) == "\n".join(expected)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (None, "cfg.yaml: expected a mapping, got null"),
        ([1], "cfg.yaml: expected a mapping, got a list"),
        ({}, "listeners: missing required key"),
    ],
)
def test_the_document_itself_must_be_a_mapping_with_listeners(data: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "cfg.yaml", codecs=CODECS)
    assert info.value.errors == [expected]
    assert info.value.source == "cfg.yaml"


def test_timeouts_disable_with_zero_or_null_and_keep_defaults_when_absent() -> None:
    for value in (0, "0s", None):
        data = sample()
        _listener(data).update(idle_timeout=value, request_timeout=value)
        listener = parse_config(data, codecs=CODECS).listeners[0]
        assert listener.idle_timeout is None and listener.request_timeout is None
    listener = parse_config(sample(), codecs=CODECS).listeners[0]
    assert listener.request_timeout == DEFAULT_REQUEST_TIMEOUT


def test_the_input_is_kept_unshared_in_raw() -> None:
    data = sample()
    config = parse_config(data, codecs=CODECS)
    data["clusters"].clear()
    assert len(config.raw["clusters"]) == 3


# --- files --------------------------------------------------------------------------


def test_load_yaml_and_json_files(tmp_path: Path) -> None:
    as_yaml = tmp_path / "c.yaml"
    as_yaml.write_text(SAMPLE)
    as_json = tmp_path / "c.json"
    as_json.write_text(json.dumps(sample()))
    assert load_config(as_yaml, codecs=CODECS) == load_config(str(as_json), codecs=CODECS)


def test_file_errors_name_the_file_and_position(tmp_path: Path) -> None:
    cases = {
        "dup.yaml": (
            "listeners: []\nlisteners: []\n",
            "dup.yaml:2:1: invalid YAML: found duplicate key 'listeners'",
        ),
        "syntax.yaml": (
            "listeners: [\n  a: b\n",
            "syntax.yaml:3:1: invalid YAML: expected ',' or ']', but got '<stream end>'",
        ),
        "bad.json": ('{"listeners": [}', "bad.json:1:16: invalid JSON: Expecting value"),
    }
    for name, (text, expected) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(path, codecs=CODECS)
        assert info.value.errors == [f"{tmp_path}/{expected}"]
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.errors == [f"{missing}: cannot read config: No such file or directory"]


def test_yaml_anchors_and_merge_keys_under_x_keys(tmp_path: Path) -> None:
    path = tmp_path / "anchors.yaml"
    path.write_text(
        """
x-cluster: &cluster {lb_policy: random, connect_timeout: 1s}
listeners:
  - {name: l, address: "127.0.0.1:1", codec: fake, routes: [{route: {cluster: a}}]}
clusters:
  - {<<: *cluster, name: a, endpoints: ["h:1"], connect_timeout: 2s}
"""
    )
    (cluster,) = load_config(path, codecs=CODECS).clusters
    assert (cluster.lb_policy, cluster.connect_timeout) == ("random", 2.0)


# --- the codec registry -------------------------------------------------------------


def test_codecs_are_looked_up_in_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def get_codec(name: str) -> CodecFactory:
        asked.append(name)
        if name != "fake":
            raise LookupError(name)
        return CODECS["fake"]

    registry = types.ModuleType("metaprotocol.codecs.registry")
    registry.get_codec = get_codec  # type: ignore[attr-defined]
    registry.codec_names = lambda: ["fake", "other"]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "metaprotocol.codecs.registry", registry)

    assert parse_config(sample()).listeners[0].codec == "fake"
    bad = edited(lambda d: _listener(d).update(codec="othr"))
    with pytest.raises(ConfigError) as info:
        parse_config(bad)
    assert info.value.errors == [f"{L0}.codec: unknown codec 'othr' (did you mean 'other'?)"]
    assert asked == ["fake", "othr"]


def test_a_codec_that_fails_to_import_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def get_codec(name: str) -> CodecFactory:
        raise ModuleNotFoundError(f"No module named 'codecs_{name}'")

    registry = types.ModuleType("metaprotocol.codecs.registry")
    registry.get_codec = get_codec  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "metaprotocol.codecs.registry", registry)
    with pytest.raises(ConfigError) as info:
        parse_config(sample())
    assert info.value.errors == [
        f"{L0}.codec: codec 'fake' failed to load: No module named 'codecs_fake'"
    ]


def test_the_real_registry_names_known_codecs() -> None:
    data = copy.deepcopy(sample())
    _listener(data)["codec"] = "lengthprefixd"
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.errors == [
        f"{L0}.codec: unknown codec 'lengthprefixd' (did you mean 'lengthprefixed'?)"
    ]
    _listener(data)["codec"] = "lengthprefixed"
    assert parse_config(data).listeners[0].codec == "lengthprefixed"


def test_references_are_checked_even_without_a_clusters_section() -> None:
    for edit in (lambda d: d.pop("clusters"), lambda d: d.update(clusters=None)):
        errors = errors_of(edited(edit))
        assert errors == [
            f"{R0}.cluster: unknown cluster 'sessions'",
            "listeners[0].routes[1].route.weighted_clusters[0].cluster: unknown cluster 'main'",
            "listeners[0].routes[1].route.weighted_clusters[1].cluster: unknown cluster 'canary'",
        ]


def test_a_duplicate_cluster_name_still_lets_references_be_checked() -> None:
    def edit(d: dict[str, Any]) -> None:
        d["clusters"].append({"name": "main", "endpoints": ["h:1"]})
        _route(d)["cluster"] = "gone"

    assert errors_of(edited(edit)) == [
        "clusters[3].name: duplicate cluster name 'main'",
        f"{R0}.cluster: unknown cluster 'gone'",
    ]


# --- robustness ---------------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.floats(allow_nan=True)
    | st.text(max_size=12) | st.sampled_from(["1s", "8MiB", "h:1", "main", "[::1]:0", "router"]),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, (*prefix, i))
    return found


_SAMPLE_PATHS = _paths(sample())


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(_SAMPLE_PATHS), value=_JSON)
def test_any_value_anywhere_gives_a_config_or_path_qualified_errors(
    path: tuple[Any, ...], value: Any
) -> None:
    data = sample()
    node: Any = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    try:
        parse_config(data, "fuzz.yaml", codecs=CODECS)
    except ConfigError as exc:
        assert exc.errors
        for line in exc.errors:
            where, sep, message = line.partition(": ")
            assert sep and where and message, line
            assert "\n" not in line


def test_access_log_metadata_keys() -> None:
    from metaprotocol.configfile import parse_config

    base = {
        "listeners": [
            {"name": "l", "address": "127.0.0.1:0", "codec": "lengthprefixed", "routes": []}
        ],
        "clusters": [],
    }
    cfg = parse_config({**base, "access_log": {"path": "-", "metadata": ["Command", "*"]}})
    assert cfg.access_log == "-" and cfg.access_log_metadata == ("command", "*")
    assert parse_config({**base, "access_log": "-"}).access_log_metadata == ()


def test_retries_non_idempotent_match() -> None:
    from metaprotocol.configfile import parse_config

    route = {
        "name": "r",
        "route": {
            "cluster": "c",
            "retries": {
                "attempts": 2,
                "retry_on": ["reset", "timeout"],
                "non_idempotent": {"metadata": {"method": {"prefix": "create"}}},
            },
        },
    }
    cfg = parse_config(
        {
            "listeners": [
                {
                    "name": "l",
                    "address": "127.0.0.1:0",
                    "codec": "lengthprefixed",
                    "routes": [route],
                }
            ],
            "clusters": [{"name": "c", "endpoints": ["127.0.0.1:9000"]}],
        }
    )
    retries = cfg.listeners[0].routes[0].action.retries
    assert retries is not None and retries.attempts == 2
    assert retries.allows("reset", {"method": "getX"})
    assert not retries.allows("reset", {"method": "createX"})
    assert not retries.allows("connect_failure", {"method": "getX"})  # not in retry_on
