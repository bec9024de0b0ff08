"""The demo's proxy config: YAML text with the sample upstreams' ports filled in.

It is the same language as ``metaprotocol run CONFIG`` reads (docs/configuration.md), parsed
with ``metaprotocol.configfile.parse_config``; every listener binds port 0 (a free port).
"""

from __future__ import annotations

from typing import Any

import yaml

from metaprotocol.configfile import parse_config
from metaprotocol.core.config import Config
from metaprotocol.demo.upstreams import HOST, Upstreams
from metaprotocol.samples.dubbo_provider import ECHO, GREETINGS

__all__ = ["RATE_LIMIT_BURST", "config_text", "demo_config"]

RATE_LIMIT_BURST = 5  # tokens in the /limited bucket; it does not refill during the demo

_LISTENERS = """
listeners:
  - name: dubbo
    address: {host}:0
    codec: dubbo
    routes:
      - name: greetings-v2            # version 2.x of GreetingsService: the v2 provider
        match:
          metadata:
            interface: {{exact: {greetings}}}
            version: {{prefix: "2."}}
        route: {{cluster: dubbo-v2}}
      - name: greetings-v1            # every other version of it: the v1 provider
        match: {{metadata: {{interface: {{exact: {greetings}}}}}}}
        route: {{cluster: dubbo-v1}}
      - name: echo
        match: {{metadata: {{interface: {{exact: {echo}}}}}}}
        route: {{cluster: dubbo-v1}}
      # no default route: any other interface gets status 60 SERVICE_NOT_FOUND from the proxy
  - name: http
    address: {host}:0
    codec: http1
    filters:
      - local_ratelimit:              # only /limited is limited: {burst} requests, then 429
          conditions:
            - match: {{metadata: {{":path": {{prefix: /limited}}}}}}
              token_bucket: {{max_tokens: {burst}, tokens_per_fill: {burst}, fill_interval: 1h}}
      - router: {{}}
    routes:
      - name: limited
        match: {{metadata: {{":path": {{prefix: /limited}}}}}}
        route: {{cluster: web}}
      - name: api-split
        match: {{metadata: {{":path": {{prefix: /api/}}}}}}
        route:
          weighted_clusters: [{{cluster: web, weight: 80}}, {{cluster: web-canary, weight: 20}}]
      # no default route: any other path gets 404 from the proxy
"""

_THRIFT_LISTENER = """
  - name: thrift
    address: {host}:0
    codec: thrift
    codec_options: {{transport: framed, protocol: binary}}
    routes:
      - name: whoami
        match: {{metadata: {{method: {{exact: whoami}}}}}}
        route: {{cluster: thrift-b}}
      - name: default
        route: {{cluster: thrift-a}}
"""

_REDIS_LISTENER = """
  - name: redis
    address: {host}:0
    codec: redis
    routes:
      - name: sessions
        match: {{metadata: {{key: {{prefix: "session:"}}}}}}
        route: {{cluster: redis-sessions}}
      - name: default
        route: {{cluster: redis-main}}
"""

_CLUSTERS = """
clusters:
  - {{name: dubbo-v1, endpoints: ["{dubbo_v1}"]}}
  - {{name: dubbo-v2, endpoints: ["{dubbo_v2}"]}}
  - {{name: web, endpoints: ["{web}"]}}
  - {{name: web-canary, endpoints: ["{web_canary}"]}}
"""

_THRIFT_CLUSTERS = """
  - {{name: thrift-a, endpoints: ["{thrift_a}"]}}
  - {{name: thrift-b, endpoints: ["{thrift_b}"]}}
"""

_REDIS_CLUSTERS = """
  - {{name: redis-main, endpoints: ["{redis_main}"]}}
  - {{name: redis-sessions, endpoints: ["{redis_sessions}"]}}
"""


def _hostport(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


def config_text(upstreams: Upstreams) -> str:
    """The demo's config as YAML, pointing at the running sample upstreams."""
    values: dict[str, Any] = {
        "host": HOST,
        "greetings": GREETINGS,
        "echo": ECHO,
        "burst": RATE_LIMIT_BURST,
        "dubbo_v1": _hostport(upstreams.dubbo_address("v1")),
        "dubbo_v2": _hostport(upstreams.dubbo_address("v2")),
        "web": _hostport(upstreams.http["web"].address),
        "web_canary": _hostport(upstreams.http["web-canary"].address),
    }
    # Thrift and Redis only when their sample servers run (see Upstreams.*_skipped).
    parts = [_LISTENERS]
    if upstreams.thrift:
        parts.append(_THRIFT_LISTENER)
        values["thrift_a"] = _hostport(upstreams.thrift["thrift-a"].address)
        values["thrift_b"] = _hostport(upstreams.thrift["thrift-b"].address)
    if upstreams.redis:
        parts.append(_REDIS_LISTENER)
        values["redis_main"] = _hostport(upstreams.redis["main"].address)
        values["redis_sessions"] = _hostport(upstreams.redis["sessions"].address)
    parts.append(_CLUSTERS)
    if upstreams.thrift:
        parts.append(_THRIFT_CLUSTERS)
    if upstreams.redis:
        parts.append(_REDIS_CLUSTERS)
    return "".join(parts).format(**values)


def demo_config(upstreams: Upstreams) -> Config:
    """Parse and validate ``config_text`` (a ConfigError here is a bug in the demo)."""
    data = yaml.safe_load(config_text(upstreams))
    return parse_config(data, "<demo config>")
