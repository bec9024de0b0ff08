"""Dubbo (dubbo://, Hessian2) codec: 16-byte header, bounded Hessian2 reader, DubboCodec.

Serialization ids other than Hessian2 (2) are routed on the header only; see
:mod:`metaprotocol.codecs.dubbo.codec` for the full rules.
"""

from __future__ import annotations

from metaprotocol.codecs.dubbo.codec import ERROR_STATUS, DubboCodec

__all__ = ["ERROR_STATUS", "DubboCodec"]
