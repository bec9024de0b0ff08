"""Real peers for the end-to-end tests: redis-server, nginx, Python HTTP and raw TCP servers.

Every server binds a free loopback port (never a default port), is polled for readiness
with a bounded deadline (never a fixed sleep), and is stopped by the context manager that
started it, whatever happens in the test.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from metaprotocol.configfile import parse_config
from metaprotocol.core.config import Config
from tests.peers import require_binary

__all__ = [
    "BIG_BODY",
    "DEADLINE",
    "EchoHTTPHandler",
    "GatedHandler",
    "MiniServer",
    "big_body",
    "dubbo_provider",
    "free_port",
    "http_server",
    "nginx_server",
    "proxy_config",
    "recv_exactly",
    "recv_until_closed",
    "redis_server",
    "refused_port",
    "scrape_admin",
    "wait_for_port",
    "wait_until",
]

T = TypeVar("T")
DEADLINE = 10.0  # seconds any readiness poll may take before the test fails


def big_body(size: int) -> bytes:
    """``size`` deterministic, non-repeating-looking bytes (so truncation or reordering shows)."""
    block = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(1024))
    return (block * (size // len(block) + 1))[:size]


BIG_BODY = big_body(1024 * 1024)


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picked it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections while the block runs: bound and never
    listening, so unlike a ``free_port`` number no other process's listener can take it
    meanwhile, and no outgoing connection gets it as its own source port (a connection
    to an unbound ephemeral port can connect to itself)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        yield port


def wait_until(what: Callable[[], T], timeout: float = DEADLINE, message: str = "") -> T:
    """Poll ``what`` until it returns something truthy; fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or what}")
        time.sleep(0.01)  # polling interval, not a wait for success


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Until something accepts TCP connections on 127.0.0.1:``port`` (or ``proc`` died)."""

    def accepting() -> bool:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{proc.args!r} exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    wait_until(accepting, message=f"127.0.0.1:{port} to accept connections")


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(DEADLINE)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        data = sock.recv(n - len(chunks))
        if not data:
            raise AssertionError(f"connection closed after {len(chunks)} of {n} bytes")
        chunks += data
    return bytes(chunks)


def recv_until_closed(sock: socket.socket, limit: int = 1 << 22) -> bytes:
    """Everything the peer sends until it closes (a reset counts as a close)."""
    data = bytearray()
    with contextlib.suppress(ConnectionResetError):
        while len(data) < limit:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return bytes(data)


# ---------------------------------------------------------------- redis-server


@contextlib.contextmanager
def redis_server(password: str | None = None) -> Iterator[int]:
    """A throwaway redis-server on a free port, no persistence; yields the port. With
    ``password`` it runs with ``--requirepass`` (clients must AUTH)."""
    binary = require_binary("redis-server")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mp-redis-") as tmp:
        auth = ["--requirepass", password] if password is not None else []
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp, "--daemonize", "no", "--loglevel", "warning",
             *auth],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for_port(port, proc)
            yield port
        finally:
            _stop(proc)


# ---------------------------------------------------------------- nginx

_NGINX_CONF = """
worker_processes 1;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    default_type application/octet-stream;
    types {{ text/plain txt; }}
    keepalive_requests 10000;
    client_max_body_size 8m;
    gzip on;
    gzip_types text/plain;
    gzip_min_length 1;
    server {{
        listen 127.0.0.1:{port};
        root {tmp}/www;
        location = /hello {{ return 200 "hello from nginx\\n"; }}
        location = /upload {{ return 200 "uploaded\\n"; }}
    }}
}}
"""


@contextlib.contextmanager
def nginx_server() -> Iterator[tuple[int, Path]]:
    """nginx in the foreground with a generated config; yields (port, document root).

    The root holds ``big.bin`` (``BIG_BODY``) and ``text.txt`` (served gzip + chunked when
    the client accepts gzip).
    """
    binary = require_binary("nginx")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mp-nginx-") as tmp:
        www = Path(tmp) / "www"
        www.mkdir()
        (www / "big.bin").write_bytes(BIG_BODY)
        (www / "text.txt").write_bytes(b"".join(b"line %d of the text\n" % i for i in range(5000)))
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(_NGINX_CONF.format(tmp=tmp, port=port))
        proc = subprocess.Popen(
            [binary, "-p", tmp, "-c", str(conf), "-e", f"{tmp}/error.log", "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for_port(port, proc)
            yield port, www
        finally:
            _stop(proc, signal.SIGQUIT)
            if proc.stderr is not None:
                proc.stderr.close()


# ---------------------------------------------------------------- Python http.server


class EchoHTTPHandler(http.server.BaseHTTPRequestHandler):
    """``GET /hello``, ``GET /big`` (1 MB), ``GET /chunked`` (a chunked response), ``/whoami``,
    ``POST /digest`` (answers ``<length> <sha256>`` of the body, Content-Length or chunked)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def do_GET(self) -> None:
        if self.path == "/hello":
            self._send(200, b"hello from python\n")
        elif self.path == "/big":
            self._send(200, BIG_BODY, "application/octet-stream")
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(50):
                piece = b"chunk %d;" % i
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/whoami":
            self._send(200, str(getattr(self.server, "name", "")).encode())
        elif self.path.startswith("/path/"):
            self._send(200, self.path.encode())
        else:
            self._send(404, b"not found\n")

    def do_POST(self) -> None:
        body = self._read_body()
        self._send(200, b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode()))


