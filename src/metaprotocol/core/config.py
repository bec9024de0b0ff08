"""The core's frozen configuration (docs/configuration.md, docs/architecture.md).

These dataclasses are what the YAML loader (``metaprotocol.configfile``) produces and
what an embedding user may build in Python directly. Durations are seconds as
floats, sizes are bytes. Defaults live here, in one place, and the README lists them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from metaprotocol.core.message import ErrorType, Mutation
from metaprotocol.core.secrets import Credentials

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_DNS_REFRESH",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_PENDING_REQUESTS",
    "DEFAULT_MAX_UPSTREAM_CONNECTIONS_PER_ENDPOINT",
    "DEFAULT_OUTPUT_BUFFER_LIMIT",
    "DEFAULT_REDIS_CLUSTER_REFRESH_INTERVAL",
    "DEFAULT_REQUEST_TIMEOUT",
    "AdminConfig",
    "CircuitBreakers",
    "ClusterConfig",
    "ClusterTls",
    "Config",
    "Discovery",
    "Endpoint",
    "FaultConfig",
    "FilterConfig",
    "GlobalRateLimitConfig",
    "HealthCheck",
    "HealthCheckRequest",
    "ListenerConfig",
    "ListenerTls",
    "LocalRateLimitCondition",
    "LocalRateLimitConfig",
    "MirrorPolicy",
    "OutlierDetection",
    "PluginFilterConfig",
    "RateLimitRedisConfig",
    "ReadFrom",
    "RedisClusterConfig",
    "RetryPolicy",
    "RouteAction",
    "RouteConfig",
    "RouteMatch",
    "StringMatcher",
    "TlsVersion",
    "TokenBucket",
    "TracingConfig",
    "WeightedCluster",
]

DEFAULT_IDLE_TIMEOUT: Final = 300.0
DEFAULT_REQUEST_TIMEOUT: Final = 30.0
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
DEFAULT_MAX_MESSAGE_SIZE: Final = 8 * 1024 * 1024
DEFAULT_MAX_PENDING_REQUESTS: Final = 1024
DEFAULT_MAX_UPSTREAM_CONNECTIONS_PER_ENDPOINT: Final = 4
DEFAULT_OUTPUT_BUFFER_LIMIT: Final = 32 * 1024 * 1024
DEFAULT_DNS_REFRESH: Final = 30.0
DEFAULT_REDIS_CLUSTER_REFRESH_INTERVAL: Final = 30.0

MatcherKind = Literal["exact", "prefix", "suffix", "regex", "present"]


@dataclass(frozen=True, slots=True)
class StringMatcher:
    kind: MatcherKind
    value: str = ""
    invert: bool = False
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind == "regex" and self._regex is None:
            object.__setattr__(self, "_regex", re.compile(self.value))

    def matches(self, actual: str | None) -> bool:
        """Whether ``actual`` (None: the key is absent) satisfies this matcher."""
        if actual is None:
            hit = False
        elif self.kind == "exact":
            hit = actual == self.value
        elif self.kind == "prefix":
            hit = actual.startswith(self.value)
        elif self.kind == "suffix":
            hit = actual.endswith(self.value)
        elif self.kind == "present":
            hit = True
        else:
            assert self._regex is not None
            hit = self._regex.fullmatch(actual) is not None
        return hit != self.invert


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """An AND of metadata matchers; empty matches everything."""

    metadata: tuple[tuple[str, StringMatcher], ...] = ()
    # The same match as (key, value) pairs when every matcher is a plain ``exact`` (the common
    # case, which the engine checks inline); None otherwise.
    exact: tuple[tuple[str, str], ...] | None = field(
        default=None, init=False, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        if all(m.kind == "exact" and not m.invert for _, m in self.metadata):
            pairs = tuple((key, m.value) for key, m in self.metadata)
            object.__setattr__(self, "exact", pairs)

    def matches(self, properties: Mapping[str, str]) -> bool:
        get = properties.get
        # A plain loop: all(genexpr) costs more per call on this hot path.
        for key, matcher in self.metadata:  # noqa: SIM110
            if not matcher.matches(get(key)):
                return False
        return True


@dataclass(frozen=True, slots=True)
class WeightedCluster:
    cluster: str
    weight: int


@dataclass(frozen=True, slots=True)
class MirrorPolicy:
    cluster: str
    fraction: float = 1.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 1  # retries after the first try
    retry_on: frozenset[str] = frozenset({"connect_failure", "reset"})
    # Requests matching this are not idempotent: once they may have reached the upstream
    # (reset, timeout) they are never sent again; a connect failure is still retried.
    non_idempotent: RouteMatch | None = None

    def allows(self, reason: str, properties: Mapping[str, str]) -> bool:
        if reason not in self.retry_on:
            return False
        if reason == "connect_failure" or self.non_idempotent is None:
            return True
        return not self.non_idempotent.matches(properties)


@dataclass(frozen=True, slots=True)
class RouteAction:
    cluster: str | None = None
    weighted_clusters: tuple[WeightedCluster, ...] = ()
    hash_policy: tuple[str, ...] = ()
    mirror: tuple[MirrorPolicy, ...] = ()
    request_mutation: Mutation | None = None
    response_mutation: Mutation | None = None
    timeout: float | None = None  # None: the listener's request_timeout
    retries: RetryPolicy | None = None


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    action: RouteAction
    match: RouteMatch = RouteMatch()


@dataclass(frozen=True, slots=True)
class TokenBucket:
    max_tokens: int
    tokens_per_fill: int
    fill_interval: float


@dataclass(frozen=True, slots=True)
class LocalRateLimitCondition:
    match: RouteMatch
    token_bucket: TokenBucket


@dataclass(frozen=True, slots=True)
class LocalRateLimitConfig:
    token_bucket: TokenBucket | None = None  # the default bucket; None: unlimited
    conditions: tuple[LocalRateLimitCondition, ...] = ()


@dataclass(frozen=True, slots=True)
class GlobalRateLimitConfig:
    """A shared limit, looked up through an ``ExternalCall(kind="global_ratelimit")``.

    The call payload is ``{"domain", "descriptor": [[key, value], ...], "limit", "unit"}``;
    the result is True (allowed) or False (over limit).
    """

    domain: str
    descriptors: tuple[str, ...]  # metadata keys
    requests_per_unit: int
    unit: float = 1.0  # seconds
    failure_mode_deny: bool = False
    timeout: float = 0.1


@dataclass(frozen=True, slots=True)
class FaultConfig:
    abort_percent: float = 0.0
    abort_error: ErrorType = ErrorType.UNSPECIFIED
    delay_percent: float = 0.0
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class PluginFilterConfig:
    """A third-party filter: ``factory(settings, stats, labels)`` builds it per listener.

    The config loader finds ``factory`` in the ``metaprotocol.filters`` entry-point group;
    the built object follows ``metaprotocol.core.filters.Filter``.
    """

    name: str
    factory: Any
    settings: Mapping[str, Any] = field(default_factory=dict)


FilterConfig = LocalRateLimitConfig | GlobalRateLimitConfig | FaultConfig | PluginFilterConfig


TlsVersion = Literal["1.2", "1.3"]


@dataclass(frozen=True, slots=True)
class ListenerTls:
    """TLS termination on a listener (PEM file paths; the adapters load them).

    With ``client_ca_file`` clients must present a certificate signed by it (mTLS).
    """

    cert_file: str
    key_file: str
    client_ca_file: str | None = None
    min_version: TlsVersion = "1.2"


@dataclass(frozen=True, slots=True)
class ClusterTls:
    """TLS origination to a cluster's endpoints (PEM file paths; the adapters load them).

    ``ca_file`` None trusts the system store; ``server_name`` None checks the endpoint's
    host; ``cert_file``/``key_file`` present the proxy's client certificate (mTLS).
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    verify: bool = True


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    name: str
    host: str
    port: int
    codec: str
    routes: tuple[RouteConfig, ...]
    codec_options: Mapping[str, Any] = field(default_factory=dict)
    filters: tuple[FilterConfig, ...] = ()  # the router is always the terminal filter
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_pending_requests: int = DEFAULT_MAX_PENDING_REQUESTS
    # Replies a client has not read yet, in bytes: above it the client is closed (counted in
    # downstream_cx_output_overflow). At least max_message_size, so one reply always fits.
    output_buffer_limit: int = DEFAULT_OUTPUT_BUFFER_LIMIT
    tls: ListenerTls | None = None  # the adapter terminates TLS; the core sees plaintext


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    weight: int = 1

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class CircuitBreakers:
    max_connections: int = 1024
    max_pending_requests: int = 1024  # requests waiting for a connection
    max_requests: int = 10000  # requests in flight


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    consecutive_failures: int = 5
    base_ejection_time: float = 30.0
    max_ejection_percent: float = 50.0


