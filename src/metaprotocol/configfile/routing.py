"""Reading a listener's routes, matchers and filter chain from config data."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, cast

from metaprotocol.configfile.values import Reader, describe, hint, join_path, parse_duration
from metaprotocol.core.codec import CodecFactory
from metaprotocol.core.config import (
    FaultConfig,
    FilterConfig,
    GlobalRateLimitConfig,
    LocalRateLimitCondition,
    LocalRateLimitConfig,
    MatcherKind,
    MirrorPolicy,
    PluginFilterConfig,
    RetryPolicy,
    RouteAction,
    RouteConfig,
    RouteMatch,
    StringMatcher,
    TokenBucket,
    WeightedCluster,
)
from metaprotocol.core.message import ErrorType, Mutation
from metaprotocol.plugins import filter_plugin_names, find_filter_factory

__all__ = ["FILTER_NAMES", "MATCHER_KINDS", "RATE_UNITS", "RETRY_ON", "RoutingReader"]

FILTER_NAMES = ("local_ratelimit", "global_ratelimit", "fault", "router")
MATCHER_KINDS: tuple[MatcherKind, ...] = ("exact", "prefix", "suffix", "regex", "present")
RETRY_ON = ("connect_failure", "reset", "timeout")
RATE_UNITS = {"second": 1.0, "minute": 60.0, "hour": 3600.0}
_ROUTE_ACTION_KEYS = (
    "cluster",
    "weighted_clusters",
    "hash_policy",
    "mirror",
    "request_mutation",
    "response_mutation",
    "timeout",
    "retries",
)
_GLOBAL_RATELIMIT_KEYS = (
    "domain",
    "descriptors",
    "requests_per_unit",
    "unit",
    "failure_mode_deny",
    "timeout",
)
_TOKEN_BUCKET_KEYS = ("max_tokens", "tokens_per_fill", "fill_interval")


class RoutingReader(Reader):
    """Routes and filters; remembers every cluster reference to check once clusters are known."""

    def __init__(self, source: str) -> None:
        super().__init__(source)
        self.cluster_refs: list[tuple[str, str]] = []  # (path, cluster name)

    def cluster_ref(self, value: object, path: str) -> str | None:
        name = self.string(value, path)
        if name is not None:
            self.cluster_refs.append((path, name))
        return name

    def metadata_keys(self, value: object, path: str) -> tuple[str, ...] | None:
        """Metadata keys (lower-cased: codecs lower-case every property key)."""
        keys = self.strings(value, path)
        return None if keys is None else tuple(k.lower() for k in keys)

    # -- routes

    def routes(
        self, value: object, path: str, codec: CodecFactory | None
    ) -> tuple[RouteConfig, ...] | None:
        items = self.sequence(value, path)
        if items is None:
            return None
        result: list[RouteConfig] = []
        names: set[str] = set()
        for i, item in enumerate(items):
            p = f"{path}[{i}]"
            m = self.mapping(item, p, ("name", "match", "route"), ("route",))
            if m is None:
                continue
            name = self.field(m, "name", p, self.string, f"route_{i}")
            if name in names:
                self.error(join_path(p, "name"), f"duplicate route name {name!r}")
            names.add(name)
            match = self.field(m, "match", p, self.route_match, RouteMatch())
            action = self.optional(m, "route", p, lambda v, q: self.route_action(v, q, codec))
            result.append(RouteConfig(name, action or RouteAction(), match))
        return tuple(result)

    def route_match(self, value: object, path: str) -> RouteMatch | None:
        m = self.mapping(value, path, ("metadata",))
        if m is None:
            return None
        p = join_path(path, "metadata")
        metadata = self.optional(m, "metadata", path, lambda v, q: self.mapping(v, q, None))
        matchers = []
        for key, spec in (metadata or {}).items():
            matcher = self.matcher(spec, join_path(p, str(key)))
            if matcher is not None:
                matchers.append((str(key).lower(), matcher))
        return RouteMatch(tuple(matchers))

    def matcher(self, value: object, path: str) -> StringMatcher | None:
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return StringMatcher("exact", str(value))  # shorthand: `key: value` means exact
        before = len(self.errors)
        m = self.mapping(value, path, (*MATCHER_KINDS, "invert"))
        if m is None:
            return None
        kinds = [k for k in MATCHER_KINDS if k in m]
        if not kinds and len(self.errors) > before:
            return None  # a misspelt kind was reported already
        if len(kinds) != 1:
            self.error(path, f"expected exactly one of {', '.join(MATCHER_KINDS)}")
            return None
        kind = kinds[0]
        invert = self.field(m, "invert", path, self.boolean, False)
        kp = join_path(path, kind)
        if kind == "present":
            present = self.boolean(m[kind], kp)
            # `present: false` asks for an absent key: the inverse of present.
            return None if present is None else StringMatcher(kind, "", invert == present)
        text = self.text(m[kind], kp)
        if text is None:
            return None
        if kind == "regex":
            try:
                return StringMatcher(kind, text, invert, re.compile(text))
            except re.error as exc:
                self.error(kp, f"invalid regex {text!r}: {exc}")
                return None
        return StringMatcher(kind, text, invert)

    def route_action(
        self, value: object, path: str, codec: CodecFactory | None
    ) -> RouteAction | None:
        m = self.mapping(value, path, _ROUTE_ACTION_KEYS)
        if m is None:
            return None
        if ("cluster" in m) == ("weighted_clusters" in m):
            self.error(path, "expected exactly one of cluster or weighted_clusters")
        mutations: list[Mutation | None] = []
        for key in ("request_mutation", "response_mutation"):
            mutation = self.optional(m, key, path, self.mutation)
            if mutation and codec is not None and not codec.supports_mutation:
                self.error(join_path(path, key), f"codec {codec.name!r} does not support mutation")
            elif mutation and codec is not None:
                # Optional codec hook: what it could never put on the wire (a CR in a header
                # value, say) fails here rather than on every request.
                validate = getattr(codec, "validate_mutation", None)
                if callable(validate):
                    for problem in validate(mutation, key == "request_mutation"):
                        self.error(join_path(path, key), str(problem))
            mutations.append(mutation or None)
        return RouteAction(
            cluster=self.optional(m, "cluster", path, self.cluster_ref),
            weighted_clusters=self.optional(m, "weighted_clusters", path, self.weighted) or (),
            hash_policy=self.optional(m, "hash_policy", path, self.metadata_keys) or (),
            mirror=self.optional(m, "mirror", path, self.mirrors) or (),
            request_mutation=mutations[0],
            response_mutation=mutations[1],
            timeout=self.optional(m, "timeout", path, self.positive_duration),
            retries=self.optional(m, "retries", path, self.retries),
        )

    def weighted(self, value: object, path: str) -> tuple[WeightedCluster, ...] | None:
        items = self.sequence(value, path)
        if items is None:
            return None
        if not items:
            self.error(path, "at least one cluster is required")
        result = []
        for i, item in enumerate(items):
            p = f"{path}[{i}]"
            m = self.mapping(item, p, ("cluster", "weight"), ("cluster", "weight"))
            if m is not None:
                cluster = self.field(m, "cluster", p, self.cluster_ref, "")
                weight = self.field(m, "weight", p, self.positive, 1)
                result.append(WeightedCluster(cluster, weight))
        return tuple(result)

    def mirrors(self, value: object, path: str) -> tuple[MirrorPolicy, ...] | None:
        """One ``{cluster, fraction}`` mapping or a list of them."""
        many = isinstance(value, (list, tuple))
        items = list(cast(Sequence[Any], value)) if many else [value]
        result = []
        for i, item in enumerate(items):
            p = f"{path}[{i}]" if many else path
            m = self.mapping(item, p, ("cluster", "fraction"), ("cluster",))
            if m is not None:
                cluster = self.field(m, "cluster", p, self.cluster_ref, "")
                fraction = self.field(m, "fraction", p, self.fraction, 1.0)
                result.append(MirrorPolicy(cluster, fraction))
        return tuple(result)

    def mutation(self, value: object, path: str) -> Mutation | None:
        m = self.mapping(value, path, ("add", "remove"))
        if m is None:
            return None
        add: list[tuple[str, str]] = []
        p = join_path(path, "add")
        pairs = self.optional(m, "add", path, lambda v, q: self.mapping(v, q, None))
        for key, item in (pairs or {}).items():
            text = self.text(item, join_path(p, str(key)))
            if text is not None:
                add.append((str(key), text))
        remove = self.optional(m, "remove", path, self.strings) or ()
        return Mutation(tuple(add), remove)

    def retries(self, value: object, path: str) -> RetryPolicy | None:
        m = self.mapping(value, path, ("attempts", "retry_on", "non_idempotent"))
        if m is None:
            return None
        non_idempotent = self.optional(m, "non_idempotent", path, self.route_match)
        default = RetryPolicy()
        retry_on = default.retry_on
        if m.get("retry_on") is not None:
            p = join_path(path, "retry_on")
            items = self.sequence(m["retry_on"], p) or []
            chosen = (self.choice(x, f"{p}[{i}]", RETRY_ON) for i, x in enumerate(items))
            retry_on = frozenset(c for c in chosen if c is not None)
        attempts = self.field(m, "attempts", path, self.count, default.attempts)
        return RetryPolicy(attempts, retry_on, non_idempotent)

    # -- filters

    def filters(self, value: object, path: str) -> tuple[FilterConfig, ...] | None:
        """A list of ``{name: settings}`` (or bare names); the router, if listed, comes last."""
        items = self.sequence(value, path)
        if items is None:
            return None
        result: list[FilterConfig] = []
        for i, item in enumerate(items):
            p = f"{path}[{i}]"
            body: object = None
            if isinstance(item, str):
                name = item
            elif isinstance(item, Mapping) and len(item) == 1:
                name, body = next(iter(item.items()))
            else:
                self.error(p, f"expected a filter like {{router: {{}}}}, got {describe(item)}")
                continue
            fp = join_path(p, str(name))
            if name not in FILTER_NAMES:
                plugin = self.plugin_filter(name, body, p, fp)
                if plugin is not None:
                    result.append(plugin)
                continue
            if name == "router":
                if i != len(items) - 1:
                    self.error(p, "router must be the last filter")
                if body is not None:
                    self.mapping(body, fp, ())
                continue
            built = self.filter(name, {} if body is None else body, fp)
            if built is not None:
                result.append(built)
        return tuple(result)

    def plugin_filter(
        self, name: object, body: object, path: str, body_path: str
    ) -> PluginFilterConfig | None:
        """A third-party filter from the ``metaprotocol.filters`` entry-point group."""
        factory = find_filter_factory(name) if isinstance(name, str) else None
        if factory is None:
            known = (*FILTER_NAMES, *filter_plugin_names())
            self.error(path, f"unknown filter {name!r}{hint(str(name), known)}")
            return None
        settings = self.mapping({} if body is None else body, body_path, None)
        if settings is None:
            return None
        validate = getattr(factory, "validate", None)
        if validate is not None:
            for problem in validate(settings):
                self.error(body_path, str(problem))
        return PluginFilterConfig(str(name), factory, dict(settings))

    def filter(self, name: str, value: object, path: str) -> FilterConfig | None:
        if name == "local_ratelimit":
            m = self.mapping(value, path, ("token_bucket", "conditions"))
            if m is None:
                return None
            bucket = self.optional(m, "token_bucket", path, self.token_bucket)
            conditions = self.optional(m, "conditions", path, self.conditions) or ()
            return LocalRateLimitConfig(bucket, conditions)
        if name == "global_ratelimit":
            return self.global_ratelimit(value, path)
        return self.fault(value, path)

    def global_ratelimit(self, value: object, path: str) -> GlobalRateLimitConfig | None:
        m = self.mapping(value, path, _GLOBAL_RATELIMIT_KEYS, ("domain", "requests_per_unit"))
        if m is None:
            return None
        d = GlobalRateLimitConfig("", (), 0)
        return GlobalRateLimitConfig(
            domain=self.field(m, "domain", path, self.string, ""),
            descriptors=self.optional(m, "descriptors", path, self.metadata_keys) or (),
            requests_per_unit=self.field(m, "requests_per_unit", path, self.count, 0),
            unit=self.field(m, "unit", path, self.rate_unit, d.unit),
            failure_mode_deny=self.field(m, "failure_mode_deny", path, self.boolean, False),
            timeout=self.field(m, "timeout", path, self.positive_duration, d.timeout),
        )

    def fault(self, value: object, path: str) -> FaultConfig | None:
        m = self.mapping(value, path, ("abort", "delay"))
        if m is None:
            return None
        d = FaultConfig()
        abort_percent, abort_error, delay_percent, delay = 0.0, d.abort_error, 0.0, 0.0
        if m.get("abort") is not None:
            p = join_path(path, "abort")
            abort = self.mapping(m["abort"], p, ("percentage", "error"), ("percentage",))
            if abort is not None:
                abort_percent = self.field(abort, "percentage", p, self.percentage, 0.0)
                abort_error = self.field(abort, "error", p, self.error_type, abort_error)
        if m.get("delay") is not None:
            p = join_path(path, "delay")
            keys = ("percentage", "duration")
            spec = self.mapping(m["delay"], p, keys, keys)
            if spec is not None:
                delay_percent = self.field(spec, "percentage", p, self.percentage, 0.0)
                delay = self.field(spec, "duration", p, self.positive_duration, 0.0)
        return FaultConfig(abort_percent, abort_error, delay_percent, delay)

    def token_bucket(self, value: object, path: str) -> TokenBucket | None:
        m = self.mapping(value, path, _TOKEN_BUCKET_KEYS, _TOKEN_BUCKET_KEYS)
        if m is None:
            return None
        return TokenBucket(
            max_tokens=self.field(m, "max_tokens", path, self.count, 0),
            tokens_per_fill=self.field(m, "tokens_per_fill", path, self.count, 0),
            fill_interval=self.field(m, "fill_interval", path, self.positive_duration, 1.0),
        )

    def conditions(self, value: object, path: str) -> tuple[LocalRateLimitCondition, ...] | None:
        items = self.sequence(value, path)
        if items is None:
            return None
        result = []
        for i, item in enumerate(items):
            p = f"{path}[{i}]"
            keys = ("match", "token_bucket")
            m = self.mapping(item, p, keys, keys)
            if m is None:
                continue
            match = self.field(m, "match", p, self.route_match, RouteMatch())
            bucket = self.optional(m, "token_bucket", p, self.token_bucket)
            if bucket is not None:
                result.append(LocalRateLimitCondition(match, bucket))
        return tuple(result)

    def rate_unit(self, value: object, path: str) -> float | None:
        if isinstance(value, str) and value in RATE_UNITS:
            return RATE_UNITS[value]
        try:
            seconds = parse_duration(value)
        except ValueError:
            seconds = 0.0
        if seconds > 0:
            return seconds
        self.error(path, f"expected second, minute, hour or a duration, got {describe(value)}")
        return None

    def error_type(self, value: object, path: str) -> ErrorType | None:
        chosen = self.choice(value, path, [e.value for e in ErrorType])
        return None if chosen is None else ErrorType(chosen)
