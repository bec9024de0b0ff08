"""The worked example of docs/writing-a-codec.md: a tRPC unary codec in at most 80 lines on
top of the protobuf helper passes the conformance kit against trpc-go's frames."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from metaprotocol.core.codec import Side
from metaprotocol.core.message import Message, MessageType
from metaprotocol.testing.conformance import check_codec
from tests.codecs.vectors import load_vectors

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "trpc_unary_codec.py"


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("trpc_unary_codec", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TrpcUnaryCodec


def _unary(direction: str) -> list[bytes]:
    return [
        bytes.fromhex(v["hex"])
        for v in load_vectors("trpc")
        if v["header"]["data_frame_type"] == 0 and v["direction"] == direction
    ]


def test_the_example_fits_in_80_lines() -> None:
    assert len(EXAMPLE.read_text().splitlines()) <= 80


def test_the_example_passes_the_conformance_kit() -> None:
    codec = _example()
    requests, responses = _unary("request"), _unary("response")
    assert len(requests) == 3 and len(responses) == 2
    check_codec(codec, requests=requests, responses=responses)
    buffer = bytearray(requests[0])
    message = codec(Side.DOWNSTREAM, {}, 1 << 20).decode(buffer)
    assert isinstance(message, Message) and message.type is MessageType.REQUEST
    assert message.properties == {
        "caller": "trpc.app.client.service",
        "callee": "trpc.test.helloworld.Greeter",
        "func": "/trpc.test.helloworld.Greeter/SayHello",
        "app-key": "app-value",
    }
