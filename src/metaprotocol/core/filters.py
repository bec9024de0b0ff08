"""The L7 filter chain before the router: local and global rate limits and fault injection.

A filter looks at a decoded request and returns what should happen next, as data:
``CONTINUE``, ``Abort`` (answer locally with an error), ``Delay`` (resume after a
timer) or ``Call`` (resume when an external call completes). The core does the
waiting; filters never hold callbacks into the engine.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from mypy_extensions import mypyc_attr

from metaprotocol.core.config import (
    FaultConfig,
    FilterConfig,
    GlobalRateLimitConfig,
    LocalRateLimitConfig,
    PluginFilterConfig,
    TokenBucket,
)
from metaprotocol.core.message import ErrorType
from metaprotocol.core.stats import Labels, Stats

__all__ = [
    "CONTINUE",
    "Abort",
    "Call",
    "Continue",
    "Delay",
    "FaultFilter",
    "Filter",
    "FilterResult",
    "GlobalRateLimitFilter",
    "LocalRateLimitFilter",
    "TokenBucketState",
    "build_filters",
]


class Continue(enum.Enum):
    CONTINUE = "continue"


CONTINUE: Final = Continue.CONTINUE


@dataclass(frozen=True, slots=True)
class Abort:
    error: ErrorType
    detail: str


@dataclass(frozen=True, slots=True)
class Delay:
    seconds: float


@dataclass(frozen=True, slots=True)
class Call:
    """Pause the request until ``ExternalCallCompleted``; ``decide(result, error)`` then says
    whether to continue (None) or abort. A call that outlives ``timeout`` is decided with
    error ``"timeout"``."""

    kind: str
    payload: Any
    timeout: float
    decide: Callable[[Any, str], Abort | None]


FilterResult = Continue | Abort | Delay | Call


@mypyc_attr(allow_interpreted_subclasses=True)  # users may subclass it
class Filter:
    """A filter sees each decoded request's routing properties and the time, and says what
    happens next (``CONTINUE``, ``Abort``, ``Delay`` or ``Call``). Third-party filters
    subclass it and register a factory ``(settings, stats, labels) -> Filter`` under the
    ``metaprotocol.filters`` entry-point group; a factory may also offer
    ``validate(settings) -> list[str]`` for ``metaprotocol check``."""

    name = "filter"

    def on_request(self, properties: Mapping[str, str], now: float) -> FilterResult:
        raise NotImplementedError


class TokenBucketState:
    """Refills ``tokens_per_fill`` every ``fill_interval``; never holds more than ``max_tokens``.

    Admissions over any window of length T never exceed ``max_tokens + T * rate``.
    """

    __slots__ = ("config", "last_fill", "tokens")

    def __init__(self, config: TokenBucket, now: float) -> None:
        self.config = config
        self.tokens = config.max_tokens
        self.last_fill = now

    def take(self, now: float) -> bool:
        cfg = self.config
        if cfg.fill_interval > 0 and now >= self.last_fill + cfg.fill_interval:
            fills = int((now - self.last_fill) // cfg.fill_interval)
            self.tokens = min(cfg.max_tokens, self.tokens + fills * cfg.tokens_per_fill)
            self.last_fill += fills * cfg.fill_interval
        if self.tokens > 0:
            self.tokens -= 1
            return True
        return False


class LocalRateLimitFilter(Filter):
    name = "local_ratelimit"

    def __init__(self, config: LocalRateLimitConfig, stats: Stats, labels: Labels, now: float):
        self.config = config
        self.stats = stats
        self.labels = labels
        self.default = TokenBucketState(config.token_bucket, now) if config.token_bucket else None
        self.conditions = [
            (c.match, TokenBucketState(c.token_bucket, now)) for c in config.conditions
        ]

    def on_request(self, properties: Mapping[str, str], now: float) -> FilterResult:
        bucket = self.default
        for match, candidate in self.conditions:
            if match.matches(properties):
                bucket = candidate
                break
        if bucket is None or bucket.take(now):
            self.stats.inc("local_ratelimit_ok", self.labels)
            return CONTINUE
        self.stats.inc("local_ratelimit_over_limit", self.labels)
        return Abort(ErrorType.OVER_LIMIT, "local rate limit exceeded")


class GlobalRateLimitFilter(Filter):
    name = "global_ratelimit"

    def __init__(self, config: GlobalRateLimitConfig, stats: Stats, labels: Labels) -> None:
        self.config = config
        self.stats = stats
        self.labels = labels

    def on_request(self, properties: Mapping[str, str], now: float) -> FilterResult:
        descriptor: list[list[str]] = []
        for key in self.config.descriptors:
            value = properties.get(key)
            if value is None:
                return CONTINUE  # no complete descriptor: no limit applies
            descriptor.append([key, value])
        payload = {
            "domain": self.config.domain,
            "descriptor": descriptor,
            "limit": self.config.requests_per_unit,
            "unit": self.config.unit,
        }
        return Call("global_ratelimit", payload, self.config.timeout, self._decide)

    def _decide(self, result: Any, error: str) -> Abort | None:
        if error:
            self.stats.inc("global_ratelimit_error", self.labels)
            if self.config.failure_mode_deny:
                return Abort(ErrorType.OVER_LIMIT, f"rate limit service failed: {error}")
            return None
        if result is True:
            self.stats.inc("global_ratelimit_ok", self.labels)
            return None
        self.stats.inc("global_ratelimit_over_limit", self.labels)
        return Abort(ErrorType.OVER_LIMIT, "global rate limit exceeded")


class FaultFilter(Filter):
    name = "fault"

    def __init__(
        self, config: FaultConfig, stats: Stats, labels: Labels, random: Callable[[], float]
    ) -> None:
        self.config = config
        self.stats = stats
        self.labels = labels
        self.random = random

    def on_request(self, properties: Mapping[str, str], now: float) -> FilterResult:
        cfg = self.config
        if cfg.abort_percent > 0 and self.random() * 100 < cfg.abort_percent:
            self.stats.inc("fault_aborted", self.labels)
            return Abort(cfg.abort_error, "fault injected")
        if cfg.delay_percent > 0 and self.random() * 100 < cfg.delay_percent:
            self.stats.inc("fault_delayed", self.labels)
            return Delay(cfg.delay)
        return CONTINUE


def build_filters(
    configs: tuple[FilterConfig, ...],
    stats: Stats,
    labels: Labels,
    random: Callable[[], float],
    now: float,
) -> list[Filter]:
    out: list[Filter] = []
    for cfg in configs:
        if isinstance(cfg, LocalRateLimitConfig):
            out.append(LocalRateLimitFilter(cfg, stats, labels, now))
        elif isinstance(cfg, GlobalRateLimitConfig):
            out.append(GlobalRateLimitFilter(cfg, stats, labels))
        elif isinstance(cfg, PluginFilterConfig):
            built = cfg.factory(cfg.settings, stats, labels)
            if not isinstance(built, Filter):
                raise TypeError(f"filter {cfg.name!r}: factory returned {built!r}, not a Filter")
            out.append(built)
        else:
            out.append(FaultFilter(cfg, stats, labels, random))
    return out
