"""The ``ProbesHealth`` hook: each codec's probe bytes and how it judges the answer.

Golden bytes: redis-cli's ``PING``; Java Dubbo's heartbeat request and response (captures in
the shared wire vectors); answers of a real redis-server and nginx.
"""

from __future__ import annotations

import socket

import pytest

from metaprotocol.codecs.dubbo import DubboCodec
from metaprotocol.codecs.http1 import Http1Codec
from metaprotocol.codecs.redis import RedisCodec
from metaprotocol.codecs.registry import get_codec
from metaprotocol.core.codec import Capabilities, Codec, ProbesHealth, Side, capabilities_of
from metaprotocol.core.config import HealthCheckRequest
from metaprotocol.core.message import Message
from tests.codecs.feeding import decode_all, feed
from tests.codecs.vectors import load_vectors
from tests.e2e.servers import nginx_server, redis_server

MAX = 1 << 20
REQUEST = HealthCheckRequest()
VECTORS = {v["id"]: bytes.fromhex(v["hex"]) for v in load_vectors("dubbo")}


def _probe(codec: Codec) -> ProbesHealth:
    assert isinstance(codec, ProbesHealth)
    return codec


def _exchange(port: int, data: bytes, codec: Codec, answers: int = 1) -> list[Message]:
    """Send ``data`` to a real peer on ``port``; decode ``answers`` answers fed byte by byte."""
    buffer = bytearray()
    messages: list[Message] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        while len(messages) < answers:
            chunk = sock.recv(65536)
            assert chunk, "the peer closed before answering"
            for byte in chunk:
                buffer.append(byte)
                messages += decode_all(codec, buffer)
    assert buffer == b""
    return messages


# ------------------------------------------------------------------ capabilities


def test_redis_dubbo_and_http1_probe_and_thrift_does_not() -> None:
    for name in ("redis", "dubbo", "http1"):
        assert capabilities_of(get_codec(name)).probe, name
    for name in ("thrift", "lengthprefixed"):
        assert not capabilities_of(get_codec(name)).probe, name
    assert capabilities_of(get_codec("dubbo")) == Capabilities(reply_status=True, probe=True)


# ------------------------------------------------------------------ redis


def test_redis_probe_is_ping_as_redis_cli_sends_it() -> None:
    assert _probe(RedisCodec(Side.UPSTREAM, {}, MAX)).probe_request(REQUEST) == (
        b"*1\r\n$4\r\nPING\r\n"
    )


def test_redis_probe_against_a_real_server_is_ok() -> None:
    with redis_server() as port:
        codec = RedisCodec(Side.UPSTREAM, {}, MAX)
        (answer,) = _exchange(port, _probe(codec).probe_request(REQUEST), codec)
    assert answer.frame == b"+PONG\r\n"
    assert _probe(codec).probe_ok(answer)


def test_redis_probe_refused_by_a_server_that_wants_a_login_is_not_ok() -> None:
    with redis_server(password="s3cret") as port:
        codec = RedisCodec(Side.UPSTREAM, {}, MAX)
        (answer,) = _exchange(port, _probe(codec).probe_request(REQUEST), codec)
    assert answer.frame.startswith(b"-NOAUTH")
    assert not _probe(codec).probe_ok(answer)


@pytest.mark.parametrize(
    "reply",
    [
        b"-LOADING Redis is loading the dataset in memory\r\n",
        b"-MASTERDOWN Link with MASTER is down\r\n",
        b"+OK\r\n",
        b"$4\r\nPONG\r\n",
    ],
)
def test_redis_answers_other_than_pong_are_not_ok(reply: bytes) -> None:
    codec = RedisCodec(Side.UPSTREAM, {}, MAX)
    (answer,) = feed(codec, [reply])
    assert not _probe(codec).probe_ok(answer)


# ------------------------------------------------------------------ dubbo


def test_dubbo_probe_is_java_dubbos_heartbeat_request() -> None:
    codec = _probe(DubboCodec(Side.UPSTREAM, {}, MAX))
    # Java Dubbo 3.0.7's first heartbeat (request id 1), byte for byte.
    assert codec.probe_request(REQUEST) == VECTORS["dubbo-008"]
    second = codec.probe_request(REQUEST)
    assert second == VECTORS["dubbo-008"][:4] + (2).to_bytes(8, "big") + VECTORS["dubbo-008"][12:]


