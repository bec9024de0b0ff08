"""Feeding bytes to a codec the way the core does: one growing buffer, decode until NEED_DATA."""

from __future__ import annotations

from metaprotocol.core.codec import Codec
from metaprotocol.core.message import NEED_DATA, Message

__all__ = ["decode_all", "feed"]


def decode_all(codec: Codec, buffer: bytearray) -> list[Message]:
    messages: list[Message] = []
    while True:
        result = codec.decode(buffer)
        if result is NEED_DATA:
            return messages
        assert isinstance(result, Message)
        messages.append(result)


def feed(codec: Codec, chunks: list[bytes]) -> list[Message]:
    """Feed chunks into one growing buffer, decoding after each; nothing may be left over."""
    buffer = bytearray()
    messages: list[Message] = []
    for chunk in chunks:
        buffer += chunk
        messages += decode_all(codec, buffer)
    assert buffer == b""
    return messages