class GatedHandler(EchoHTTPHandler):
    """``GET /gated`` answers only once the server's ``gate`` event is set; ``arrived`` is set
    when such a request came in. Everything else as ``EchoHTTPHandler``."""

    def do_GET(self) -> None:
        if self.path == "/gated":
            server: Any = self.server
            server.arrived.set()
            server.gate.wait(DEADLINE)
            self._send(200, b"released\n")
        else:
            super().do_GET()


@contextlib.contextmanager
def http_server(
    handler: type[http.server.BaseHTTPRequestHandler] = EchoHTTPHandler,
    name: str = "",
) -> Iterator[http.server.ThreadingHTTPServer]:
    """A ThreadingHTTPServer on a free loopback port, serving in a thread (``GET /whoami``
    answers ``name``)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server_any: Any = server
    server_any.name = name
    server_any.gate = threading.Event()
    server_any.arrived = threading.Event()
    thread = threading.Thread(target=server.serve_forever, name="e2e-http", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server_any.gate.set()
        server.shutdown()
        server.server_close()
        thread.join(DEADLINE)


# ---------------------------------------------------------------- the sample Dubbo provider


@contextlib.contextmanager
def dubbo_provider() -> Iterator[int]:
    """``python -m metaprotocol.samples.dubbo_provider`` on a free port; yields the port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "metaprotocol.samples.dubbo_provider", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()  # "dubbo sample provider listening on H:P"
        assert "listening on" in line, f"unexpected first line {line!r}"
        port = int(line.rsplit(":", 1)[1])
        wait_for_port(port, proc)
        yield port
    finally:
        _stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()


# ---------------------------------------------------------------- raw TCP peers


class MiniServer:
    """A tiny TCP server whose per-connection behaviour is a function of the socket.

    ``behaviour(conn)`` runs in a thread per connection; the server closes the connection
    after it returns. ``connections`` counts accepted connections.
    """

    def __init__(self, behaviour: Callable[[socket.socket], None]) -> None:
        self._behaviour = behaviour
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.connections = 0
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._stopped = threading.Event()
        self._accept_thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> MiniServer:
        self._accept_thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in [self._accept_thread, *self._threads]:
            thread.join(DEADLINE)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            self._conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._behaviour(conn)
        except OSError:
            pass
        finally:
            conn.close()

    @staticmethod
    def reset(conn: socket.socket) -> None:
        """Close ``conn`` with an RST (SO_LINGER 0) instead of a FIN."""
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()


# ---------------------------------------------------------------- proxy config and admin


def proxy_config(
    codec: str,
    clusters: Mapping[str, list[int]],
    routes: list[dict[str, Any]] | None = None,
    *,
    listener: Mapping[str, Any] | None = None,
    cluster_options: Mapping[str, Any] | None = None,
    admin: bool = True,
) -> Config:
    """A one-listener config on a free port (``127.0.0.1:0``); clusters are name -> ports.

    ``routes`` default to a single catch-all route to the first cluster; ``listener`` and
    ``cluster_options`` add keys to the listener and to every cluster.
    """
    if routes is None:
        routes = [{"name": "default", "route": {"cluster": next(iter(clusters))}}]
    data: dict[str, Any] = {
        "listeners": [
            {"name": codec, "address": "127.0.0.1:0", "codec": codec, "routes": routes,
             **(listener or {})}
        ],
        "clusters": [
            {"name": name, "endpoints": [f"127.0.0.1:{p}" for p in ports],
             **(cluster_options or {})}
            for name, ports in clusters.items()
        ],
    }  # fmt: skip
    if admin:
        data["admin"] = {"address": "127.0.0.1:0"}
    return parse_config(data)


def scrape_admin(address: tuple[str, int], path: str = "/stats/prometheus") -> str:
    """GET an admin path; the body as text (raises on a non-200 status)."""
    url = f"http://{address[0]}:{address[1]}{path}"
    with urllib.request.urlopen(url, timeout=DEADLINE) as response:
        body: bytes = response.read()
        return body.decode()
