"""The config checker: top level, listeners (with their codec) and clusters."""

from __future__ import annotations

import copy
import importlib
import re
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, cast

from metaprotocol.codecs.registry import CodecReferenceError
from metaprotocol.configfile.discovery import read_discovery, read_health_check
from metaprotocol.configfile.redis_cluster import (
    check_redis_cluster_listeners,
    read_redis_cluster,
)
from metaprotocol.configfile.routing import RoutingReader
from metaprotocol.configfile.secrets import read_credentials, redacted
from metaprotocol.configfile.tls import cluster_tls, listener_tls
from metaprotocol.configfile.values import describe, hint, join_path
from metaprotocol.configfile.xds import read_rds_name, read_xds
from metaprotocol.core.codec import CodecFactory, Side
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
    Config,
    Endpoint,
    LbPolicy,
    ListenerConfig,
    OutlierDetection,
    RateLimitRedisConfig,
    RouteConfig,
    TracingConfig,
)
from metaprotocol.core.secrets import Credentials

__all__ = ["LB_POLICIES", "Checker"]

LB_POLICIES: tuple[LbPolicy, ...] = (
    "round_robin",
    "random",
    "least_request",
    "ring_hash",
    "maglev",
)
_TOP_KEYS = (
    "admin",
    "listeners",
    "clusters",
    "access_log",
    "global_ratelimit_redis",
    "tracing",
    "xds",
)
_TRACING_KEYS = ("otlp_endpoint", "service_name", "sampling")
_LISTENER_KEYS = (
    "name",
    "address",
    "codec",
    "codec_options",
    "idle_timeout",
    "request_timeout",
    "max_message_size",
    "max_pending_requests",
    "output_buffer_limit",
    "filters",
    "routes",
    "tls",
)
_CLUSTER_KEYS = (
    "name",
    "endpoints",
    "lb_policy",
    "connect_timeout",
    "max_connections_per_endpoint",
    "circuit_breakers",
    "outlier_detection",
    "auth",
    "tls",
    "discovery",
    "dns_refresh",
    "health_check",
    "redis_cluster",
)
_RATELIMIT_REDIS_KEYS = ("address", "auth", "db", "tls")
_OPTION_PROBLEM_RE = re.compile(r"(?:\w+ codec_options\.)?(?P<key>\w+): (?P<rest>.+)", re.DOTALL)
_BREAKER_KEYS = ("max_connections", "max_pending_requests", "max_requests")
_OUTLIER_KEYS = ("consecutive_failures", "base_ejection_time", "max_ejection_percent")


