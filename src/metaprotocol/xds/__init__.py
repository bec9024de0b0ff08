"""Configuration from an xDS control plane (the optional ``[xds]`` extra: grpcio, xds-protos).

``translate`` turns CDS, EDS and generic-proxy RDS resources into the core's ``Config``
(pure); docs/xds.md describes what is read.
"""

from __future__ import annotations

__all__: list[str] = []
