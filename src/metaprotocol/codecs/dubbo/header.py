"""The 16-byte Dubbo frame header: layout, flags, status codes, parse and build.

Layout (Dubbo "dubbo" protocol, ExchangeCodec):

    0-1   magic 0xdabb
    2     flag: 0x80 request, 0x40 two-way, 0x20 event, low 5 bits serialization id
    3     status (responses): 20 OK, 30/31 timeouts, 40 bad request, 50 bad response,
          60 service not found, 70 service error, 80 server error, 90 client error,
          100 server threadpool exhausted
    4-11  request id, big-endian 64-bit
    12-15 body length, big-endian signed 32-bit
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

__all__ = [
    "FLAG_EVENT",
    "FLAG_REQUEST",
    "FLAG_TWO_WAY",
    "HEADER",
    "HEADER_SIZE",
    "MAGIC",
    "SERIALIZATION_HESSIAN2",
    "SERIALIZATION_MASK",
    "STATUS_BAD_REQUEST",
    "STATUS_BAD_RESPONSE",
    "STATUS_CLIENT_TIMEOUT",
    "STATUS_OK",
    "STATUS_SERVER_ERROR",
    "STATUS_SERVER_THREADPOOL_EXHAUSTED",
    "STATUS_SERVER_TIMEOUT",
    "STATUS_SERVICE_ERROR",
    "STATUS_SERVICE_NOT_FOUND",
    "DubboHeader",
    "build_header",
    "parse_header",
]

MAGIC: Final = 0xDABB
HEADER_SIZE: Final = 16
HEADER: Final = struct.Struct(">HBBQi")  # magic, flag, status, request id, body length

FLAG_REQUEST: Final = 0x80
FLAG_TWO_WAY: Final = 0x40
FLAG_EVENT: Final = 0x20
SERIALIZATION_MASK: Final = 0x1F
SERIALIZATION_HESSIAN2: Final = 2

STATUS_OK: Final = 20
STATUS_CLIENT_TIMEOUT: Final = 30
STATUS_SERVER_TIMEOUT: Final = 31
STATUS_BAD_REQUEST: Final = 40
STATUS_BAD_RESPONSE: Final = 50
STATUS_SERVICE_NOT_FOUND: Final = 60
STATUS_SERVICE_ERROR: Final = 70
STATUS_SERVER_ERROR: Final = 80
STATUS_SERVER_THREADPOOL_EXHAUSTED: Final = 100


class DubboHeader(NamedTuple):
    """The parsed fixed header of one frame."""

    flag: int
    status: int
    request_id: int
    body_length: int

    @property
    def is_request(self) -> bool:
        return bool(self.flag & FLAG_REQUEST)

    @property
    def two_way(self) -> bool:
        return bool(self.flag & FLAG_TWO_WAY)

    @property
    def event(self) -> bool:
        return bool(self.flag & FLAG_EVENT)

    @property
    def serialization_id(self) -> int:
        return self.flag & SERIALIZATION_MASK


def parse_header(data: bytes | bytearray) -> DubboHeader:
    """Parse the first 16 bytes of ``data``; ValueError on short input or bad magic."""
    if len(data) < HEADER_SIZE:
        raise ValueError(f"a Dubbo header is {HEADER_SIZE} bytes, got {len(data)}")
    magic, flag, status, request_id, body_length = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ValueError(f"bad Dubbo magic 0x{magic:04x}")
    return DubboHeader(flag, status, request_id, body_length)


def build_header(flag: int, status: int, request_id: int, body_length: int) -> bytes:
    """Build a 16-byte header (request ids are unsigned 64-bit on this side)."""
    if not 0 <= request_id < 2**64:
        raise ValueError(f"Dubbo request id {request_id} does not fit 64 bits")
    return struct.pack(">HBBQi", MAGIC, flag, status, request_id, body_length)
