"""TLS end to end, on every adapter: termination on listeners (with and without client
certificates), origination to clusters (verified, with the proxy's client certificate),
handshake failures, certificates read again on reload, and TLS with Redis logins on both
sides.

Peers: redis-server with TLS only (``--tls-port``, client certificates required) and
redis-py with ``ssl=True``; httpx and curl over TLS to the sample HTTP server; the thriftpy2
client's own TLS socket; Dubbo frames made by the Dubbo client's encoder over a TLS socket
(that client has no TLS). Certificates come from ``trustme``.
"""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from thriftpy2.rpc import make_client

from metaprotocol.configfile import parse_config
from metaprotocol.samples.dubbo_provider import GREETINGS
from metaprotocol.samples.thrift_server import Calculator, ThriftServer
from metaprotocol.testing.serving import RunningProxy, start_proxy
from metaprotocol.tls import TlsError
from tests.adapters.test_runner import Proc, proc_factory  # noqa: F401
from tests.e2e.dubbo_frames import read_frame, request_frame
from tests.e2e.servers import (
    DEADLINE,
    big_body,
    dubbo_provider,
    free_port,
    http_server,
    proxy_config,
    recv_until_closed,
    wait_until,
)
from tests.e2e.tls_peers import Pki, make_pki, peer_certificate, redis_tls_server, tls_connect
from tests.peers import require_binary

HANDSHAKE_ERROR = "downstream_cx_ssl_handshake_error"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def tls_redis(pki: Pki) -> Iterator[int]:
    with redis_tls_server(pki) as port:
        yield port


def _tls_client(port: int, pki: Pki, *, with_cert: bool = False, **more: Any) -> redis.Redis:
    options: dict[str, Any] = dict(more)
    if with_cert:
        options |= {"ssl_certfile": pki.client_cert, "ssl_keyfile": pki.client_key}
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        ssl=True,
        ssl_ca_certs=pki.ca,
        socket_timeout=DEADLINE,
        **options,
    )


def _counter(running: RunningProxy, name: str, labels: tuple[tuple[str, str], ...]) -> int:
    return running.call(lambda: running.proxy.stats.counter(name, labels))


def test_redis_with_tls_on_both_sides(adapter: str, pki: Pki, tls_redis: int) -> None:
    config = proxy_config(
        "redis",
        {"main": [tls_redis]},
        listener={"tls": pki.listener_tls()},
        cluster_options={"tls": pki.cluster_tls(server_name="redis.test")},
    )
    with start_proxy(config, adapter) as running:
        client = _tls_client(running.ports["redis"], pki)
        direct = _tls_client(tls_redis, pki, with_cert=True)
        prefix = f"tls:{adapter}:"
        large = big_body(600_000)  # many TLS records, partial writes on both sides
        try:
            assert client.set(prefix + "k", "v") is True
            assert client.get(prefix + "k") == b"v"
            assert client.set(prefix + "large", large) is True
            assert client.get(prefix + "large") == large
            pipe = client.pipeline(transaction=False)
            for i in range(200):
                pipe.set(f"{prefix}n{i}", i)
                pipe.get(f"{prefix}n{i}")
            assert pipe.execute()[1::2] == [str(i).encode() for i in range(200)]
            assert direct.get(prefix + "large") == large  # it really went through redis
        finally:
            client.close()
            direct.close()
        labels = (("listener", "redis"),)
        assert _counter(running, HANDSHAKE_ERROR, labels) == 0


def test_plaintext_client_to_a_tls_listener_gets_nothing(
    adapter: str, pki: Pki, redis_port: int
) -> None:
    config = proxy_config("redis", {"main": [redis_port]}, listener={"tls": pki.listener_tls()})
    with start_proxy(config, adapter) as running:
        with socket.create_connection(("127.0.0.1", running.ports["redis"]), DEADLINE) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            answer = recv_until_closed(sock)
        # Nothing, or at most a TLS alert record (content type 21): never a Redis reply.
        assert answer == b"" or answer[0] == 21, answer
        labels = (("listener", "redis"),)
        wait_until(lambda: _counter(running, HANDSHAKE_ERROR, labels) == 1)
        # The core never saw the connection.
        assert _counter(running, "downstream_cx_total", labels) == 0
        client = _tls_client(running.ports["redis"], pki)
        try:
            assert client.ping() is True
        finally:
            client.close()
        assert _counter(running, "downstream_cx_total", labels) == 1


