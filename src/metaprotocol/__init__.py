"""metaprotocol: a sans-IO L7 proxy framework for request/response protocols."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
