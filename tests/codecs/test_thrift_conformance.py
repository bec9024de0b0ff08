"""The shared codec conformance kit, run over ThriftCodec with the Thrift wire vectors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from metaprotocol.codecs.thrift import ThriftCodec
from metaprotocol.testing.conformance import check_codec
from tests.codecs.vectors import VECTORS_PATH

VECTORS = VECTORS_PATH  # the repository's copy of the shared wire vectors


def frames(transport: str, protocol: str, direction: str) -> list[bytes]:
    """Vectors of one transport and protocol (one connection never mixes them)."""
    entries: list[dict[str, Any]] = json.loads(VECTORS.read_text())
    out = []
    for entry in entries:
        if entry["protocol"] != "thrift" or entry["direction"] != direction:
            continue
        wire_transport = entry["variant"].split("/")[1]
        if wire_transport.startswith(transport) and protocol in entry["variant"]:
            out.append(bytes.fromhex(entry["hex"]))
    return out


@pytest.mark.parametrize(
    ("transport", "protocol", "options"),
    [
        ("framed", "binary", {}),
        ("framed", "binary", {"transport": "framed", "protocol": "binary"}),
        ("framed", "compact", {}),
        ("unframed", "binary", {}),
        ("unframed", "binary", {"transport": "unframed"}),
        ("unframed", "compact", {"protocol": "compact"}),
        ("header", "binary", {}),
        ("header", "binary", {"transport": "header"}),
    ],
)
def test_conformance(transport: str, protocol: str, options: dict[str, str]) -> None:
    requests = frames(transport, protocol, "request")
    responses = frames(transport, protocol, "response")
    assert requests and responses
    check_codec(ThriftCodec, requests=requests, responses=responses, options=options)


def test_conformance_mixed_auto() -> None:
    """Auto detection on the upstream side copes with every transport on one connection."""
    responses = [
        frame
        for transport in ("framed", "unframed", "header")
        for protocol in ("binary", "compact")
        for frame in frames(transport, protocol, "response")
    ]
    check_codec(ThriftCodec, responses=responses)
