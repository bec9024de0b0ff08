"""W3C trace context for one request: continue the client's trace, or start one, sampled.

The proxy's span is a child of the ``traceparent`` a request carries (HTTP header, Dubbo
attachment, Thrift THeader info header: all routing properties under that name), or the
root of a new trace when it carries none or a malformed one. Sampling is parent-based: a
request whose parent says "sampled" is traced, one whose parent says "not sampled" is not;
a request without a parent is traced with probability ``sampling``. An unsampled request
gets no span and its trace context goes upstream untouched.

Ids come from the ``random`` the caller gives the core (floats in [0, 1), 32 bits taken from
each), so the core stays free of IO. The span itself (timing, attributes) is the
``RequestCompleted`` event's ``span`` field; the adapters' layer exports it
(metaprotocol.tracing). Format: https://www.w3.org/TR/trace-context/#traceparent-header
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from metaprotocol.core.message import Mutation

__all__ = [
    "TRACEPARENT",
    "TRACESTATE",
    "TraceSpan",
    "parse_traceparent",
    "start_span",
    "with_traceparent",
]

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
_HEX: Final = frozenset("0123456789abcdef")
_SAMPLED: Final = 0x01


@dataclass(frozen=True, slots=True)
class TraceSpan:
    """The proxy's span for one request: ids only (the event around it has the rest)."""

    trace_id: int  # 128 bits, never 0
    span_id: int  # 64 bits, never 0
    parent_span_id: int  # 0: the request carried no (valid) trace context
    tracestate: str = ""  # vendor data from the parent, forwarded as is

    @property
    def traceparent(self) -> str:
        """The context a child of this span continues (sent upstream)."""
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-01"


def parse_traceparent(value: str) -> tuple[int, int, int] | None:
    """``(trace id, parent span id, flags)`` from a ``traceparent`` value; None if it is not
    a valid one (the W3C rules: lower-case hex, version ff invalid, all-zero ids invalid,
    version 00 exactly 55 characters, later versions may append ``-``-separated fields)."""
    value = value.strip()
    if len(value) < 55 or value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    version = value[:2]
    if version == "ff" or not _is_hex(version):
        return None
    if version == "00" and len(value) != 55:
        return None
    if len(value) > 55 and value[55] != "-":
        return None
    trace, span, flags = value[3:35], value[36:52], value[53:55]
    if not (_is_hex(trace) and _is_hex(span) and _is_hex(flags)):
        return None
    trace_id, span_id = int(trace, 16), int(span, 16)
    if trace_id == 0 or span_id == 0:
        return None
    return trace_id, span_id, int(flags, 16)


def _is_hex(text: str) -> bool:
    return all(c in _HEX for c in text)


def start_span(
    properties: Mapping[str, str], sampling: float, random: Callable[[], float]
) -> TraceSpan | None:
    """The proxy's span for a request with these routing properties; None when the request
    is not sampled (see the module docstring)."""
    carried = properties.get(TRACEPARENT)
    parent = parse_traceparent(carried) if carried is not None else None
    if parent is not None:
        trace_id, parent_id, flags = parent
        if not flags & _SAMPLED:
            return None
        state = properties.get(TRACESTATE, "")
        return TraceSpan(trace_id, _random_id(random, 2), parent_id, state)
    if sampling < 1.0 and not random() < sampling:
        return None
    return TraceSpan(_random_id(random, 4), _random_id(random, 2), 0)


def _random_id(random: Callable[[], float], words: int) -> int:
    """A non-zero id of ``words`` 32-bit words."""
    value = 0
    for _ in range(words):
        value = (value << 32) | int(random() * 4294967296.0) & 0xFFFFFFFF
    return value or 1


def with_traceparent(mutation: Mutation | None, span: TraceSpan) -> Mutation:
    """``mutation`` (a route's request mutation, or none) plus the child's ``traceparent``
    (and the parent's ``tracestate``, kept as it came)."""
    add: tuple[tuple[str, str], ...] = ((TRACEPARENT, span.traceparent),)
    if span.tracestate:
        add += ((TRACESTATE, span.tracestate),)
    if mutation is None:
        return Mutation(add)
    return Mutation(mutation.add + add, mutation.remove)