@pytest.mark.parametrize(
    "vector",
    [
        "dubbo-009",  # Java Dubbo 3.0.7's heartbeat response, status 20
        "dubbo-037",  # dubbo-ssl-python's, status 20
        "dubbo-029",  # dubbo-py's, status 0
    ],
)
def test_dubbo_heartbeat_responses_to_the_probe_are_ok(vector: str) -> None:
    codec = DubboCodec(Side.UPSTREAM, {}, MAX)
    _probe(codec).probe_request(REQUEST)  # id 1, as in the captures
    (answer,) = feed(codec, [bytes([b]) for b in VECTORS[vector]])
    assert _probe(codec).probe_ok(answer)


@pytest.mark.parametrize(
    "frame",
    [
        VECTORS["dubbo-025"],  # a heartbeat response for id 6, not this probe's id
        VECTORS["dubbo-008"],  # a heartbeat request (the provider's own), not an answer
        VECTORS["dubbo-014"],  # an ordinary response
        # A heartbeat response with an error status (70 SERVICE_ERROR).
        VECTORS["dubbo-009"][:3] + b"\x46" + VECTORS["dubbo-009"][4:],
    ],
)
def test_dubbo_answers_other_than_this_heartbeats_ok_are_not_ok(frame: bytes) -> None:
    codec = DubboCodec(Side.UPSTREAM, {}, MAX)
    _probe(codec).probe_request(REQUEST)
    (answer,) = feed(codec, [frame])
    assert not _probe(codec).probe_ok(answer)


# ------------------------------------------------------------------ http1


def test_http1_probe_is_a_keep_alive_get_of_the_path_with_the_host() -> None:
    codec = _probe(Http1Codec(Side.UPSTREAM, {}, MAX))
    probe = codec.probe_request(HealthCheckRequest("/healthz?deep=1", "10.0.0.5:8080"))
    assert probe == (
        b"GET /healthz?deep=1 HTTP/1.1\r\nHost: 10.0.0.5:8080\r\n"
        b"User-Agent: metaprotocol-health-check\r\n\r\n"
    )
    # The server side of the same codec reads it as the request it is.
    (request,) = feed(Http1Codec(Side.DOWNSTREAM, {}, MAX), [probe])
    assert request.properties[":method"] == "GET"
    assert request.properties[":path"] == "/healthz?deep=1"
    assert request.properties[":authority"] == "10.0.0.5:8080"


@pytest.mark.parametrize(
    "request_",
    [
        HealthCheckRequest("healthz", "h"),
        HealthCheckRequest("/a b", "h"),
        HealthCheckRequest("/", "h\r\nX-Injected: 1"),
        HealthCheckRequest("/", None),  # the core always fills in the host
    ],
)
def test_http1_probe_refuses_what_would_break_the_request(request_: HealthCheckRequest) -> None:
    with pytest.raises(ValueError, match="health check"):
        _probe(Http1Codec(Side.UPSTREAM, {}, MAX)).probe_request(request_)


def test_http1_probes_against_nginx_2xx_is_ok_and_404_is_not() -> None:
    with nginx_server() as (port, _):
        codec = Http1Codec(Side.UPSTREAM, {}, MAX)
        host = f"127.0.0.1:{port}"
        data = _probe(codec).probe_request(HealthCheckRequest("/text.txt", host))
        data += _probe(codec).probe_request(HealthCheckRequest("/missing", host))
        ok, missing = _exchange(port, data, codec, answers=2)
    assert ok.properties[":status"] == "200" and _probe(codec).probe_ok(ok)
    assert missing.properties[":status"] == "404" and not _probe(codec).probe_ok(missing)


@pytest.mark.parametrize(
    ("status", "ok"), [(200, True), (204, True), (299, True), (301, False), (503, False)]
)
def test_http1_only_2xx_is_ok(status: int, ok: bool) -> None:
    codec = Http1Codec(Side.UPSTREAM, {}, MAX)
    _probe(codec).probe_request(HealthCheckRequest("/", "h"))
    (answer,) = feed(codec, [b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % status])
    assert _probe(codec).probe_ok(answer) is ok
