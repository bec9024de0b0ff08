"""The xDS tests use the e2e tests' Redis servers."""

from __future__ import annotations

from tests.e2e.conftest import redis_port, redis_port_b

__all__ = ["redis_port", "redis_port_b"]