def test_mtls_listener_refuses_clients_without_a_trusted_certificate(
    adapter: str, pki: Pki, redis_port: int
) -> None:
    tls = pki.listener_tls(client_ca_file=pki.ca, min_version="1.3")
    config = proxy_config("redis", {"main": [redis_port]}, listener={"tls": tls})
    with start_proxy(config, adapter) as running:
        port = running.ports["redis"]
        trusted = _tls_client(port, pki, with_cert=True)
        try:
            assert trusted.set(f"mtls:{adapter}", "yes") is True
            assert trusted.get(f"mtls:{adapter}") == b"yes"
        finally:
            trusted.close()
        anonymous = _tls_client(port, pki)
        with pytest.raises(redis.exceptions.ConnectionError):
            anonymous.ping()
        anonymous.close()
        stranger = redis.Redis(
            host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=pki.ca,
            ssl_certfile=pki.stranger_cert, ssl_keyfile=pki.stranger_key,
            socket_timeout=DEADLINE,
        )  # fmt: skip
        with pytest.raises(redis.exceptions.ConnectionError):
            stranger.ping()
        stranger.close()
        # min_version 1.3: a TLS 1.2 client is refused too.
        old = pki.client_context(with_cert=True)
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, ConnectionError)):
            tls_connect(port, old).close()
        labels = (("listener", "redis"),)
        # (redis-py retries a failed connection: each try is a failed handshake.)
        wait_until(lambda: _counter(running, HANDSHAKE_ERROR, labels) >= 3)
        assert _counter(running, "downstream_cx_total", labels) == 1


def test_wrong_upstream_server_name_is_an_error_reply(
    adapter: str, pki: Pki, tls_redis: int
) -> None:
    config = proxy_config(
        "redis",
        {"main": [tls_redis]},
        cluster_options={"tls": pki.cluster_tls(server_name="not-redis.test")},
    )
    with start_proxy(config, adapter) as running:
        client = redis.Redis(host="127.0.0.1", port=running.ports["redis"], socket_timeout=DEADLINE)
        try:
            with pytest.raises(redis.exceptions.ResponseError):
                client.get("anything")
            # The connection survives its error reply.
            with pytest.raises(redis.exceptions.ResponseError):
                client.get("anything")
        finally:
            client.close()
        failures = _counter(running, "upstream_cx_connect_fail", (("cluster", "main"),))
        assert failures >= 2


def test_upstream_without_the_proxys_client_certificate_is_a_connect_failure(
    adapter: str, pki: Pki, tls_redis: int
) -> None:
    config = proxy_config(
        "redis", {"main": [tls_redis]}, cluster_options={"tls": {"ca_file": pki.ca}}
    )
    with start_proxy(config, adapter) as running:
        client = redis.Redis(host="127.0.0.1", port=running.ports["redis"], socket_timeout=DEADLINE)
        try:
            # redis-server asks for a certificate and refuses the handshake without one.
            with pytest.raises(redis.exceptions.ResponseError):
                client.get("anything")
        finally:
            client.close()


def test_http_over_tls_with_httpx_and_curl(adapter: str, pki: Pki) -> None:
    with http_server() as upstream:
        config = proxy_config(
            "http1", {"web": [upstream.server_address[1]]}, listener={"tls": pki.listener_tls()}
        )
        with start_proxy(config, adapter) as running:
            port = running.ports["http1"]
            body = big_body(300_000)
            with httpx.Client(verify=pki.client_context(), timeout=DEADLINE) as client:
                hello = client.get(f"https://localhost:{port}/hello")
                assert (hello.status_code, hello.text) == (200, "hello from python\n")
                posted = client.post(f"https://localhost:{port}/digest", content=body)
                assert posted.status_code == 200
                assert posted.text.startswith(f"{len(body)} ")
                big = client.get(f"https://localhost:{port}/big")
                assert big.content == big_body(len(big.content)) and len(big.content) > 1000
            curl = require_binary("curl")
            out = subprocess.run(
                [curl, "-sS", "--cacert", pki.ca, "-w", "\n%{http_version}",
                 f"https://localhost:{port}/hello"],
                capture_output=True, timeout=DEADLINE, check=True,
            ).stdout.decode()  # fmt: skip
            assert out == "hello from python\n\n1.1"
            # ALPN: the http1 codec declares http/1.1, picked over h2 when a client offers both.
            ctx = pki.client_context()
            ctx.set_alpn_protocols(["h2", "http/1.1"])
            with tls_connect(port, ctx) as sock:
                assert sock.selected_alpn_protocol() == "http/1.1"