class Checker(RoutingReader):
    """Turns parsed YAML/JSON into a ``Config``, collecting every error on the way.

    ``codecs`` (name -> codec class) is consulted before the codec registry (built-ins,
    entry points, ``module:Class`` references), for tests and embedding.
    """

    def __init__(self, source: str, codecs: Mapping[str, CodecFactory] | None = None) -> None:
        super().__init__(source)
        self.codecs = codecs
        self.rds_paths: list[str] = []  # listeners' routes.rds, which need a top-level xds

    def config(self, data: object) -> Config:
        top = self.mapping(data, "", None, required=("listeners",))
        if top is None:
            return Config(listeners=(), clusters=())
        for key in top:
            # Top-level `x-...` keys are free for YAML anchors (`x-defaults: &defaults`).
            if isinstance(key, str) and key not in _TOP_KEYS and not key.startswith("x-"):
                self.error(join_path("", key), f"unknown key{hint(key, _TOP_KEYS)}")
        admin = self.optional(top, "admin", "", self.admin)
        listeners = self.optional(top, "listeners", "", self.listeners) or ()
        clusters = self.optional(top, "clusters", "", self.clusters) or ()
        access_log = self.optional(top, "access_log", "", self.access_log)
        log_metadata: tuple[str, ...] = ()
        log_spec = top.get("access_log")
        if isinstance(log_spec, Mapping) and "metadata" in log_spec:
            keys = self.strings(log_spec["metadata"], "access_log.metadata") or ()
            log_metadata = tuple(k if k == "*" else k.lower() for k in keys)
        redis = self.optional(top, "global_ratelimit_redis", "", self.redis_settings)
        self.optional(top, "xds", "", lambda v, p: read_xds(self, v, p))
        if top.get("xds") is None:
            for path in self.rds_paths:
                self.error(path, "routes from RDS need a top-level xds block")
        known = {c.name for c in clusters}
        # Without every cluster's name, "unknown cluster" would only echo an earlier error.
        listed = top.get("clusters")
        complete = listed is None or (
            isinstance(listed, list) and len(clusters) == len(listed) and all(known)
        )
        for path, name in self.cluster_refs if complete else ():
            if name not in known:
                self.error(path, f"unknown cluster {name!r}{hint(name, known)}")
        if complete:
            self.check_upstream_logins(listeners, clusters)
            self.check_health_probes(listeners, clusters)
            check_redis_cluster_listeners(
                self, listeners, clusters, self.lookup_codec, _cluster_names
            )
        raw = redacted(copy.deepcopy(dict(top)))  # what /config_dump shows: no secrets
        tracing = self.optional(top, "tracing", "", self.tracing)
        return Config(listeners, clusters, admin, access_log, log_metadata, raw, redis, tracing)

    def check_upstream_logins(
        self, listeners: tuple[ListenerConfig, ...], clusters: tuple[ClusterConfig, ...]
    ) -> None:
        """A cluster with ``auth`` must only serve listeners whose codec can log in
        upstream (the ``preamble`` hook): anything else would send the requests unlogged."""
        with_auth = {c.name: i for i, c in enumerate(clusters) if c.auth is not None}
        if not with_auth:
            return
        for listener in listeners:
            if not listener.codec:
                continue
            try:
                factory = self.lookup_codec(listener.codec)
            except Exception:  # reported where the listener names its codec
                continue
            if hasattr(factory, "preamble"):
                continue
            for name in sorted(_cluster_names(listener) & set(with_auth)):
                self.error(
                    f"clusters[{with_auth[name]}].auth",
                    f"listener {listener.name!r} routes to this cluster with codec "
                    f"{listener.codec!r}, which cannot log in to its upstreams",
                )

    def check_health_probes(
        self, listeners: tuple[ListenerConfig, ...], clusters: tuple[ClusterConfig, ...]
    ) -> None:
        """A cluster with ``health_check`` is probed in one protocol: the listeners routing
        to it must share a codec (the probe is that codec's)."""
        checked = {c.name: i for i, c in enumerate(clusters) if c.health_check is not None}
        codecs: dict[str, dict[str, str]] = {}  # cluster -> codec -> a listener using it
        for listener in listeners:
            for name in _cluster_names(listener) & set(checked):
                codecs.setdefault(name, {}).setdefault(listener.codec, listener.name)
        for name, seen in sorted(codecs.items()):
            if len(seen) > 1:
                which = ", ".join(f"{lst!r} ({codec})" for codec, lst in sorted(seen.items()))
                self.error(
                    f"clusters[{checked[name]}].health_check",
                    f"listeners of different codecs route to this cluster ({which}): "
                    "its probe needs one protocol",
                )

    def admin(self, value: object, path: str) -> AdminConfig | None:
        m = self.mapping(value, path, ("address", "idle_timeout", "max_connections"))
        if m is None:
            return None
        d = AdminConfig()
        host, port = self.field(m, "address", path, self.listen_address, (d.host, d.port))
        idle = self.field(m, "idle_timeout", path, self.positive_duration, d.idle_timeout)
        most = self.field(m, "max_connections", path, self.positive, d.max_connections)
        return AdminConfig(host, port, idle, most)

    def access_log(self, value: object, path: str) -> str | None:
        if isinstance(value, Mapping):
            m = self.mapping(value, path, ("path", "metadata"), ("path",))
            return None if m is None else self.optional(m, "path", path, self.string)
        return self.string(value, path)

    def tracing(self, value: object, path: str) -> TracingConfig | None:
        m = self.mapping(value, path, _TRACING_KEYS, ("otlp_endpoint",))
        if m is None:
            return None
        endpoint = self.optional(m, "otlp_endpoint", path, self.otlp_endpoint)
        d = TracingConfig("")
        service = self.field(m, "service_name", path, self.string, d.service_name)
        sampling = self.field(m, "sampling", path, self.fraction, d.sampling)
        return None if endpoint is None else TracingConfig(endpoint, service, sampling)

    def otlp_endpoint(self, value: object, path: str) -> str | None:
        text = self.string(value, path)
        if text is not None and not text.startswith(("http://", "https://")):
            self.error(path, f"expected an http:// or https:// URL, got {text!r}")
            return None
        return text

    def redis_settings(self, value: object, path: str) -> RateLimitRedisConfig | None:
        m = self.mapping(value, path, _RATELIMIT_REDIS_KEYS, ("address",))
        if m is None:
            return None
        address = self.optional(m, "address", path, self.address)
        auth = self.optional(m, "auth", path, self.credentials)
        db = self.field(m, "db", path, self.count, 0)
        tls = self.optional(m, "tls", path, lambda v, q: cluster_tls(self, v, q))
        if address is None:
            return None
        return RateLimitRedisConfig(address[0], address[1], auth, db, tls)

    def credentials(self, value: object, path: str) -> Credentials | None:
        return read_credentials(self, value, path)

    # -- listeners

    def listener_routes(
        self, value: object, path: str, codec: CodecFactory | None
    ) -> tuple[RouteConfig, ...] | None:
        """A list of routes, or ``{rds: NAME}``: none until the xDS control plane sends them."""
        if isinstance(value, Mapping):
            if read_rds_name(self, value, path) is not None:
                self.rds_paths.append(join_path(path, "rds"))
            return ()
        return self.routes(value, path, codec)

    def listeners(self, value: object, path: str) -> tuple[ListenerConfig, ...] | None:
        items = self.sequence(value, path)
        if items is None:
            return None
        if not items:
            self.error(path, "at least one listener is required")
        result: list[ListenerConfig] = []
        names: set[str] = set()
        bound: dict[tuple[str, int], str] = {}
        for i, item in enumerate(items):
            p = f"{path}[{i}]"
            listener = self.listener(item, p)
            if listener is None:
                continue
            if listener.name and listener.name in names:
                self.error(join_path(p, "name"), f"duplicate listener name {listener.name!r}")
            names.add(listener.name)
            address = (listener.host, listener.port)
            if listener.host and listener.port and address in bound:
                where = f"{listener.host}:{listener.port}"
                self.error(
                    join_path(p, "address"), f"{where} is already used by {bound[address]!r}"
                )
            bound.setdefault(address, listener.name)
            result.append(listener)
        return tuple(result)

    def listener(self, value: object, path: str) -> ListenerConfig | None:
        m = self.mapping(value, path, _LISTENER_KEYS, required=("name", "address", "codec"))
        if m is None:
            return None
        name = self.field(m, "name", path, self.string, "")
        host, port = self.field(m, "address", path, self.listen_address, ("", 0))
        max_size = self.field(m, "max_message_size", path, self.size, DEFAULT_MAX_MESSAGE_SIZE)
        output_limit = self.field(
            m, "output_buffer_limit", path, self.size, DEFAULT_OUTPUT_BUFFER_LIMIT
        )
        if output_limit < max_size:  # one whole reply must always fit
            self.error(
                join_path(path, "output_buffer_limit"),
                f"must be at least max_message_size ({max_size} bytes), got {output_limit}",
            )
        options_path = join_path(path, "codec_options")
        options = self.optional(m, "codec_options", path, lambda v, q: self.mapping(v, q, None))
        options = dict(options or {})
        if "auth" in options:  # a login clients give the proxy: credentials, for any codec
            auth = self.optional(options, "auth", options_path, self.credentials)
            if auth is None:
                del options["auth"]  # reported already: the codec is asked about the rest
            else:
                options["auth"] = auth
        codec_name = self.field(m, "codec", path, self.string, "")
        codec = self.codec(codec_name, options, max_size, path) if codec_name else None
        if codec is not None:
            self.codec_options(codec, options, max_size, options_path)
        return ListenerConfig(
            name=name,
            host=host,
            port=port,
            codec=codec_name,
            routes=self.optional(m, "routes", path, lambda v, q: self.listener_routes(v, q, codec))
            or (),
            codec_options=dict(options),
            filters=self.optional(m, "filters", path, self.filters) or (),
            idle_timeout=self.timeout_setting(m, "idle_timeout", path, DEFAULT_IDLE_TIMEOUT),
            request_timeout=self.timeout_setting(
                m, "request_timeout", path, DEFAULT_REQUEST_TIMEOUT
            ),
            max_message_size=max_size,
            max_pending_requests=self.field(
                m, "max_pending_requests", path, self.positive, DEFAULT_MAX_PENDING_REQUESTS
            ),
            output_buffer_limit=output_limit,
            tls=self.optional(m, "tls", path, lambda v, q: listener_tls(self, v, q)),
        )

    def timeout_setting(
        self, m: Mapping[str, Any], key: str, path: str, default: float
    ) -> float | None:
        """A listener timeout: absent means the default; ``0`` or ``null`` disables it."""
        if key not in m:
            return default
        return self.optional(m, key, path, self.timeout_or_off) or None

    def codec(
        self, name: str, options: Mapping[str, Any], max_size: int, path: str
    ) -> CodecFactory | None:
        codec_path = join_path(path, "codec")
        try:
            return self.lookup_codec(name)
        except CodecReferenceError as exc:  # module:Class: says what is wrong with it
            self.error(codec_path, str(exc))
        except (ImportError, AttributeError) as exc:  # a broken module or entry point
            self.error(codec_path, f"codec {name!r} failed to load: {exc}")
        except (LookupError, ValueError):
            names = self.codec_names()
            more = hint(name, names) or f" (known: {', '.join(names)})"
            module, dot, attr = name.rpartition(".")
            if dot and module and attr:  # a class named with a dot where the colon goes
                more += f"; to load a codec class, write '{module}:{attr}'"
            self.error(codec_path, f"unknown codec {name!r}{more}")
        return None

    def lookup_codec(self, name: str) -> CodecFactory:
        if self.codecs is not None and name in self.codecs:
            return self.codecs[name]
        # Imported by name (not `from ... import`) so tests can stand in a registry module.
        registry = importlib.import_module("metaprotocol.codecs.registry")
        return cast(CodecFactory, registry.get_codec(name))

    def codec_names(self) -> list[str]:
        names = set(self.codecs or ())
        registry = importlib.import_module("metaprotocol.codecs.registry")
        listed = getattr(registry, "codec_names", None)
        if callable(listed):
            names.update(str(n) for n in listed())
        else:
            names.update(ep.name for ep in entry_points(group="metaprotocol.codecs"))
        return sorted(names)

    def codec_options(
        self, codec: CodecFactory, options: Mapping[str, Any], max_size: int, path: str
    ) -> None:
        """Ask the codec: its ``validate_options`` if it has one, else build a codec."""
        validate = getattr(codec, "validate_options", None)
        if callable(validate):
            problems = [str(p) for p in validate(options)]
        else:
            try:
                codec(Side.DOWNSTREAM, options, max_size)
                problems = []
            except (ValueError, TypeError) as exc:
                problems = [str(exc)]
        for problem in problems:
            # "transport: bad" or "thrift codec_options.transport: bad" name one option:
            # report it at listeners[i].codec_options.transport.
            m = _OPTION_PROBLEM_RE.fullmatch(problem)
            if m is not None and m["key"] in options:
                self.error(join_path(path, m["key"]), m["rest"])
            else:
                self.error(path, problem)

    # -- clusters

    def clusters(self, value: object, path: str) -> tuple[ClusterConfig, ...] | None:
        items = self.sequence(value, path)
        if items is None:
            return None
        result: list[ClusterConfig] = []
        names: set[str] = set()
        for i, item in enumerate(items):
            p = f"{path}[{i}]"
            cluster = self.cluster(item, p)
            if cluster is None:
                continue
            if cluster.name and cluster.name in names:
                self.error(join_path(p, "name"), f"duplicate cluster name {cluster.name!r}")
            names.add(cluster.name)
            result.append(cluster)
        return tuple(result)

    def cluster(self, value: object, path: str) -> ClusterConfig | None:
        m = self.mapping(value, path, _CLUSTER_KEYS, required=("name", "endpoints"))
        if m is None:
            return None
        per_endpoint = self.field(
            m,
            "max_connections_per_endpoint",
            path,
            self.positive,
            DEFAULT_MAX_UPSTREAM_CONNECTIONS_PER_ENDPOINT,
        )
        connect = self.field(
            m, "connect_timeout", path, self.positive_duration, DEFAULT_CONNECT_TIMEOUT
        )
        discovery, dns_refresh = read_discovery(self, m, path)
        return ClusterConfig(
            name=self.field(m, "name", path, self.string, ""),
            endpoints=self.optional(m, "endpoints", path, self.endpoints) or (),
            lb_policy=self.field(m, "lb_policy", path, self.lb_policy, "round_robin"),
            connect_timeout=connect,
            max_connections_per_endpoint=per_endpoint,
            circuit_breakers=self.field(
                m, "circuit_breakers", path, self.breakers, CircuitBreakers()
            ),
            outlier_detection=self.optional(m, "outlier_detection", path, self.outlier),
            auth=self.optional(m, "auth", path, self.credentials),
            tls=self.optional(m, "tls", path, lambda v, q: cluster_tls(self, v, q)),
            discovery=discovery,
            dns_refresh=dns_refresh,
            health_check=self.optional(
                m, "health_check", path, lambda v, q: read_health_check(self, v, q)
            ),
            redis_cluster=self.optional(
                m, "redis_cluster", path, lambda v, q: read_redis_cluster(self, m, v, q)
            ),
        )

    def lb_policy(self, value: object, path: str) -> LbPolicy | None:
        return cast("LbPolicy | None", self.choice(value, path, LB_POLICIES))

    def endpoints(self, value: object, path: str) -> tuple[Endpoint, ...] | None:
        """``host:port`` strings or ``{address: host:port, weight: n}`` mappings."""
        items = self.sequence(value, path)
        if items is None:
            return None
        if not items:
            self.error(path, "at least one endpoint is required")
        result = []
        for i, item in enumerate(items):
            p = f"{path}[{i}]"
            weight = 1
            if isinstance(item, Mapping):
                m = self.mapping(item, p, ("address", "weight"), ("address",))
                if m is None or m.get("address") is None:
                    continue
                weight = self.field(m, "weight", p, self.positive, 1)
                p, item = join_path(p, "address"), m["address"]
            elif not isinstance(item, str):
                self.error(p, f"expected host:port or {{address, weight}}, got {describe(item)}")
                continue
            address = self.address(item, p)
            if address is not None:
                result.append(Endpoint(address[0], address[1], weight))
        return tuple(result)

    def breakers(self, value: object, path: str) -> CircuitBreakers | None:
        m = self.mapping(value, path, _BREAKER_KEYS)
        if m is None:
            return None
        d = CircuitBreakers()
        return CircuitBreakers(
            self.field(m, "max_connections", path, self.positive, d.max_connections),
            self.field(m, "max_pending_requests", path, self.count, d.max_pending_requests),
            self.field(m, "max_requests", path, self.positive, d.max_requests),
        )

    def outlier(self, value: object, path: str) -> OutlierDetection | None:
        m = self.mapping(value, path, _OUTLIER_KEYS)
        if m is None:
            return None
        d = OutlierDetection()
        return OutlierDetection(
            self.field(m, "consecutive_failures", path, self.positive, d.consecutive_failures),
            self.field(m, "base_ejection_time", path, self.positive_duration, d.base_ejection_time),
            self.field(m, "max_ejection_percent", path, self.percentage, d.max_ejection_percent),
        )


def _cluster_names(listener: ListenerConfig) -> set[str]:
    """Every cluster ``listener``'s routes may send a request (or a mirror copy) to."""
    names: set[str] = set()
    for route in listener.routes:
        action = route.action
        if action.cluster is not None:
            names.add(action.cluster)
        names.update(w.cluster for w in action.weighted_clusters)
        names.update(m.cluster for m in action.mirror)
    return names
