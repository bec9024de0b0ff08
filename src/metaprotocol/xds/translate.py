"""Translate xDS resources (CDS, EDS, generic-proxy RDS) into the core's config objects.

Pure functions, no IO: ``build_config(base, rds, resources)`` is the whole ``Config`` the
proxy serves once the control plane's resources are laid over the static file, or an
``XdsError`` naming the resource and what is wrong with it (the text a NACK carries).
docs/xds.md says which fields are read and how each maps.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.filters.network.generic_proxy.action.v3 import action_pb2
from envoy.extensions.filters.network.generic_proxy.matcher.v3 import matcher_pb2 as gp_matcher_pb2
from envoy.extensions.filters.network.generic_proxy.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import json_format
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError, Message
from xds.type.matcher.v3 import matcher_pb2, string_pb2

from metaprotocol.configfile.discovery import PROBE_HOST_RE, PROBE_PATH_RE
from metaprotocol.core.config import (
    CircuitBreakers,
    ClusterConfig,
    ClusterTls,
    Config,
    Discovery,
    Endpoint,
    HealthCheck,
    HealthCheckRequest,
    LbPolicy,
    ListenerConfig,
    OutlierDetection,
    RetryPolicy,
    RouteAction,
    RouteConfig,
    RouteMatch,
    StringMatcher,
    WeightedCluster,
)

__all__ = [
    "CLUSTER_TYPE",
    "ENDPOINT_TYPE",
    "ROUTE_TYPE",
    "Resource",
    "UnknownClusterError",
    "XdsError",
    "XdsResources",
    "build_config",
    "cluster_config",
    "eds_name",
    "endpoints",
    "routes",
]

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
ROUTE_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.generic_proxy.v3.RouteConfiguration"
)
_TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_ACTION_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.generic_proxy.action.v3.RouteAction"
)
_INPUT_PREFIX = "type.googleapis.com/envoy.extensions.filters.network.generic_proxy.matcher.v3."

_LB_POLICIES: dict[int, LbPolicy] = {
    cluster_pb2.Cluster.ROUND_ROBIN: "round_robin",
    cluster_pb2.Cluster.LEAST_REQUEST: "least_request",
    cluster_pb2.Cluster.RANDOM: "random",
    cluster_pb2.Cluster.RING_HASH: "ring_hash",
    cluster_pb2.Cluster.MAGLEV: "maglev",
}
_RESOLVED_TYPES = (
    cluster_pb2.Cluster.STATIC,
    cluster_pb2.Cluster.STRICT_DNS,
    cluster_pb2.Cluster.LOGICAL_DNS,
)
_EXCLUDED_HEALTH = (health_check_pb2.UNHEALTHY, health_check_pb2.DRAINING)
# Envoy's default dns_refresh_rate: a STRICT_DNS cluster without one re-resolves this often.
_ENVOY_DNS_REFRESH = 5.0
# custom_health_check names whose probe is the codec's own (Envoy's Redis checker: PING).
_CODEC_PROBE_CHECKERS = ("envoy.health_checkers.redis",)
# Envoy's retry_on words that have a meaning here; the others are ignored.
_RETRY_ON = {
    "connect-failure": "connect_failure",
    "reset": "reset",
    "timeout": "timeout",
    "per-try-timeout": "timeout",
}
# The generic proxy's match inputs -> the metadata key each codec routes on (None: the
# codec has no such thing). A codec not listed uses the input's own name.
_INPUT_KEYS: dict[str, dict[str, str | None]] = {
    "dubbo": {"service": "interface", "method": "method", "host": None, "path": None},
    "thrift": {"service": "service", "method": "method", "host": None, "path": None},
    "http1": {"service": ":authority", "method": ":method", "host": ":authority", "path": ":path"},
    "redis": {"service": None, "method": "command", "host": None, "path": None},
}
_INPUT_NAMES = {
    "ServiceMatchInput": "service",
    "MethodMatchInput": "method",
    "HostMatchInput": "host",
    "PathMatchInput": "path",
}


class XdsError(ValueError):
    """A resource cannot be served; the message names it (the NACK's error detail)."""


class UnknownClusterError(XdsError):
    """A route names a cluster that does not exist (yet: CDS may still bring it)."""


@dataclass(frozen=True, slots=True)
class Resource:
    """One accepted xDS resource and the version of the response that carried it."""

    version: str
    message: Message


@dataclass(frozen=True, slots=True)
class XdsResources:
    """The control plane's current resources by type, each by name."""

    clusters: Mapping[str, Resource] = field(default_factory=dict)
    endpoints: Mapping[str, Resource] = field(default_factory=dict)
    routes: Mapping[str, Resource] = field(default_factory=dict)


def _seconds(d: Duration) -> float:
    return float(d.seconds + d.nanos / 1e9)


def _unpack(any_msg: AnyProto, type_url: str, message: Message, what: str) -> Message:
    if any_msg.type_url != type_url:
        raise XdsError(f"{what}: expected {type_url.rsplit('/', 1)[-1]}, got {any_msg.type_url}")
    try:
        message.ParseFromString(any_msg.value)
    except DecodeError as exc:
        raise XdsError(f"{what}: cannot decode: {exc}") from None
    return message


# -- CDS


def eds_name(cluster: cluster_pb2.Cluster) -> str:
    """The ClusterLoadAssignment name an EDS cluster's endpoints come under."""
    return str(cluster.eds_cluster_config.service_name or cluster.name)


def cluster_config(
    cluster: cluster_pb2.Cluster, assignment: endpoint_pb2.ClusterLoadAssignment | None
) -> ClusterConfig:
    """A ``Cluster``; an EDS cluster takes its endpoints from ``assignment`` (none yet: none)."""
    what = f"cluster {cluster.name!r}"
    if not cluster.name:
        raise XdsError("cluster: name is required")
    if cluster.lb_policy not in _LB_POLICIES:
        policy = cluster_pb2.Cluster.LbPolicy.Name(cluster.lb_policy)
        raise XdsError(f"{what}: lb_policy {policy} is not supported")
    kind = cluster.type
    if kind == cluster_pb2.Cluster.EDS:
        chosen = assignment
    elif kind in _RESOLVED_TYPES:
        chosen = cluster.load_assignment
    else:
        name = cluster_pb2.Cluster.DiscoveryType.Name(kind)
        raise XdsError(f"{what}: type {name} is not supported (EDS, STATIC or STRICT_DNS)")
    found = () if chosen is None else endpoints(chosen, what)
    default = ClusterConfig(cluster.name, ())
    connect = default.connect_timeout
    if cluster.HasField("connect_timeout"):
        connect = _seconds(cluster.connect_timeout)
        if connect <= 0:
            raise XdsError(f"{what}: connect_timeout must be positive")
    discovery: Discovery = "static"
    dns_refresh = default.dns_refresh
    if kind == cluster_pb2.Cluster.STRICT_DNS:
        discovery, dns_refresh = "dns", _ENVOY_DNS_REFRESH
        if cluster.HasField("dns_refresh_rate"):
            dns_refresh = _seconds(cluster.dns_refresh_rate)
            if dns_refresh <= 0:
                raise XdsError(f"{what}: dns_refresh_rate must be positive")
    return ClusterConfig(
        name=cluster.name,
        endpoints=found,
        lb_policy=_LB_POLICIES[cluster.lb_policy],
        connect_timeout=connect,
        circuit_breakers=_breakers(cluster),
        outlier_detection=_outlier(cluster),
        tls=_tls(cluster, what) if cluster.HasField("transport_socket") else None,
        discovery=discovery,
        dns_refresh=dns_refresh,
        health_check=_health_check(cluster, what),
    )


def _health_check(cluster: cluster_pb2.Cluster, what: str) -> HealthCheck | None:
    """``health_checks``: at most one; its probe is the codec's (docs/xds.md)."""
    if not cluster.health_checks:
        return None
    if len(cluster.health_checks) > 1:
        raise XdsError(f"{what}: only one health check is supported")
    hc = cluster.health_checks[0]
    where = f"{what}: health_checks[0]"
    d = HealthCheck()
    timeout, interval = _seconds(hc.timeout), _seconds(hc.interval)
    if timeout <= 0 or interval <= 0:
        raise XdsError(f"{where}: timeout and interval must be positive")
    if timeout > interval:
        raise XdsError(f"{where}: timeout must not exceed interval")
    thresholds = []
    for name, default in (
        ("unhealthy_threshold", d.unhealthy_threshold),
        ("healthy_threshold", d.healthy_threshold),
    ):
        value = getattr(hc, name).value if hc.HasField(name) else default
        if value < 1:
            raise XdsError(f"{where}: {name} must be at least 1")
        thresholds.append(int(value))
    request = d.request
    checker = hc.WhichOneof("health_checker")
    if checker == "http_health_check":
        http = hc.http_health_check
        path = http.path or "/"
        if PROBE_PATH_RE.fullmatch(path) is None:
            raise XdsError(f"{where}: http_health_check.path {path!r} is not an origin-form path")
        if http.host and PROBE_HOST_RE.fullmatch(http.host) is None:
            raise XdsError(f"{where}: http_health_check.host {http.host!r} is not a host")
        request = HealthCheckRequest(path, http.host or None)
    elif checker == "tcp_health_check":
        tcp = hc.tcp_health_check
        if tcp.HasField("send") or tcp.receive:
            raise XdsError(f"{where}: tcp_health_check send/receive payloads are not supported")
    elif checker == "custom_health_check":
        if hc.custom_health_check.name not in _CODEC_PROBE_CHECKERS:
            name = hc.custom_health_check.name
            raise XdsError(f"{where}: custom_health_check {name!r} is not supported")
    else:
        raise XdsError(f"{where}: {checker or 'no health checker'} is not supported")
    return HealthCheck(interval, timeout, thresholds[0], thresholds[1], request)


def _breakers(cluster: cluster_pb2.Cluster) -> CircuitBreakers:
    d = CircuitBreakers()
    for t in cluster.circuit_breakers.thresholds:
        if t.priority != base_pb2.DEFAULT:
            continue
        return CircuitBreakers(
            t.max_connections.value if t.HasField("max_connections") else d.max_connections,
            (
                t.max_pending_requests.value
                if t.HasField("max_pending_requests")
                else d.max_pending_requests
            ),
            t.max_requests.value if t.HasField("max_requests") else d.max_requests,
        )
    return d


def _outlier(cluster: cluster_pb2.Cluster) -> OutlierDetection | None:
    if not cluster.HasField("outlier_detection"):
        return None
    o, d = cluster.outlier_detection, OutlierDetection()
    return OutlierDetection(
        o.consecutive_5xx.value if o.HasField("consecutive_5xx") else d.consecutive_failures,
        _seconds(o.base_ejection_time)
        if o.HasField("base_ejection_time")
        else d.base_ejection_time,
        (
            float(o.max_ejection_percent.value)
            if o.HasField("max_ejection_percent")
            else d.max_ejection_percent
        ),
    )


def _file(source: Any, what: str) -> str | None:
    """A DataSource: only ``filename`` is read (the adapters load PEM files)."""
    kind = source.WhichOneof("specifier")
    if kind is None:
        return None
    if kind != "filename":
        raise XdsError(f"{what}: only filename data sources are supported, got {kind}")
    name: str = source.filename
    return name


def _tls(cluster: cluster_pb2.Cluster, what: str) -> ClusterTls:
    where = f"{what}: transport_socket"
    ctx = tls_pb2.UpstreamTlsContext()
    _unpack(cluster.transport_socket.typed_config, _TLS_TYPE, ctx, where)
    common = ctx.common_tls_context
    cert = key = None
    if common.tls_certificates:
        chain = common.tls_certificates[0]
        cert = _file(chain.certificate_chain, f"{where}: certificate_chain")
        key = _file(chain.private_key, f"{where}: private_key")
        if (cert is None) != (key is None):
            raise XdsError(f"{where}: certificate_chain and private_key come together")
    validation = None
    if common.HasField("validation_context"):
        validation = common.validation_context
    elif common.HasField("combined_validation_context"):
        validation = common.combined_validation_context.default_validation_context
    # As in Envoy, without a validation context the server's certificate is not checked.
    ca = None if validation is None else _file(validation.trusted_ca, f"{where}: trusted_ca")
    return ClusterTls(ca, cert, key, ctx.sni or None, verify=validation is not None)


# -- EDS


def endpoints(
    assignment: endpoint_pb2.ClusterLoadAssignment, what: str = ""
) -> tuple[Endpoint, ...]:
    """The serving endpoints: UNHEALTHY and DRAINING ones are left out."""
    what = what or f"cluster_load_assignment {assignment.cluster_name!r}"
    result = []
    for group in assignment.endpoints:
        for lb in group.lb_endpoints:
            if lb.health_status in _EXCLUDED_HEALTH:
                continue
            address = lb.endpoint.address.socket_address
            if not address.address or not 0 < address.port_value <= 65535:
                raise XdsError(f"{what}: an endpoint needs a socket address and a port")
            weight = lb.load_balancing_weight.value if lb.HasField("load_balancing_weight") else 1
            if weight < 1:
                raise XdsError(f"{what}: endpoint weight must be at least 1")
            result.append(Endpoint(address.address, address.port_value, weight))
    return tuple(result)


# -- RDS (the generic proxy's route configuration)

Conditions = tuple[tuple[str, StringMatcher], ...]


def routes(config: route_pb2.RouteConfiguration, codec: str) -> tuple[RouteConfig, ...]:
    """The matcher tree flattened into an ordered list of routes (first match wins)."""
    what = f"route_configuration {config.name!r}"
    if config.virtual_hosts:
        raise XdsError(f"{what}: virtual_hosts are not supported (use routes)")
    flat: list[tuple[Conditions, action_pb2.RouteAction]] = []
    if config.HasField("routes"):
        _flatten(config.routes, (), flat, codec, what)
    result = []
    for i, (conditions, action) in enumerate(flat):
        name = action.name or f"{config.name}_{i}"
        result.append(RouteConfig(name, _action(action, f"{what}: {name}"), RouteMatch(conditions)))
    return tuple(result)


def _flatten(
    m: matcher_pb2.Matcher,
    prefix: Conditions,
    out: list[tuple[Conditions, action_pb2.RouteAction]],
    codec: str,
    what: str,
) -> None:
    if m.HasField("matcher_list"):
        for fm in m.matcher_list.matchers:
            for conj in _predicate(fm.predicate, codec, what):
                _on_match(fm.on_match, prefix + conj, out, codec, what)
    elif m.HasField("matcher_tree"):
        key = _input_key(m.matcher_tree.input, codec, what)
        tree = m.matcher_tree
        if tree.HasField("custom_match"):
            raise XdsError(f"{what}: custom_match is not supported")
        for value in sorted(tree.exact_match_map.map):
            cond = ((key, StringMatcher("exact", value)),)
            _on_match(tree.exact_match_map.map[value], prefix + cond, out, codec, what)
        # The longest prefix wins: try them longest first.
        for value in sorted(tree.prefix_match_map.map, key=lambda v: (-len(v), v)):
            cond = ((key, StringMatcher("prefix", value)),)
            _on_match(tree.prefix_match_map.map[value], prefix + cond, out, codec, what)
    if m.HasField("on_no_match"):
        _on_match(m.on_no_match, prefix, out, codec, what)


def _on_match(
    om: matcher_pb2.Matcher.OnMatch,
    prefix: Conditions,
    out: list[tuple[Conditions, action_pb2.RouteAction]],
    codec: str,
    what: str,
) -> None:
    if om.HasField("matcher"):
        _flatten(om.matcher, prefix, out, codec, what)
    elif om.HasField("action"):
        action = action_pb2.RouteAction()
        _unpack(om.action.typed_config, _ACTION_TYPE, action, f"{what}: action")
        out.append((prefix, action))


def _predicate(
    p: matcher_pb2.Matcher.MatcherList.Predicate, codec: str, what: str
) -> list[Conditions]:
    """A predicate as an OR of ANDs of metadata matchers."""
    kind = p.WhichOneof("match_type")
    if kind == "single_predicate":
        return [(_single(p.single_predicate, codec, what, invert=False),)]
    if kind == "or_matcher":
        return [c for child in p.or_matcher.predicate for c in _predicate(child, codec, what)]
    if kind == "and_matcher":
        parts = [_predicate(child, codec, what) for child in p.and_matcher.predicate]
        return [tuple(itertools.chain.from_iterable(combo)) for combo in itertools.product(*parts)]
    if kind == "not_matcher" and p.not_matcher.WhichOneof("match_type") == "single_predicate":
        return [(_single(p.not_matcher.single_predicate, codec, what, invert=True),)]
    raise XdsError(f"{what}: a predicate must be single, or, and, or not of a single one")


def _single(
    sp: matcher_pb2.Matcher.MatcherList.Predicate.SinglePredicate,
    codec: str,
    what: str,
    *,
    invert: bool,
) -> tuple[str, StringMatcher]:
    if not sp.HasField("value_match"):
        raise XdsError(f"{what}: custom_match is not supported")
    return _input_key(sp.input, codec, what), _string_matcher(sp.value_match, invert, what)


def _input_key(config: Any, codec: str, what: str) -> str:
    url: str = config.typed_config.type_url
    if not url.startswith(_INPUT_PREFIX):
        raise XdsError(f"{what}: unsupported match input {url}")
    kind = url[len(_INPUT_PREFIX) :]
    if kind == "PropertyMatchInput":
        prop = gp_matcher_pb2.PropertyMatchInput()
        _unpack(config.typed_config, url, prop, f"{what}: input")
        if not prop.property_name:
            raise XdsError(f"{what}: PropertyMatchInput needs a property_name")
        return str(prop.property_name).lower()
    if kind not in _INPUT_NAMES:
        raise XdsError(f"{what}: unsupported match input {kind}")
    name = _INPUT_NAMES[kind]
    key = _INPUT_KEYS.get(codec, {}).get(name, name)
    if key is None:
        raise XdsError(f"{what}: codec {codec!r} has no {name} to match on")
    return key


def _string_matcher(s: string_pb2.StringMatcher, invert: bool, what: str) -> StringMatcher:
    kind = s.WhichOneof("match_pattern")
    value = s.safe_regex.regex if kind == "safe_regex" else getattr(s, kind or "exact", "")
    if kind == "safe_regex":
        pattern = value
    elif kind == "contains":
        pattern = f".*{re.escape(value)}.*"
    elif kind in ("exact", "prefix", "suffix") and not s.ignore_case:
        return StringMatcher(kind, value, invert)
    elif kind == "exact":
        pattern = re.escape(value)
    elif kind == "prefix":
        pattern = f"{re.escape(value)}.*"
    elif kind == "suffix":
        pattern = f".*{re.escape(value)}"
    else:
        raise XdsError(f"{what}: string matcher {kind} is not supported")
    if s.ignore_case:
        pattern = f"(?i:{pattern})"
    try:
        return StringMatcher("regex", pattern, invert)
    except re.error as exc:
        raise XdsError(f"{what}: bad regex {pattern!r}: {exc}") from None


def _action(a: action_pb2.RouteAction, what: str) -> RouteAction:
    kind = a.WhichOneof("cluster_specifier")
    cluster = a.cluster if kind == "cluster" else None
    weighted: Sequence[WeightedCluster] = ()
    if kind == "weighted_clusters":
        weighted = tuple(
            WeightedCluster(c.name, c.weight.value) for c in a.weighted_clusters.clusters
        )
        if not weighted or any(not w.cluster or w.weight < 1 for w in weighted):
            raise XdsError(f"{what}: weighted_clusters need a name and a weight >= 1 each")
    elif not cluster:
        raise XdsError(f"{what}: the action names no cluster")
    timeout = _seconds(a.timeout) if a.HasField("timeout") else 0.0
    retries = None
    if a.HasField("retry_policy"):
        policy = a.retry_policy
        chosen = frozenset(
            _RETRY_ON[word.strip()]
            for word in policy.retry_on.split(",")
            if word.strip() in _RETRY_ON
        )
        attempts = policy.num_retries.value if policy.HasField("num_retries") else 1
        retries = RetryPolicy(attempts, chosen or RetryPolicy().retry_on)
    return RouteAction(
        cluster=cluster,
        weighted_clusters=tuple(weighted),
        timeout=timeout if timeout > 0 else None,
        retries=retries,
    )


# -- the whole config


def _targets(route: RouteConfig) -> Iterator[str]:
    if route.action.cluster:
        yield route.action.cluster
    for w in route.action.weighted_clusters:
        yield w.cluster


def build_config(base: Config, rds: Mapping[str, str], resources: XdsResources) -> Config:
    """``base`` (the static file) with the control plane's clusters added and the routes of
    each listener in ``rds`` (listener name -> route configuration name) filled in."""
    clusters = list(base.clusters)
    static = {c.name for c in base.clusters}
    for name in sorted(resources.clusters):
        message = resources.clusters[name].message
        assert isinstance(message, cluster_pb2.Cluster)
        if name in static:
            raise XdsError(f"cluster {name!r}: a cluster of the static config has this name")
        assignment = None
        if message.type == cluster_pb2.Cluster.EDS:
            found = resources.endpoints.get(eds_name(message))
            if found is not None:
                assert isinstance(found.message, endpoint_pb2.ClusterLoadAssignment)
                assignment = found.message
        clusters.append(cluster_config(message, assignment))
    known = {c.name for c in clusters}
    listeners: list[ListenerConfig] = []
    for listener in base.listeners:
        route_name = rds.get(listener.name)
        found = None if route_name is None else resources.routes.get(route_name)
        if found is not None:
            assert isinstance(found.message, route_pb2.RouteConfiguration)
            listener = replace(listener, routes=routes(found.message, listener.codec))
        for route in listener.routes:
            for target in _targets(route):
                if target not in known:
                    where = f"route_configuration {route_name!r}" if found else "static config"
                    raise UnknownClusterError(
                        f"{where}: route {route.name!r} of listener {listener.name!r} "
                        f"names unknown cluster {target!r}"
                    )
        listeners.append(listener)
    raw = dict(base.raw)
    raw["xds_resources"] = {
        kind: {
            name: {"version": r.version, "resource": json_format.MessageToDict(r.message)}
            for name, r in sorted(table.items())
        }
        for kind, table in (
            ("clusters", resources.clusters),
            ("endpoints", resources.endpoints),
            ("routes", resources.routes),
        )
    }
    return replace(base, listeners=tuple(listeners), clusters=tuple(clusters), raw=raw)