def test_thrift_over_tls_with_the_thriftpy2_client(adapter: str, pki: Pki) -> None:
    with ThriftServer(transport="buffered", protocol="binary", name="a") as upstream:
        config = proxy_config(
            "thrift",
            {"a": [upstream.address[1]]},
            listener={"tls": pki.listener_tls(), "codec_options": {"transport": "unframed"}},
        )
        with start_proxy(config, adapter) as running:
            client: Any = make_client(
                Calculator,
                "localhost",
                running.ports["thrift"],
                timeout=int(DEADLINE * 1000),
                ssl_context=pki.client_context(),
            )
            try:
                assert [client.add(i, 1000) for i in range(20)] == [i + 1000 for i in range(20)]
                text = "héllo " * 5000
                assert client.echo(text) == text
            finally:
                client.close()


def test_dubbo_over_tls_with_client_frames(adapter: str, pki: Pki) -> None:
    with dubbo_provider() as provider:
        config = proxy_config("dubbo", {"v1": [provider]}, listener={"tls": pki.listener_tls()})
        with (
            start_proxy(config, adapter) as running,
            tls_connect(running.ports["dubbo"], pki.client_context()) as sock,
        ):
            frames = [request_frame(GREETINGS, "1.0.0", "sayHi", [f"tls{i}"]) for i in range(5)]
            sock.sendall(b"".join(frames))
            bodies = {}
            for _ in frames:
                _, status, request_id, body = read_frame(sock)
                assert status == 20  # OK
                bodies[request_id] = body
            for i, frame in enumerate(frames):
                assert b"hi, tls%d" % i in bodies[struct.unpack("!q", frame[4:12])[0]]


def test_reload_reads_the_certificates_again(adapter: str, pki: Pki, redis_port: int) -> None:
    directory = Path(pki.server_cert).parent / f"reload-{adapter}"
    directory.mkdir(exist_ok=True)
    cert, key = directory / "server.pem", directory / "server.key"
    shutil.copy(pki.server_cert, cert)
    shutil.copy(pki.server_key, key)
    data = {
        "listeners": [{"name": "redis", "address": "127.0.0.1:0", "codec": "redis",
                       "tls": {"cert_file": str(cert), "key_file": str(key)},
                       "routes": [{"name": "all", "route": {"cluster": "main"}}]}],
        "clusters": [{"name": "main", "endpoints": [f"127.0.0.1:{redis_port}"]}],
    }  # fmt: skip
    with start_proxy(parse_config(data), adapter) as running:
        port = running.ports["redis"]
        before = peer_certificate(port, pki.ca)
        established = _tls_client(port, pki)
        try:
            assert established.ping() is True
            renewed = pki.authority.issue_cert("localhost", "127.0.0.1")
            renewed.cert_chain_pems[0].write_to_path(str(cert))
            renewed.private_key_pem.write_to_path(str(key))
            running.reload(parse_config(data))  # what SIGHUP does with the same file
            after = peer_certificate(port, pki.ca)
            assert after != before
            assert established.ping() is True  # established connections keep theirs
        finally:
            established.close()
        # A reload whose certificate no longer loads changes nothing.
        valid_then = parse_config(data)
        key.write_text("not a key")
        with pytest.raises(TlsError, match="key_file"):
            running.reload(valid_then)
        assert peer_certificate(port, pki.ca) == after


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_moved_tls_listener_serves_its_backlog_on_the_asyncio_adapter(
    loop: str, pki: Pki, redis_port: int
) -> None:
    """A client the kernel queued on a TLS listener before a reload moved it (the loop does
    not run between the connect and the reload) gets its handshake and its answers."""
    import asyncio

    from metaprotocol.adapters import asyncio as asyncio_adapter

    def config(port: int) -> Any:
        return parse_config({
            "listeners": [{"name": "redis", "address": f"127.0.0.1:{port}", "codec": "redis",
                           "tls": pki.listener_tls(),
                           "routes": [{"name": "all", "route": {"cluster": "main"}}]}],
            "clusters": [{"name": "main", "endpoints": [f"127.0.0.1:{redis_port}"]}],
        })  # fmt: skip

    def ping(raw: socket.socket) -> bytes:
        with pki.client_context().wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"*1\r\n$4\r\nPING\r\n")
            return tls.recv(7)

    async def main() -> bytes:
        handle = await asyncio_adapter.serve(config(0), admin=False)
        try:
            with socket.create_connection(handle.addresses["redis"], DEADLINE) as waiting:
                handle.reload(config(free_port()))
                return await asyncio.get_running_loop().run_in_executor(None, ping, waiting)
        finally:
            await handle.close()

    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        assert uvloop.run(main()) == b"+PONG\r\n"
    else:
        assert asyncio.run(main()) == b"+PONG\r\n"


