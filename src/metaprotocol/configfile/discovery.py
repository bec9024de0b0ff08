"""A cluster's ``discovery``, ``dns_refresh`` and ``health_check`` settings."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, cast

from metaprotocol.configfile.values import Reader, describe, join_path
from metaprotocol.core.config import (
    DEFAULT_DNS_REFRESH,
    Discovery,
    HealthCheck,
    HealthCheckRequest,
)

__all__ = [
    "DISCOVERY_KINDS",
    "HEALTH_CHECK_KEYS",
    "HEALTH_CHECK_REQUEST_KEYS",
    "PROBE_HOST_RE",
    "PROBE_PATH_RE",
    "read_discovery",
    "read_health_check",
]

DISCOVERY_KINDS: tuple[Discovery, ...] = ("static", "dns")
HEALTH_CHECK_KEYS = ("interval", "timeout", "unhealthy_threshold", "healthy_threshold", "request")
HEALTH_CHECK_REQUEST_KEYS = ("path", "host")

# An HTTP request target in origin form (RFC 9112 section 3.2.1): visible ASCII only, so a
# configured path can never smuggle a second request line or a header into the probe.
PROBE_PATH_RE = re.compile(r"/[\x21-\x7e]*")
# A Host value (RFC 9110 section 7.2): reg-name or [IPv6], an optional port.
PROBE_HOST_RE = re.compile(r"(?:[A-Za-z0-9._~!$&'()*+,;=%-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")


def read_discovery(reader: Reader, m: Mapping[str, Any], path: str) -> tuple[Discovery, float]:
    """``discovery`` (default ``static``) and ``dns_refresh`` (only with ``discovery: dns``)."""
    kind = reader.optional(m, "discovery", path, lambda v, p: reader.choice(v, p, DISCOVERY_KINDS))
    discovery = cast("Discovery", kind or "static")
    refresh = reader.field(m, "dns_refresh", path, reader.positive_duration, DEFAULT_DNS_REFRESH)
    # A bad ``discovery`` is reported already: no second error about what it would allow.
    discovery_bad = m.get("discovery") is not None and kind is None
    if m.get("dns_refresh") is not None and discovery != "dns" and not discovery_bad:
        reader.error(join_path(path, "dns_refresh"), "only applies with discovery: dns")
    return discovery, refresh


def read_health_check(reader: Reader, value: object, path: str) -> HealthCheck | None:
    """``health_check``: every key has a default; ``timeout`` may not exceed ``interval``
    (one probe per endpoint is in flight at a time)."""
    m = reader.mapping(value, path, HEALTH_CHECK_KEYS)
    if m is None:
        return None
    d = HealthCheck()
    errors = len(reader.errors)
    interval = reader.field(m, "interval", path, reader.positive_duration, d.interval)
    timeout = reader.field(m, "timeout", path, reader.positive_duration, d.timeout)
    unhealthy = reader.field(m, "unhealthy_threshold", path, reader.positive, d.unhealthy_threshold)
    healthy = reader.field(m, "healthy_threshold", path, reader.positive, d.healthy_threshold)
    request = reader.field(m, "request", path, lambda v, p: _request(reader, v, p), d.request)
    if timeout > interval:
        where = "timeout" if "timeout" in m else "interval"
        reader.error(
            join_path(path, where),
            f"timeout ({timeout:g}s) must not exceed interval ({interval:g}s)",
        )
    if len(reader.errors) > errors:
        return None
    return HealthCheck(interval, timeout, unhealthy, healthy, request)


def _request(reader: Reader, value: object, path: str) -> HealthCheckRequest | None:
    m = reader.mapping(value, path, HEALTH_CHECK_REQUEST_KEYS)
    if m is None:
        return None
    target = reader.optional(m, "path", path, lambda v, p: _matching(reader, v, p, PROBE_PATH_RE))
    host = reader.optional(m, "host", path, lambda v, p: _matching(reader, v, p, PROBE_HOST_RE))
    return HealthCheckRequest(target or "/", host)


def _matching(reader: Reader, value: object, path: str, pattern: re.Pattern[str]) -> str | None:
    text = reader.string(value, path)
    if text is None:
        return None
    if pattern.fullmatch(text) is None:
        if pattern is PROBE_PATH_RE:
            expected = "a path starting with / (visible ASCII, no spaces)"
        else:
            expected = "a host name or address, with an optional :port"
        reader.error(path, f"expected {expected}, got {describe(text)}")
        return None
    return text
