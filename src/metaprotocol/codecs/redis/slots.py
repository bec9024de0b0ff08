"""Redis Cluster's key hashing: hash tags, CRC16 and the key slot.

The Redis Cluster specification (https://redis.io/docs/latest/operate/oss_and_stack/reference/
cluster-spec/, "Key distribution model" and "Hash tags"; redis src/cluster.c ``keyHashSlot``)
defines ``HASH_SLOT = CRC16(key) mod 16384`` with CRC16 the XMODEM variant (polynomial 0x1021,
initial value 0, no reflection, no final XOR; ``CRC16("123456789") == 0x31C3``), and a hash
tag: when a key holds ``{`` and a ``}`` after it with at least one byte between, only the bytes
between the first ``{`` and the first ``}`` after it are hashed, so ``{user:1}:a`` and
``{user:1}:b`` share a slot. ``{}`` (an empty tag) hashes the whole key.

Keys reach the proxy as ``str`` (the ``key`` property: bytes decoded as UTF-8 with
``surrogateescape``); ``{`` and ``}`` are ASCII, so the tag found in the ``str`` is the tag
of the original bytes, and :func:`key_slot` encodes back to exactly those bytes.
"""

from __future__ import annotations

from typing import Final

__all__ = ["SLOT_COUNT", "crc16", "hash_tag", "hash_tag_bytes", "key_slot", "key_slot_bytes"]

SLOT_COUNT: Final = 16384
"""Slots of a Redis Cluster, numbered 0..16383."""


def _table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC16_TABLE: Final = _table()


def crc16(data: bytes) -> int:
    """CRC16/XMODEM of ``data``, as redis src/crc16.c computes it."""
    crc = 0
    table = _CRC16_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFF00) ^ table[((crc >> 8) ^ byte) & 0xFF]
    return crc


def hash_tag(key: str) -> str:
    """The part of ``key`` Redis Cluster hashes: the inside of its first non-empty ``{...}``
    tag, else the whole key."""
    start = key.find("{")
    if start < 0:
        return key
    end = key.find("}", start + 1)
    if end <= start + 1:  # no closing brace, or "{}"
        return key
    return key[start + 1 : end]


def hash_tag_bytes(key: bytes) -> bytes:
    """:func:`hash_tag` on raw key bytes."""
    start = key.find(b"{")
    if start < 0:
        return key
    end = key.find(b"}", start + 1)
    if end <= start + 1:
        return key
    return key[start + 1 : end]


def key_slot_bytes(key: bytes) -> int:
    """The cluster slot of raw key bytes (``CLUSTER KEYSLOT``)."""
    return crc16(hash_tag_bytes(key)) & (SLOT_COUNT - 1)


def key_slot(key: str) -> int:
    """The cluster slot of a ``key`` property (see the module docstring for the encoding)."""
    return key_slot_bytes(hash_tag(key).encode("utf-8", "surrogateescape"))
