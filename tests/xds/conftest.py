"""The xDS tests use the e2e tests' Redis servers. Their modules skip without grpc and
xds-protos (``pytest.importorskip``), except in CI, where a missing one fails them."""

from __future__ import annotations

from tests.e2e.conftest import redis_port, redis_port_b
from tests.peers import require_module

__all__ = ["redis_port", "redis_port_b"]

for _name in ("grpc", "envoy.service.discovery.v3.ads_pb2_grpc"):
    require_module(_name)
