"""Route matchers: each kind, invert, absent keys, and the inlined exact-match fast path."""

from __future__ import annotations

import pytest

from metaprotocol.core.config import RouteAction, RouteConfig, RouteMatch, StringMatcher
from metaprotocol.core.events import Accepted, Closed, DataReceived
from metaprotocol.core.outputs import OpenUpstream, Write

from .helpers import config, error_reply, playbook, req


@pytest.mark.parametrize(
    ("matcher", "value", "hit"),
    [
        (StringMatcher("exact", "get"), "get", True),
        (StringMatcher("exact", "get"), "GET", False),
        (StringMatcher("exact", "get", invert=True), "set", True),
        (StringMatcher("prefix", "user:"), "user:1", True),
        (StringMatcher("prefix", "user:"), "session:1", False),
        (StringMatcher("suffix", ".v2"), "svc.v2", True),
        (StringMatcher("regex", r"v[0-9]+"), "v12", True),
        (StringMatcher("regex", r"v[0-9]+"), "v12x", False),  # the whole value must match
        (StringMatcher("present"), "", True),
        (StringMatcher("present"), None, False),
        (StringMatcher("present", invert=True), None, True),
        (StringMatcher("exact", "x"), None, False),  # absent never equals
        (StringMatcher("prefix", "x", invert=True), None, True),  # absent is "not prefixed"
    ],
)
def test_matcher_kinds(matcher: StringMatcher, value: str | None, hit: bool) -> None:
    assert matcher.matches(value) is hit


def test_exact_fast_path_only_for_plain_exact_matchers() -> None:
    plain = RouteMatch((("a", StringMatcher("exact", "1")), ("b", StringMatcher("exact", "2"))))
    assert plain.exact == (("a", "1"), ("b", "2"))
    assert RouteMatch().exact == ()
    assert RouteMatch((("a", StringMatcher("exact", "1", invert=True)),)).exact is None
    assert RouteMatch((("a", StringMatcher("prefix", "1")),)).exact is None


def test_first_matching_route_wins_with_mixed_matchers() -> None:
    routes = (
        RouteConfig(
            "v2-users",
            RouteAction(cluster="main"),
            RouteMatch(
                (
                    ("service", StringMatcher("exact", "users")),
                    ("version", StringMatcher("regex", "2\\..*")),
                )
            ),
        ),
        RouteConfig(
            "not-admin",
            RouteAction(cluster="main"),
            RouteMatch((("role", StringMatcher("exact", "admin", invert=True)),)),
        ),
    )
    pb = playbook(config(routes=routes))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1, service="users", version="2.1", role="admin"))
    pb << OpenUpstream(-1, "10.0.0.1", 9000)  # AND of both matchers
    pb >> DataReceived(1, req(2, service="users", version="1.0", role="admin"))
    pb << Write(1, error_reply(2, "route_not_found", "no route matched", 1))  # neither route
    pb >> DataReceived(1, req(3, service="users", version="1.0"))
    pb << None  # matched "not-admin" (role absent), queued on the connecting upstream
    assert pb.proxy.stats.counter("route_hit", (("route", "not-admin"), ("listener", "main"))) == 1
    pb >> Closed(1)
    pb >> Closed(-1)
    pb.assert_clean()
