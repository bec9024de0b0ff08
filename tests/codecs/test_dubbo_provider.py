"""The sample Dubbo provider on loopback: routing-visible versions, heartbeats, a real client."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest

from metaprotocol.codecs.dubbo import DubboCodec
from metaprotocol.codecs.dubbo.body import skip_response_value
from metaprotocol.codecs.dubbo.header import build_header, parse_header
from metaprotocol.codecs.dubbo.hessian2 import ReadContext, read_string, read_value, write_string
from metaprotocol.codecs.dubbo.hessian2 import write_string_map as attachments_map
from metaprotocol.core.codec import Side
from metaprotocol.core.message import NEED_DATA, Message, MessageType
from metaprotocol.samples.dubbo_provider import ECHO, GREETINGS, serve


def request(
    request_id: int,
    version: str,
    method: str = "sayHi",
    service: str = GREETINGS,
    flag: int = 0xC2,
    dubbo_version: str = "2.0.2",
) -> bytes:
    body = b"".join(
        write_string(s) for s in (dubbo_version, service, version, method, "Ljava/lang/String;")
    )
    body += write_string("bob") + attachments_map({"path": service, "x-test": "yes"})
    return build_header(flag, 0, request_id, len(body)) + body


async def exchange(port: int, payload: bytes, count: int) -> list[Message]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    codec = DubboCodec(Side.UPSTREAM, {}, 1 << 20)
    buf = bytearray()
    out: list[Message] = []
    try:
        while len(out) < count:
            data = await asyncio.wait_for(reader.read(65536), 5)
            assert data, "provider closed the connection"
            buf += data
            while (msg := codec.decode(buf)) is not NEED_DATA:
                assert isinstance(msg, Message)
                out.append(msg)
    finally:
        writer.close()
        await writer.wait_closed()
    return out


def value_of(msg: Message) -> object:
    flag, pos = skip_response_value(msg.frame)
    assert flag in (1, 4)
    start = 16 + (1 if msg.frame[16] >= 0x90 else 0)
    value, _ = read_value(msg.frame, start, pos, ReadContext())
    return value


def test_provider_answers_by_version_heartbeat_and_errors() -> None:
    async def main() -> None:
        server = await serve("127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            payload = (
                request(1, "1.0.0")
                + request(2, "2.0.0")
                + request(3, "1.0.0", flag=0x82)  # one-way: no answer
                + bytes.fromhex("dabbe2000000000000000009000000014e")  # heartbeat id 9
                + request(4, "1.0.0", service="com.example.Missing")
                + request(5, "", method="attachments", service=ECHO, dubbo_version="2.6.0")
            )
            replies = {m.request_id or 0: m for m in await exchange(port, payload, 5)}
        finally:
            server.close()
            await server.wait_closed()
        assert sorted(replies) == [1, 2, 4, 5, 9]
        assert value_of(replies[1]) == "hi, bob"
        assert value_of(replies[2]) == "hello bob, from v2"
        assert replies[1].properties["provider"] == "metaprotocol-sample"  # flag 4 map
        assert replies[9].type is MessageType.HEARTBEAT
        assert parse_header(replies[9].frame).status == 20
        missing = replies[4]
        assert parse_header(missing.frame).status == 70
        text, _ = read_string(missing.frame, 16, len(missing.frame))
        assert text is not None and "com.example.Missing" in text
        # dubbo 2.6.0 does not get response attachments (flag 1), and sees our attachments
        assert replies[5].frame[16] == 0x91
        assert value_of(replies[5]) == {"path": ECHO, "x-test": "yes"}

    asyncio.run(main())


def test_dubbo_ssl_python_client_against_provider() -> None:
    """A real third-party client (dubbo-ssl-python, threads and sockets of its own)."""
    pytest.importorskip("dubbo_ssl")
    script = textwrap.dedent(
        """
        import asyncio, os, sys, threading
        from metaprotocol.samples.dubbo_provider import GREETINGS, serve
        from dubbo_ssl.client import DubboClient
        ready = threading.Event()
        port = []
        def run():
            async def main():
                server = await serve("127.0.0.1", 0)
                port.append(server.sockets[0].getsockname()[1])
                ready.set()
                await asyncio.sleep(30)
            asyncio.run(main())
        threading.Thread(target=run, daemon=True).start()
        ready.wait(10)
        host = f"127.0.0.1:{port[0]}"
        for version in ("1.0.0", "2.0.0"):
            print(DubboClient(GREETINGS, "", version=version, host=host).call("sayHi", ["ann"]))
        sys.stdout.flush()
        os._exit(0)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["hi, ann", "hello ann, from v2"]
