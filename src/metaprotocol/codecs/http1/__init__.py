"""HTTP/1.1 codec: whole requests and responses framed by a fast parser checked against h11.

``Http1Codec`` (codec.py) is what the proxy uses. ``fastparse`` is the default
framing route; ``reference`` is the h11-based route (codec option
``parser: h11``) and the oracle for the differential tests.
"""

from __future__ import annotations

from metaprotocol.codecs.http1.codec import ERROR_STATUS, Http1Codec

__all__ = ["ERROR_STATUS", "Http1Codec"]