def test_tls_listener_counts_a_client_that_never_finishes_its_handshake_as_closed(
    adapter: str, pki: Pki, redis_port: int
) -> None:
    """A client that connects and goes away mid-handshake is counted, never served."""
    config = proxy_config("redis", {"main": [redis_port]}, listener={"tls": pki.listener_tls()})
    with start_proxy(config, adapter) as running:
        ctx = pki.client_context()
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        half = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
        with pytest.raises(ssl.SSLWantReadError):
            half.do_handshake()
        with socket.create_connection(("127.0.0.1", running.ports["redis"]), DEADLINE) as sock:
            sock.sendall(outgoing.read())  # the ClientHello, then nothing more
            assert sock.recv(1)  # the server's reply started
        labels = (("listener", "redis"),)
        wait_until(lambda: _counter(running, HANDSHAKE_ERROR, labels) == 1)
        assert _counter(running, "downstream_cx_total", labels) == 0


UPSTREAM_PASSWORD = "tls-upstream-pw-91b2"
PROXY_PASSWORD = "tls-proxy-pw-5e7d"


@pytest.fixture(scope="module")
def locked_tls_redis(pki: Pki) -> Iterator[int]:
    """redis-server with TLS only (client certificates required) and a password."""
    with redis_tls_server(pki, "--requirepass", UPSTREAM_PASSWORD) as port:
        yield port


def test_redis_tls_both_sides_with_logins_both_sides(
    adapter: str, pki: Pki, locked_tls_redis: int
) -> None:
    """TLS and passwords together: clients log in to the TLS listener, the proxy logs in
    to redis-server over TLS (with its client certificate)."""
    config = proxy_config(
        "redis",
        {"main": [locked_tls_redis]},
        listener={
            "tls": pki.listener_tls(),
            "codec_options": {"auth": {"password": PROXY_PASSWORD}},
        },
        cluster_options={
            "tls": pki.cluster_tls(server_name="redis.test"),
            "auth": {"password": UPSTREAM_PASSWORD},
        },
    )
    no_retry = {"retry": Retry(NoBackoff(), 0)}
    with start_proxy(config, adapter) as running:
        port = running.ports["redis"]
        client = _tls_client(port, pki, password=PROXY_PASSWORD, **no_retry)
        key = f"tls-auth:{adapter}"
        try:
            assert client.set(key, "locked") is True
            assert client.get(key) == b"locked"
        finally:
            client.close()
        direct = _tls_client(locked_tls_redis, pki, with_cert=True, password=UPSTREAM_PASSWORD)
        try:
            assert direct.get(key) == b"locked"  # it reached the locked TLS server
        finally:
            direct.close()
        wrong = _tls_client(port, pki, password="not-the-password", **no_retry)
        with pytest.raises(redis.AuthenticationError, match="invalid username-password pair"):
            wrong.ping()
        wrong.close()
        anonymous = _tls_client(port, pki, **no_retry)
        with pytest.raises(redis.AuthenticationError, match="Authentication required"):
            anonymous.get(key)
        anonymous.close()


def test_sighup_serves_renewed_certificates(
    adapter: str,
    pki: Pki,
    redis_port: int,
    tmp_path: Path,
    proc_factory: list[Proc],  # noqa: F811
) -> None:
    """``metaprotocol run``: SIGHUP reads the certificate files again; a file that no longer
    loads is rejected and the running certificate stays."""
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    shutil.copy(pki.server_cert, cert)
    shutil.copy(pki.server_key, key)
    config = tmp_path / "proxy.yaml"
    config.write_text(
        f"""
listeners:
  - name: redis
    address: 127.0.0.1:0
    codec: redis
    tls: {{cert_file: {cert}, key_file: {key}}}
    routes: [{{name: all, route: {{cluster: main}}}}]
clusters:
  - {{name: main, endpoints: ["127.0.0.1:{redis_port}"]}}
""",
        encoding="utf-8",
    )
    proc = Proc([str(config), "--adapter", adapter])
    proc_factory.append(proc)
    port = proc.address("listener redis on")[1]
    before = peer_certificate(port, pki.ca)
    renewed = pki.authority.issue_cert("localhost", "127.0.0.1")
    renewed.cert_chain_pems[0].write_to_path(str(cert))
    renewed.private_key_pem.write_to_path(str(key))
    proc.popen.send_signal(signal.SIGHUP)
    proc.wait_for("reloaded")
    after = peer_certificate(port, pki.ca)
    assert after != before
    key.write_text("not a key\n", encoding="utf-8")
    proc.popen.send_signal(signal.SIGHUP)
    proc.wait_for("rejected")
    assert peer_certificate(port, pki.ca) == after
    client = _tls_client(port, pki)
    try:
        assert client.ping() is True
    finally:
        client.close()
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.popen.wait(DEADLINE) == 0
