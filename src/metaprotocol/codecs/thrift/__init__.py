"""Thrift codec package: framed, unframed and THeader transports; binary and compact protocols."""

from __future__ import annotations

from .codec import ThriftCodec, ThriftFrameInfo
from .transport import Transport, WireProtocol

__all__ = ["ThriftCodec", "ThriftFrameInfo", "Transport", "WireProtocol"]
