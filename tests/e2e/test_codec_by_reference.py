"""A codec the config names as ``module:Class``, end to end on every adapter: the worked
example of docs/writing-a-codec.md (examples/trpc_unary_codec.py, found on the module path
like any codec that is not installed) routes tRPC calls between two tRPC echo servers and
answers an unroutable one itself."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from metaprotocol.configfile import parse_config
from metaprotocol.core.config import Config
from metaprotocol.core.proxy import Proxy
from metaprotocol.testing.serving import RunningProxy, start_proxy
from tests.e2e import trpc_peers as peers
from tests.e2e.servers import DEADLINE
from tests.e2e.trpc_peers import TrpcClient, echo_server

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
REFERENCE = "trpc_unary_codec:TrpcUnaryCodec"
ALPHA = "/trpc.test.alpha.Greeter/SayHello"
BETA = "/trpc.test.beta.Greeter/SayHi"
NOWHERE = "/trpc.test.gamma.Greeter/Lost"
ROUTE_NOT_FOUND = 11  # TrpcRetCode the example answers an unroutable call with


def _data(a: int, b: int, codec: str = REFERENCE) -> dict[str, Any]:
    return {
        "listeners": [{
            "name": "trpc", "address": "127.0.0.1:0", "codec": codec,
            "routes": [
                {"name": "alpha", "match": {"metadata": {"func": {"prefix": "/trpc.test.alpha."}}},
                 "route": {"cluster": "a"}},
                {"name": "beta", "match": {"metadata": {"func": {"prefix": "/trpc.test.beta."}}},
                 "route": {"cluster": "b"}},
            ],
        }],
        "clusters": [
            {"name": "a", "endpoints": [f"127.0.0.1:{a}"]},
            {"name": "b", "endpoints": [f"127.0.0.1:{b}"]},
        ],
    }  # fmt: skip


@pytest.fixture
def on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))


@pytest.fixture
def ports(on_path: None) -> Iterator[tuple[int, int]]:
    with echo_server("a") as a, echo_server("b") as b:
        yield a.port, b.port


@pytest.fixture
def config(ports: tuple[int, int]) -> Config:
    return parse_config(_data(*ports))


def test_the_codec_is_the_examples_class(config: Config) -> None:
    from metaprotocol.codecs.registry import get_codec

    assert config.listeners[0].codec == REFERENCE
    factory = get_codec(REFERENCE)
    assert factory is sys.modules["trpc_unary_codec"].TrpcUnaryCodec


def test_calls_are_routed_and_answered(config: Config, adapter: str) -> None:
    with start_proxy(config, adapter) as running:
        _calls(running)


def test_an_embedding_program_gives_its_own_codecs(ports: tuple[int, int]) -> None:
    """The Python API: the same codecs to the config loader and to the core, which the
    adapter then serves (its clock is the event loop's, ``time.monotonic`` for asyncio)."""
    from trpc_unary_codec import TrpcUnaryCodec  # type: ignore[import-not-found]

    codecs = {"my-trpc": TrpcUnaryCodec}
    config = parse_config(_data(*ports, codec="my-trpc"), codecs=codecs)
    proxy = Proxy(config, now=time.monotonic(), codecs=codecs)
    with start_proxy(config, "asyncio", proxy=proxy) as running:
        _calls(running)


def _calls(running: RunningProxy) -> None:
    conn = TrpcClient(running.ports["trpc"], DEADLINE)
    try:
        funcs = {i: (ALPHA, BETA, NOWHERE)[i % 3] for i in range(1, 31)}
        conn.send(b"".join(peers.request_frame(i, f, b"call-%d" % i) for i, f in funcs.items()))
        replies: dict[int, Any] = {}
        for _ in funcs:
            frame = conn.read()
            header = frame.response()
            assert header.request_id not in replies, "two answers for one request"
            replies[header.request_id] = (header, frame.body)
        assert sorted(replies) == sorted(funcs)
        for rid, func in funcs.items():
            header, body = replies[rid]
            if func == NOWHERE:  # the example's own error reply, carrying the request's id
                assert header.ret == ROUTE_NOT_FOUND and body == b""
                continue
            server = "a" if func == ALPHA else "b"
            assert header.ret == 0, header.error_msg
            assert header.trans_info["server"].decode() == server
            assert body == b"%s:call-%d" % (server.encode(), rid)
    finally:
        conn.close()


def test_the_command_line_loads_it_from_pythonpath(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(
        "listeners:\n"
        f"  - {{name: trpc, address: '127.0.0.1:0', codec: '{REFERENCE}',\n"
        "     routes: [{name: all, route: {cluster: a}}]}\n"
        "clusters: [{name: a, endpoints: ['127.0.0.1:1']}]\n"
    )
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES)}

    def check(environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "metaprotocol", "check", str(path)],
            env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=DEADLINE,
        )  # fmt: skip

    found = check(env)
    assert found.returncode == 0, found.stderr
    assert f"trpc ({REFERENCE} on 127.0.0.1:0)" in found.stdout
    env.pop("PYTHONPATH")
    missing = check(env)
    assert missing.returncode == 1
    assert (
        "listeners[0].codec: codec module 'trpc_unary_codec' not found (it must be "
        "importable: installed, or in a directory on PYTHONPATH)"
    ) in missing.stderr
