"""Endpoint discovery outside the core: DNS re-resolution (``discovery: dns``) and Redis
Cluster slot maps (``redis_cluster``).

Resolution blocks, so adapters run it off their event loop and hand each changed endpoint
set to the core as an event; see ``metaprotocol.discovery.dns`` and
``metaprotocol.discovery.redis_cluster``.
"""
