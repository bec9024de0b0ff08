"""Admin HTTP endpoint, sans-IO on h11: ``/ready``, ``/stats/prometheus``, ``/stats/json``,
``/config_dump``.

``AdminConnection`` turns received bytes into bytes to send; every adapter does the socket
work for it the same way it does for proxied connections. ``render_prometheus`` writes a
``StatsSnapshot`` in the Prometheus text exposition format (version 0.0.4).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import h11

from metaprotocol.core.stats import Labels, StatsSnapshot
from metaprotocol.snapshots import snapshot_to_json

__all__ = ["AdminApp", "AdminConnection", "render_prometheus"]

PREFIX = "metaprotocol_"
_BAD_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_:]")
_BAD_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")


def _metric_name(name: str) -> str:
    cleaned = _BAD_NAME_CHARS.sub("_", name)
    return PREFIX + cleaned


def _label_name(name: str) -> str:
    cleaned = _BAD_LABEL_CHARS.sub("_", name)
    return "_" + cleaned if cleaned[:1].isdigit() or not cleaned else cleaned


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Labels, extra: tuple[str, str] | None = None) -> str:
    pairs = [f'{_label_name(k)}="{_escape(v)}"' for k, v in labels]
    if extra is not None:
        pairs.append(f'{extra[0]}="{extra[1]}"')
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _number(value: float) -> str:
    if isinstance(value, int) or (math.isfinite(value) and value == int(value)):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render_prometheus(snapshot: StatsSnapshot) -> str:
    """The snapshot as Prometheus text: counters get ``_total``, every name ``metaprotocol_``."""
    lines: list[str] = []
    families: dict[str, list[str]] = {}
    kinds: dict[str, str] = {}

    def family(name: str, kind: str) -> list[str]:
        if name not in families:
            families[name] = []
            kinds[name] = kind
        return families[name]

    for (name, labels), count in sorted(snapshot.counters.items()):
        metric = _metric_name(name)
        if not metric.endswith("_total"):
            metric += "_total"
        family(metric, "counter").append(f"{metric}{_labels(labels)} {_number(count)}")
    for (name, labels), value in sorted(snapshot.gauges.items()):
        metric = _metric_name(name)
        if metric in families:  # a gauge must not share a family with a counter
            metric += "_gauge"
        family(metric, "gauge").append(f"{metric}{_labels(labels)} {_number(value)}")
    for (name, labels), hist in sorted(snapshot.histograms.items(), key=lambda kv: kv[0]):
        metric = _metric_name(name)
        if metric in families:
            metric += "_histogram"
        samples = family(metric, "histogram")
        for bound, cumulative in hist.cumulative():
            le = "+Inf" if math.isinf(bound) else repr(float(bound))
            samples.append(f"{metric}_bucket{_labels(labels, ('le', le))} {cumulative}")
        samples.append(f"{metric}_sum{_labels(labels)} {_number(hist.total)}")
        samples.append(f"{metric}_count{_labels(labels)} {hist.count}")
    for name, samples in families.items():
        lines.append(f"# TYPE {name} {kinds[name]}")
        lines.extend(samples)
    return "\n".join(lines) + "\n" if lines else ""


class AdminApp:
    """Answers the admin routes from three callables evaluated per request."""

    def __init__(
        self,
        *,
        ready: Callable[[], bool],
        snapshot: Callable[[], StatsSnapshot],
        config_raw: Callable[[], Mapping[str, Any]],
    ) -> None:
        self._ready = ready
        self._snapshot = snapshot
        self._config_raw = config_raw

    def respond(self, method: str, target: str) -> tuple[int, str, bytes]:
        """``(status, content type, body)`` for one request."""
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"method not allowed\n"
        if path == "/ready":
            if self._ready():
                return 200, "text/plain; charset=utf-8", b"ready\n"
            return 503, "text/plain; charset=utf-8", b"draining\n"
        if path == "/stats/prometheus":
            body = render_prometheus(self._snapshot()).encode()
            return 200, "text/plain; version=0.0.4; charset=utf-8", body
        if path == "/stats/json":
            text = json.dumps(snapshot_to_json(self._snapshot()), sort_keys=True)
            return 200, "application/json", text.encode() + b"\n"
        if path == "/config_dump":
            text = json.dumps(dict(self._config_raw()), indent=2, sort_keys=True, default=str)
            return 200, "application/json", text.encode() + b"\n"
        return 404, "text/plain; charset=utf-8", b"not found\n"


class AdminConnection:
    """One admin HTTP/1.1 connection: ``receive(data)`` returns ``(to_send, close_after)``.

    Pass ``b""`` for end of stream. Keep-alive and pipelined requests are served in order.
    """

    def __init__(self, app: AdminApp) -> None:
        self._app = app
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        self._request: h11.Request | None = None

    def receive(self, data: bytes) -> tuple[bytes, bool]:
        out: list[bytes] = []
        try:
            self._h11.receive_data(data)
            while True:
                event = self._h11.next_event()
                if event is h11.NEED_DATA:
                    return b"".join(out), False
                if event is h11.PAUSED:
                    if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
                        self._h11.start_next_cycle()
                        continue
                    return b"".join(out), True
                if isinstance(event, h11.Request):
                    self._request = event
                elif isinstance(event, h11.EndOfMessage) and self._request is not None:
                    out.append(self._answer(self._request))
                    self._request = None
                    if self._h11.our_state is not h11.DONE:
                        return b"".join(out), True
                    if self._h11.their_state is h11.DONE:
                        self._h11.start_next_cycle()
                    else:
                        return b"".join(out), True
                elif isinstance(event, h11.ConnectionClosed):
                    return b"".join(out), True
        except h11.RemoteProtocolError:
            if self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                out.append(self._send(400, "text/plain; charset=utf-8", b"bad request\n", True))
            return b"".join(out), True

    def _answer(self, request: h11.Request) -> bytes:
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("ascii", "replace")
        status, content_type, body = self._app.respond(method, target)
        return self._send(status, content_type, b"" if method == "HEAD" else body, False, len(body))

    def _send(
        self, status: int, content_type: str, body: bytes, close: bool, length: int | None = None
    ) -> bytes:
        headers = [
            ("content-type", content_type),
            ("content-length", str(len(body) if length is None else length)),
        ]
        if close:
            headers.append(("connection", "close"))
        parts = [self._h11.send(h11.Response(status_code=status, headers=headers))]
        if body:
            parts.append(self._h11.send(h11.Data(data=body)))
        parts.append(self._h11.send(h11.EndOfMessage()))
        return b"".join(p for p in parts if p)
