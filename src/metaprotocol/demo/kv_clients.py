"""The demo's HTTP/1.1 and Redis traffic (blocking clients: the demo runs them in threads).

HTTP uses the standard library's ``http.client`` over one kept-alive connection: a weighted
80/20 split, a burst against a rate-limited path, and a path with no route. Redis uses
redis-py: SET/GET, key-prefix routing checked on the upstreams themselves, and a refused
MULTI.
"""

from __future__ import annotations

import http.client
from collections import Counter
from typing import Any

from metaprotocol.demo.report import CodecResult
from metaprotocol.demo.setup import RATE_LIMIT_BURST

__all__ = ["SPLIT_REQUESTS", "drive_http", "drive_redis"]

TIMEOUT = 5.0
SPLIT_REQUESTS = 100
BURST = 20


def _get(conn: http.client.HTTPConnection, path: str) -> tuple[int, str, bytes]:
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    return response.status, response.getheader("X-Upstream") or "", body


def drive_http(result: CodecResult, host: str, port: int) -> None:
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        split: Counter[str] = Counter()
        for i in range(SPLIT_REQUESTS):
            with result.timed():
                status, upstream, _ = _get(conn, f"/api/items/{i}")
            if result.check(
                status == 200 and upstream in ("web", "web-canary"),
                f"GET /api/items/{i}: status {status}, X-Upstream {upstream!r}",
            ):
                result.ok += 1
                split[upstream] += 1
        web, canary = split["web"], split["web-canary"]
        result.note(
            "weighted split",
            f"web {web} / web-canary {canary} of {SPLIT_REQUESTS} (configured 80/20)",
        )
        # A seeded random makes the split repeatable; a bounded band still catches a
        # weighting that is broken (everything to one side, or the weights swapped).
        result.check(
            canary > 0 and 60 <= web <= 95,
            f"weighted split web {web} / web-canary {canary}: not near 80/20",
        )

        passed = limited = 0
        for _ in range(BURST):
            with result.timed():
                status, _, _ = _get(conn, "/limited")
            if status == 200:
                passed += 1
            elif status == 429:
                limited += 1
            else:
                result.check(False, f"GET /limited: unexpected status {status}")
        result.ok += passed
        if limited:
            result.expected["rate-limited (429 from the proxy)"] += limited
        result.note(
            "rate limit",
            f"burst of {BURST} to /limited: {passed} passed, {limited} rate-limited (HTTP 429)",
        )
        result.check(
            (passed, limited) == (RATE_LIMIT_BURST, BURST - RATE_LIMIT_BURST),
            f"burst: expected {RATE_LIMIT_BURST} passed / {BURST - RATE_LIMIT_BURST} "
            f"rate-limited, got {passed} / {limited}",
        )

        with result.timed():
            status, _, _ = _get(conn, "/nowhere")
        if result.check(status == 404, f"GET /nowhere: expected 404 from the proxy, got {status}"):
            result.expect_error("no route -> 404 from the proxy")
    finally:
        conn.close()


def _redis_client(host: str, port: int) -> Any:
    import redis

    # redis-py's defaults: RESP3 asked for with HELLO 3 and CLIENT SETINFO on connect, both
    # answered by the proxy itself.
    return redis.Redis(host=host, port=port, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)


def drive_redis(
    result: CodecResult,
    host: str,
    port: int,
    main: tuple[str, int],
    sessions: tuple[str, int],
) -> None:
    import redis

    client = _redis_client(host, port)
    direct_main = _redis_client(*main)
    direct_sessions = _redis_client(*sessions)
    try:
        with result.timed():
            pong = client.ping()
        if result.check(pong is True, f"PING: got {pong!r}"):
            result.ok += 1
        for i in range(10):
            key, value = f"greeting:{i}", f"hello {i}"
            with result.timed():
                stored = client.set(key, value)
            with result.timed():
                got = client.get(key)
            if result.check(
                stored is True and got == value.encode(), f"SET/GET {key}: got {got!r}"
            ):
                result.ok += 2
        for i in range(5):
            key, value = f"session:{i}", f"user-{i}"
            with result.timed():
                client.set(key, value)
            with result.timed():
                got = client.get(key)
            if result.check(got == value.encode(), f"SET/GET {key}: got {got!r}"):
                result.ok += 2
        # Where did the keys land? Ask the two upstream servers directly (not through the proxy).
        on_sessions = direct_sessions.get("session:0") == b"user-0"
        on_main = direct_main.get("session:0") is not None
        main_has_greeting = direct_main.get("greeting:0") == b"hello 0"
        if result.check(
            on_sessions and not on_main and main_has_greeting,
            "key routing: session:0 should be on redis-sessions only and greeting:0 on "
            f"redis-main (sessions={on_sessions}, main={on_main}, greeting={main_has_greeting})",
        ):
            result.note("by key", "session:* stored on redis-sessions, the rest on redis-main")

        with result.timed():
            try:
                client.execute_command("MULTI")
            except redis.ResponseError as exc:
                text = str(exc)
                if result.check(
                    "not supported by the proxy" in text, f"MULTI: unclear error {text!r}"
                ):
                    result.expect_error("MULTI -> -ERR not supported by the proxy")
                    result.note("MULTI", f"-ERR {text}")
            else:
                result.check(False, "MULTI: expected -ERR from the proxy, got a reply")
        with result.timed():
            after = client.get("greeting:1")
        if result.check(after == b"hello 1", f"GET after MULTI: got {after!r}"):
            result.ok += 1
    finally:
        client.close()
        direct_main.close()
        direct_sessions.close()
