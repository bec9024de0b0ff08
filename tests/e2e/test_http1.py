"""HTTP/1.1 end to end: curl and httpx through the proxy to nginx and to Python's http.server.

Covers keep-alive, chunked request and response bodies, 1 MB each way, and pipelining.
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from metaprotocol.testing.serving import RunningProxy, start_proxy
from tests.e2e.servers import (
    BIG_BODY,
    DEADLINE,
    EchoHTTPHandler,
    http_server,
    proxy_config,
)
from tests.peers import require_binary

LISTENER = (("listener", "http1"),)
# 8 MiB messages: the 1 MB bodies fit under the listener's limit.
LISTENER_OPTIONS = {"max_message_size": "8MiB"}


@dataclass(frozen=True)
class Upstream:
    """What one upstream serves, and at which paths."""

    kind: str
    port: int
    hello: tuple[str, bytes]
    big: str
    chunked: str  # a path answered with Transfer-Encoding: chunked (nginx: gzip'd text)
    chunked_body: bytes
    upload: str
    pipeline: tuple[tuple[str, bytes], ...]

    def upload_reply(self, body: bytes) -> bytes:
        if self.kind == "nginx":
            return b"uploaded\n"
        return b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())


@pytest.fixture(scope="module")
def python_port() -> Iterator[int]:
    with http_server(EchoHTTPHandler) as server:
        yield server.server_address[1]


@pytest.fixture(params=["nginx", "python"])
def upstream(request: pytest.FixtureRequest) -> Upstream:
    if request.param == "nginx":
        port, www = request.getfixturevalue("nginx")
        text = (www / "text.txt").read_bytes()
        return Upstream(
            "nginx", port, ("/hello", b"hello from nginx\n"), "/big.bin", "/text.txt", text,
            "/upload",
            (("/hello", b"hello from nginx\n"), ("/upload", b"uploaded\n"),
             ("/hello", b"hello from nginx\n")),
        )  # fmt: skip
    port = request.getfixturevalue("python_port")
    chunked = b"".join(b"chunk %d;" % i for i in range(50))
    return Upstream(
        "python", port, ("/hello", b"hello from python\n"), "/big", "/chunked", chunked,
        "/digest", tuple((f"/path/{i}", f"/path/{i}".encode()) for i in range(3)),
    )  # fmt: skip


@pytest.fixture
def proxied(adapter: str, upstream: Upstream) -> Iterator[RunningProxy]:
    config = proxy_config("http1", {"web": [upstream.port]}, listener=LISTENER_OPTIONS)
    with start_proxy(config, adapter) as running:
        yield running


def _curl(*args: str) -> bytes:
    binary = require_binary("curl")
    result = subprocess.run(
        [binary, "-sS", "--max-time", str(DEADLINE), *args],
        capture_output=True,
        timeout=DEADLINE * 2,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def test_curl(proxied: RunningProxy, upstream: Upstream) -> None:
    base = f"http://127.0.0.1:{proxied.ports['http1']}"
    path, body = upstream.hello
    # Two URLs in one curl run share a keep-alive connection: one connect in all.
    out = _curl("-w", "|%{http_code}|%{num_connects}\n", f"{base}{path}", f"{base}{path}")
    assert out == body + b"|200|1\n" + body + b"|200|0\n"
    # 1 MB down.
    assert _curl(f"{base}{upstream.big}") == BIG_BODY
    # A chunked response (nginx: gzip'd on the fly; curl decodes it).
    headers_and_body = _curl("--compressed", "-i", f"{base}{upstream.chunked}")
    head, _, decoded = headers_and_body.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert decoded == upstream.chunked_body
    with tempfile.TemporaryDirectory() as tmp:
        upload = Path(tmp) / "upload.bin"
        upload.write_bytes(BIG_BODY)
        # 1 MB up, with Content-Length (and curl's Expect: 100-continue) ...
        out = _curl("--data-binary", f"@{upload}", f"{base}{upstream.upload}")
        assert out == upstream.upload_reply(BIG_BODY)
        # ... and chunked.
        out = _curl(
            "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{upload}",
            f"{base}{upstream.upload}",
        )  # fmt: skip
        assert out == upstream.upload_reply(BIG_BODY)


def test_httpx(proxied: RunningProxy, upstream: Upstream) -> None:
    base = f"http://127.0.0.1:{proxied.ports['http1']}"
    path, body = upstream.hello
    with httpx.Client(base_url=base, timeout=DEADLINE) as client:
        # Keep-alive: several requests, one client connection to the proxy.
        for _ in range(5):
            response = client.get(path)
            assert (response.status_code, response.content) == (200, body)
        # 1 MB down and up.
        response = client.get(upstream.big)
        assert response.status_code == 200
        assert response.content == BIG_BODY

        response = client.post(upstream.upload, content=BIG_BODY)
        assert response.content == upstream.upload_reply(BIG_BODY)

        # A chunked upload: httpx streams a generator with Transfer-Encoding: chunked.
        pieces = [BIG_BODY[i : i + 100_000] for i in range(0, len(BIG_BODY), 100_000)]

        def generate() -> Iterator[bytes]:
            yield from pieces

        response = client.post(upstream.upload, content=generate())
        assert response.status_code == 200
        assert response.content == upstream.upload_reply(BIG_BODY)

        # A chunked response.
        response = client.get(upstream.chunked, headers={"accept-encoding": "gzip"})
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.content == upstream.chunked_body

    stats = proxied.call(lambda: proxied.proxy.stats.snapshot())
    assert stats.counters[("downstream_cx_total", LISTENER)] == 1
    assert stats.counters[("request", LISTENER)] == 9


def _read_response(sock: socket.socket, buffer: bytearray) -> tuple[bytes, bytes]:
    """One Content-Length-delimited response: (head, body); leftovers stay in ``buffer``."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-response; have {bytes(buffer)!r}"
        buffer += chunk
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        assert name.strip().lower() != b"transfer-encoding", head
    while len(buffer) < end + length:
        chunk = sock.recv(65536)
        assert chunk, "closed mid-body"
        buffer += chunk
    body = bytes(buffer[end : end + length])
    del buffer[: end + length]
    return head, body


