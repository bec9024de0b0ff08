"""tRPC over TCP: unary, oneway and streaming calls (docs/trpc.md)."""

from __future__ import annotations

from metaprotocol.codecs.trpc.codec import TrpcCodec
from metaprotocol.codecs.trpc.frame import build_close, build_frame, build_request, build_response

__all__ = ["TrpcCodec", "build_close", "build_frame", "build_request", "build_response"]