@dataclass(frozen=True, slots=True)
class HealthCheckRequest:
    """What a codec's probe asks (``ProbesHealth`` in core/codec.py); codecs read what
    applies to them: HTTP/1.1 sends ``GET path`` with ``Host: host`` (None: the endpoint's
    ``host:port``); Redis (``PING``) and Dubbo (a heartbeat) need nothing."""

    path: str = "/"
    host: str | None = None


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active health checking of a cluster's endpoints (docs/configuration.md).

    Every ``interval`` each endpoint gets a probe on a connection of its own (the codec's
    probe, or a TCP connect for a codec without one); no good answer within ``timeout`` is a
    failure. ``unhealthy_threshold`` failures in a row take an endpoint out,
    ``healthy_threshold`` successes in a row bring it back (core/health.py).
    """

    interval: float = 5.0
    timeout: float = 1.0
    unhealthy_threshold: int = 3
    healthy_threshold: int = 2
    request: HealthCheckRequest = HealthCheckRequest()


Discovery = Literal["static", "dns"]
"""``static``: each hostname endpoint is resolved when a connection opens (one address);
``dns``: every ``dns_refresh`` each name is resolved again and every A/AAAA record is an
endpoint (metaprotocol.discovery)."""

LbPolicy = Literal["round_robin", "random", "least_request", "ring_hash", "maglev"]
ReadFrom = Literal["primary", "replica_preferred"]


@dataclass(frozen=True, slots=True)
class RedisClusterConfig:
    """A cluster that is a Redis Cluster (``redis_cluster``, docs/configuration.md): its
    ``endpoints`` are seed nodes, the slot map is learnt from them at start and every
    ``refresh_interval`` seconds, and with ``read_from: replica_preferred`` reads go to a
    healthy replica of the key's shard when there is one.

    The engine routes by slot and follows MOVED / ASK: core/slotrouting.py.
    """

    refresh_interval: float = DEFAULT_REDIS_CLUSTER_REFRESH_INTERVAL
    read_from: ReadFrom = "primary"


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    name: str
    endpoints: tuple[Endpoint, ...]
    lb_policy: LbPolicy = "round_robin"
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    max_connections_per_endpoint: int = DEFAULT_MAX_UPSTREAM_CONNECTIONS_PER_ENDPOINT
    circuit_breakers: CircuitBreakers = CircuitBreakers()
    outlier_detection: OutlierDetection | None = None
    # Every upstream connection logs in with these first (a codec with the ``preamble``
    # hook sends the login, e.g. Redis AUTH); a refused login is a connect failure.
    auth: Credentials | None = None
    tls: ClusterTls | None = None  # the adapter originates TLS to the endpoints
    discovery: Discovery = "static"
    dns_refresh: float = DEFAULT_DNS_REFRESH  # seconds between resolutions (discovery dns)
    health_check: HealthCheck | None = None  # None: passive (outlier detection) only
    # A Redis Cluster: ``endpoints`` are seeds, nodes are picked by key slot (None: not one).
    redis_cluster: RedisClusterConfig | None = None


@dataclass(frozen=True, slots=True)
class AdminConfig:
    host: str = "127.0.0.1"
    port: int = 9901
    idle_timeout: float = 60.0  # an admin connection idle this long is closed
    max_connections: int = 64  # admin connections open at once; more are closed at accept


@dataclass(frozen=True, slots=True)
class RateLimitRedisConfig:
    """Where the global rate limiter's Redis lives (``global_ratelimit_redis``): the adapters'
    clients connect there (over TLS with ``tls``), log in with ``auth`` (if set) and select
    database ``db``."""

    host: str
    port: int
    auth: Credentials | None = None
    db: int = 0
    tls: ClusterTls | None = None  # the same settings as a cluster's


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """OpenTelemetry tracing (docs/configuration.md): spans go to ``otlp_endpoint`` over
    OTLP/HTTP; ``sampling`` is the fraction of requests without a sampled parent traced."""

    otlp_endpoint: str
    service_name: str = "metaprotocol"
    sampling: float = 1.0


@dataclass(frozen=True, slots=True)
class Config:
    listeners: tuple[ListenerConfig, ...]
    clusters: tuple[ClusterConfig, ...]
    admin: AdminConfig | None = None
    access_log: str | None = None  # a file path, "-" for stdout, None for none
    access_log_metadata: tuple[str, ...] = ()  # properties each line carries ("*": all)
    # The config as written (secrets redacted): what the admin's /config_dump shows.
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    global_ratelimit_redis: RateLimitRedisConfig | None = None
    tracing: TracingConfig | None = None  # None: no spans, no trace context handling
