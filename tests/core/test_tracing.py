"""W3C trace context in the core: parsing ``traceparent``, sampling, the child's context."""

from __future__ import annotations

import pytest

from metaprotocol.core.message import Mutation
from metaprotocol.core.tracing import TraceSpan, parse_traceparent, start_span, with_traceparent

# The example of https://www.w3.org/TR/trace-context/#examples-of-http-traceparent-headers
EXAMPLE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE = 0x0AF7651916CD43DD8448EB211C80319C
PARENT = 0xB7AD6B7169203331


def test_parse_the_specification_example() -> None:
    assert parse_traceparent(EXAMPLE) == (TRACE, PARENT, 1)
    assert parse_traceparent(EXAMPLE[:-2] + "00") == (TRACE, PARENT, 0)
    assert parse_traceparent(f" {EXAMPLE} ") == (TRACE, PARENT, 1)  # OWS around a header


@pytest.mark.parametrize(
    "value",
    [
        "",
        "00",
        EXAMPLE.upper(),  # upper-case hex is invalid
        "ff" + EXAMPLE[2:],  # version ff is forbidden
        "0g" + EXAMPLE[2:],
        EXAMPLE + "-extra",  # version 00 has exactly four fields
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # all-zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # all-zero parent id
        "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333x-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0z",
        "01" + EXAMPLE[2:] + "x",  # a later version must separate what it appends with "-"
    ],
)
def test_parse_rejects(value: str) -> None:
    assert parse_traceparent(value) is None


def test_a_later_version_may_append_fields() -> None:
    assert parse_traceparent("01" + EXAMPLE[2:] + "-what-comes") == (TRACE, PARENT, 1)


def test_a_sampled_parent_is_continued_whatever_the_sampling() -> None:
    draws = [0.5, 0.25]
    span = start_span({"traceparent": EXAMPLE, "tracestate": "k=v"}, 0.0, lambda: draws.pop(0))
    assert span == TraceSpan(TRACE, 0x80000000_40000000, PARENT, "k=v")
    assert span.traceparent == "00-0af7651916cd43dd8448eb211c80319c-8000000040000000-01"
    assert draws == []  # the span id only: no sampling draw


def test_an_unsampled_parent_is_not_traced() -> None:
    unsampled = EXAMPLE[:-2] + "00"
    assert start_span({"traceparent": unsampled}, 1.0, lambda: 0.0) is None


def test_without_a_parent_the_sampling_fraction_decides() -> None:
    draws = [0.7]
    assert start_span({}, 0.5, lambda: draws.pop(0)) is None
    draws = [0.3, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25]
    span = start_span({"traceparent": "garbage"}, 0.5, lambda: draws.pop(0))
    assert span is not None and span.parent_span_id == 0  # a new root
    assert span.trace_id == 0x80000000_80000000_80000000_80000000
    assert span.span_id == 0x40000000_40000000
    assert draws == []
    # Sampling 1.0 draws nothing but the ids; an all-zero draw still gives valid ids.
    root = start_span({}, 1.0, lambda: 0.0)
    assert root == TraceSpan(1, 1, 0)


def test_the_child_context_joins_the_route_mutation() -> None:
    span = TraceSpan(TRACE, 0x1234, PARENT, "k=v")
    child = "00-0af7651916cd43dd8448eb211c80319c-0000000000001234-01"
    assert with_traceparent(None, span) == Mutation((("traceparent", child), ("tracestate", "k=v")))
    route = Mutation((("x-env", "prod"),), ("x-debug",))
    assert with_traceparent(route, TraceSpan(TRACE, 0x1234, 0)) == Mutation(
        (("x-env", "prod"), ("traceparent", child)), ("x-debug",)
    )
