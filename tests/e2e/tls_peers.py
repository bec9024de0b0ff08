"""TLS peers for the end-to-end tests: test certificates from ``trustme`` and a redis-server
that speaks only TLS and requires a client certificate."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

from tests.e2e.servers import DEADLINE, _stop, free_port, wait_for_port
from tests.peers import require_binary

__all__ = ["Pki", "make_pki", "peer_certificate", "redis_tls_server", "tls_connect"]

SERVER_NAMES = ("localhost", "127.0.0.1", "redis.test")


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, a server certificate (for SERVER_NAMES) and a client certificate
    it signed, and a client certificate from another CA (which the first does not trust)."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    stranger_cert: str
    stranger_key: str
    authority: trustme.CA

    def listener_tls(self, **more: Any) -> dict[str, Any]:
        return {"cert_file": self.server_cert, "key_file": self.server_key, **more}

    def cluster_tls(self, **more: Any) -> dict[str, Any]:
        """Verified against the CA, presenting the client certificate."""
        return {
            "ca_file": self.ca,
            "cert_file": self.client_cert,
            "key_file": self.client_key,
            **more,
        }

    def client_context(self, *, with_cert: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca)
        if with_cert:
            ctx.load_cert_chain(self.client_cert, self.client_key)
        return ctx


def make_pki(directory: Path) -> Pki:
    ca = trustme.CA()
    stranger = trustme.CA()
    server = ca.issue_cert(*SERVER_NAMES)
    client = ca.issue_cert("client.test")
    outsider = stranger.issue_cert("client.test")
    paths: dict[str, str] = {}
    for name, blob in (
        ("ca.pem", ca.cert_pem),
        ("server.pem", server.cert_chain_pems[0]),
        ("server.key", server.private_key_pem),
        ("client.pem", client.cert_chain_pems[0]),
        ("client.key", client.private_key_pem),
        ("stranger.pem", outsider.cert_chain_pems[0]),
        ("stranger.key", outsider.private_key_pem),
    ):
        blob.write_to_path(str(directory / name))
        paths[name] = str(directory / name)
    return Pki(
        ca=paths["ca.pem"],
        server_cert=paths["server.pem"],
        server_key=paths["server.key"],
        client_cert=paths["client.pem"],
        client_key=paths["client.key"],
        stranger_cert=paths["stranger.pem"],
        stranger_key=paths["stranger.key"],
        authority=ca,
    )


def tls_connect(port: int, ctx: ssl.SSLContext, server_name: str = "localhost") -> ssl.SSLSocket:
    """A blocking TLS client socket to 127.0.0.1:``port``, handshaken."""
    raw = socket.create_connection(("127.0.0.1", port), DEADLINE)
    try:
        return ctx.wrap_socket(raw, server_hostname=server_name)
    except BaseException:
        raw.close()
        raise


def peer_certificate(port: int, ca: str) -> str:
    """The SHA-256 of the certificate a TLS server on ``port`` presents now."""
    with tls_connect(port, ssl.create_default_context(cafile=ca)) as sock:
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


@contextlib.contextmanager
def redis_tls_server(pki: Pki, *extra: str) -> Iterator[int]:
    """redis-server with TLS only (no plaintext port), requiring a client certificate from
    the test CA; yields the TLS port."""
    binary = require_binary("redis-server")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mp-redis-tls-") as tmp:
        proc = subprocess.Popen(
            [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
             "--tls-cert-file", pki.server_cert, "--tls-key-file", pki.server_key,
             "--tls-ca-cert-file", pki.ca, "--tls-auth-clients", "yes",
             "--save", "", "--appendonly", "no", "--dir", tmp, "--daemonize", "no",
             "--loglevel", "warning", *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for_port(port, proc)
            yield port
        finally:
            _stop(proc)
