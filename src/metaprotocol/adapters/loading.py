"""A config loaded (a path, or a ``Config`` as is) and the core built from it: the first
step of every adapter's ``serve`` (``Serving.start``)."""

from __future__ import annotations

import os
import random

from metaprotocol.adapters.dispatcher import Core
from metaprotocol.core.config import Config, RateLimitRedisConfig

__all__ = ["build_core", "global_ratelimit_redis", "resolve_config"]


def resolve_config(config: Config | str | os.PathLike[str]) -> Config:
    """A ``Config`` as is, or one loaded from a YAML/JSON file path."""
    if isinstance(config, Config):
        return config
    from metaprotocol.configfile import load_config

    loaded: Config = load_config(os.fspath(config))
    return loaded


def build_core(config: Config, now: float) -> Core:
    from metaprotocol.core.proxy import Proxy

    # The core takes randomness as an argument (weighted clusters, mirror fractions, faults).
    # Observer events cost about a fifth of the per-request CPU: only the access log and
    # tracing need them here (an embedding program that watches events passes its own Proxy).
    observe = config.access_log is not None or config.tracing is not None
    proxy: Core = Proxy(config, now=now, random=random.Random().random, observe=observe)
    return proxy


def global_ratelimit_redis(config: Config | None) -> RateLimitRedisConfig | None:
    """Where the global rate limiter's Redis lives and how to log in (``global_ratelimit_redis``),
    if set."""
    return None if config is None else config.global_ratelimit_redis
