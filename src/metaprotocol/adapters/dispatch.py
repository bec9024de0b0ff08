"""Compatibility names: what this module held before the adapters' shared parts were split
into small modules (docs/architecture.md, "Adapters"). New code imports from those:
``dispatcher`` (``Dispatcher``, ``OutBuffer``, sizes), ``serving`` (setup from a config,
reload, drain), ``binding`` (listening sockets), ``observers``, ``external``, ``jobs``,
``admin_core``."""

from __future__ import annotations

from metaprotocol.adapters.binding import (
    ListenerChanges,
    bind_listener_changes,
    bind_socket,
    bound_address,
)
from metaprotocol.adapters.dispatcher import (
    CLOSE_LINGER,
    HIGH_WATERMARK,
    LOW_WATERMARK,
    READ_CHUNK,
    Core,
    Dispatcher,
    OutBuffer,
)
from metaprotocol.adapters.observers import log_event
from metaprotocol.adapters.serving import (
    ServerInfo,
    build_core,
    global_ratelimit_redis,
    resolve_config,
)

__all__ = [
    "CLOSE_LINGER",
    "HIGH_WATERMARK",
    "LOW_WATERMARK",
    "READ_CHUNK",
    "Core",
    "Dispatcher",
    "ListenerChanges",
    "OutBuffer",
    "ServerInfo",
    "bind_listener_changes",
    "bind_socket",
    "bound_address",
    "build_core",
    "global_ratelimit_redis",
    "log_event",
    "resolve_config",
]
