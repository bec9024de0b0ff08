"""Admin HTTP endpoint, sans-IO on h11: ``/ready``, ``/stats/prometheus``, ``/stats/json``,
``/clusters``, ``/config_dump``.

``AdminConnection`` turns received bytes into bytes to send; every adapter does the socket
work for it the same way it does for proxied connections. ``/stats/prometheus`` is rendered
by prometheus_client (``metaprotocol.metrics``); ``/clusters`` by ``metaprotocol.endpoints``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import h11

from metaprotocol import metrics
from metaprotocol.core.stats import EndpointStatus, StatsSnapshot
from metaprotocol.endpoints import clusters_json, clusters_text
from metaprotocol.snapshots import snapshot_to_json

__all__ = ["AdminApp", "AdminConnection", "render_prometheus"]


def render_prometheus(snapshot: StatsSnapshot, pids: Sequence[int] = ()) -> str:
    """The snapshot (plus process metrics) as Prometheus text (see metaprotocol.metrics)."""
    return metrics.render_prometheus(snapshot, pids).decode()


class AdminApp:
    """Answers the admin routes from callables evaluated per request.

    ``snapshot`` gives the stats (with the per-endpoint gauges), ``endpoints`` the
    ``/clusters`` view, ``pids`` the processes whose process metrics are summed (this one
    when not given)."""

    def __init__(
        self,
        *,
        ready: Callable[[], bool],
        snapshot: Callable[[], StatsSnapshot],
        config_raw: Callable[[], Mapping[str, Any]],
        endpoints: Callable[[], Sequence[EndpointStatus]] = tuple,
        pids: Callable[[], Sequence[int]] | None = None,
    ) -> None:
        self._ready = ready
        self._snapshot = snapshot
        self._config_raw = config_raw
        self._endpoints = endpoints
        self._pids = pids if pids is not None else (lambda: (os.getpid(),))

    def respond(self, method: str, target: str) -> tuple[int, str, bytes]:
        """``(status, content type, body)`` for one request."""
        path, _, query = target.partition("?")
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"method not allowed\n"
        if path == "/ready":
            if self._ready():
                return 200, "text/plain; charset=utf-8", b"ready\n"
            return 503, "text/plain; charset=utf-8", b"draining\n"
        if path == "/stats/prometheus":
            body = metrics.render_prometheus(self._snapshot(), self._pids())
            return 200, metrics.CONTENT_TYPE, body
        if path == "/clusters":
            statuses = self._endpoints()
            if "format=json" in query.split("&"):
                text = json.dumps(clusters_json(statuses), sort_keys=True)
                return 200, "application/json", text.encode() + b"\n"
            return 200, "text/plain; charset=utf-8", clusters_text(statuses).encode()
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
