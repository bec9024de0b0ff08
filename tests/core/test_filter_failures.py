"""Filters that raise, and filters that refuse: every request still gets one answer.

A filter raising answers its request with an internal error (counted in ``filter_error``)
and emits ``FilterFailed`` for the adapter's log, carrying the exception and the route but
never the request. ``Abort`` may carry ``unauthenticated`` and ``permission_denied``, which
each codec maps to its own reply.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from metaprotocol.configfile import parse_config
from metaprotocol.core.config import FaultConfig, PluginFilterConfig
from metaprotocol.core.events import Accepted, Closed, DataReceived, ExternalCallCompleted
from metaprotocol.core.filters import CONTINUE, Abort, Call, Filter, FilterResult
from metaprotocol.core.message import ErrorType
from metaprotocol.core.outputs import ExternalCall, FilterFailed, OpenUpstream, Output, Write
from metaprotocol.core.proxy import Proxy
from metaprotocol.core.stats import Labels, Stats

from .helpers import UP, cmd, config, error_reply, playbook, req, route

LABELS = (("listener", "main"),)
TOKEN = "Bearer s3cr3t-t0ken"


class Explodes(Filter):
    """A buggy filter: raises on requests that carry ``boom``."""

    name = "explodes"

    def __init__(self, settings: Mapping[str, Any], stats: Stats, labels: Labels) -> None:
        pass

    def on_request(self, properties: Mapping[str, str], now: float) -> FilterResult:
        if "boom" in properties:
            raise KeyError("tenant")
        return CONTINUE


class DecidesBadly(Filter):
    """Asks an external service, then raises while deciding on its answer."""

    name = "decides_badly"

    def __init__(self, settings: Mapping[str, Any], stats: Stats, labels: Labels) -> None:
        pass

    def on_request(self, properties: Mapping[str, str], now: float) -> FilterResult:
        return Call("lookup", {}, 1.0, self._decide)

    def _decide(self, result: Any, error: str) -> Abort | None:
        raise ValueError("cannot decide")


class Refuses(Filter):
    """Refuses every request with the error type in its settings."""

    name = "refuses"

    def __init__(self, settings: Mapping[str, Any], stats: Stats, labels: Labels) -> None:
        self.error = ErrorType(settings["error"])

    def on_request(self, properties: Mapping[str, str], now: float) -> FilterResult:
        return Abort(self.error, "token rejected")


def _plugin(factory: Any, **settings: Any) -> PluginFilterConfig:
    return PluginFilterConfig(factory.name, factory, settings)


def _feed(proxy: Proxy, event: Any) -> list[Output]:
    outputs: list[Output] = proxy.handle(event, 0.0)
    return outputs


def test_a_raising_filter_answers_with_an_internal_error_and_reports_it() -> None:
    cfg = config(filters=(_plugin(Explodes),), routes=(route(name="api"),))
    proxy = Proxy(cfg, now=0.0)
    _feed(proxy, Accepted(1, "main"))
    outputs = _feed(proxy, DataReceived(1, req(1, boom="1", authorization=TOKEN)))
    writes = [o for o in outputs if isinstance(o, Write)]
    assert writes == [Write(1, error_reply(1, "unspecified", "internal error", 11))]
    (failed,) = [o for o in outputs if isinstance(o, FilterFailed)]
    where = (failed.conn, failed.listener, failed.filter, failed.route)
    assert where == (1, "main", "explodes", "api")
    assert isinstance(failed.exception, KeyError)
    assert "s3cr3t" not in repr(failed)  # the report never holds the request
    assert proxy.stats.counter("filter_error", LABELS) == 1
    # The connection goes on: the next request passes the filter and is routed.
    assert OpenUpstream(-1, *UP) in _feed(proxy, DataReceived(1, req(2)))
    _feed(proxy, Closed(1))
    _feed(proxy, Closed(-1))
    assert proxy.request_count() == 0 and not proxy.downstreams


def test_a_filter_raising_while_deciding_on_a_call_answers_too() -> None:
    proxy = Proxy(config(filters=(_plugin(DecidesBadly),)), now=0.0)
    _feed(proxy, Accepted(1, "main"))
    (call,) = [o for o in _feed(proxy, DataReceived(1, req(7))) if isinstance(o, ExternalCall)]
    outputs = _feed(proxy, ExternalCallCompleted(call.call, True))
    assert Write(1, error_reply(7, "unspecified", "internal error", 11)) in outputs
    (failed,) = [o for o in outputs if isinstance(o, FilterFailed)]
    assert failed.filter == "decides_badly" and isinstance(failed.exception, ValueError)
    assert proxy.stats.counter("filter_error", LABELS) == 1
    _feed(proxy, Closed(1))
    assert proxy.request_count() == 0 and not proxy.calls


# -- unauthenticated / permission_denied, per codec ----------------------------------------

HTTP_GET = b"GET /x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer x\r\n\r\n"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ErrorType.UNAUTHENTICATED, b"HTTP/1.1 401 Unauthorized\r\n"),
        (ErrorType.PERMISSION_DENIED, b"HTTP/1.1 403 Forbidden\r\n"),
    ],
)
def test_http1_maps_refusals_to_401_and_403(error: ErrorType, expected: bytes) -> None:
    pb = playbook(config(codec="http1", filters=(_plugin(Refuses, error=error.value),)))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, HTTP_GET)
    reply = pb.take()
    assert isinstance(reply, Write) and reply.data.startswith(expected)
    assert reply.data.endswith(b"\r\n\r\ntoken rejected\n")
    pb >> Closed(1)
    pb.assert_clean()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ErrorType.UNAUTHENTICATED, b"-NOAUTH Authentication required.\r\n"),
        (ErrorType.PERMISSION_DENIED, b"-NOPERM token rejected\r\n"),
    ],
)
def test_redis_maps_refusals_to_noauth_and_noperm(error: ErrorType, expected: bytes) -> None:
    pb = playbook(config(codec="redis", filters=(_plugin(Refuses, error=error.value),)))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, cmd("GET", "a"))
    pb << Write(1, expected)
    pb >> Closed(1)
    pb.assert_clean()


@pytest.mark.parametrize("error", [ErrorType.UNAUTHENTICATED, ErrorType.PERMISSION_DENIED])
def test_the_tutorial_codec_names_the_refusal(error: ErrorType) -> None:
    pb = playbook(config(filters=(_plugin(Refuses, error=error.value),)))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(3))
    status = list(ErrorType).index(error) + 1
    pb << Write(1, error_reply(3, error.value, "token rejected", status))
    pb >> Closed(1)
    pb.assert_clean()


@pytest.mark.parametrize("error", ["unauthenticated", "permission_denied"])
def test_the_fault_filter_injects_refusals(error: str) -> None:
    data = {
        "listeners": [
            {"name": "main", "address": "127.0.0.1:0", "codec": "http1",
             "filters": [{"fault": {"abort": {"percentage": 100, "error": error}}}, "router"],
             "routes": [{"name": "r", "route": {"cluster": "c"}}]}
        ],
        "clusters": [{"name": "c", "endpoints": ["127.0.0.1:9"]}],
    }  # fmt: skip
    cfg = parse_config(data)
    (fault,) = cfg.listeners[0].filters
    assert fault == FaultConfig(abort_percent=100.0, abort_error=ErrorType(error))
    pb = playbook(cfg)
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, HTTP_GET)
    reply = pb.take()
    status = b"401" if error == "unauthenticated" else b"403"
    assert isinstance(reply, Write) and reply.data.startswith(b"HTTP/1.1 " + status)
    pb >> Closed(1)
    pb.assert_clean()