def test_pipelined_requests(proxied: RunningProxy, upstream: Upstream) -> None:
    requests = b"".join(
        b"GET %s HTTP/1.1\r\nHost: example.test\r\nAccept-Encoding: identity\r\n\r\n"
        % path.encode()
        for path, _ in upstream.pipeline
    )
    with socket.create_connection(("127.0.0.1", proxied.ports["http1"]), DEADLINE) as sock:
        sock.sendall(requests)  # all three in one write
        buffer = bytearray()
        for _, expected in upstream.pipeline:
            head, body = _read_response(sock, buffer)
            assert head.startswith(b"HTTP/1.1 200 "), head
            assert body == expected
        assert not buffer


def test_gzip_sanity_of_nginx_fixture(nginx: tuple[int, Path]) -> None:
    """The nginx fixture itself: direct, gzip'd and chunked (so the proxy tests mean it)."""
    port, www = nginx
    with httpx.Client(timeout=DEADLINE) as client:
        response = client.get(
            f"http://127.0.0.1:{port}/text.txt", headers={"accept-encoding": "gzip"}
        )
    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.content == (www / "text.txt").read_bytes()


def test_http10_and_closing_clients_keep_the_upstream_connection(
    proxied: RunningProxy, upstream: Upstream
) -> None:
    """Connection management is hop by hop: clients that close after one request (HTTP/1.0,
    ``Connection: close``) are told so, while the proxy keeps its upstream connection."""
    port = proxied.ports["http1"]
    path, body = upstream.hello
    requests = (
        b"GET %s HTTP/1.0\r\n\r\n",
        b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    for request in requests * 3:
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
            sock.sendall(request % path.encode())
            data = b""
            while chunk := sock.recv(65536):  # the proxy closes after the answer
                data += chunk
        head, _, got = data.partition(b"\r\n\r\n")
        assert head.split(b"\r\n")[0].split(b" ")[1] == b"200", head
        assert got == body
        if upstream.kind == "nginx":  # a keep-alive server: the proxy says close itself
            assert b"\r\nconnection: close" in head.lower(), head
    if upstream.kind == "nginx":
        stats = proxied.call(lambda: proxied.proxy.stats.snapshot())
        assert stats.counters[("upstream_cx_total", (("cluster", "web"),))] == 1
