"""Third-party filters: built from the config by their factory, run before the router."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from metaprotocol.configfile import ConfigError, parse_config
from metaprotocol.configfile import routing as config_routing
from metaprotocol.core.config import PluginFilterConfig
from metaprotocol.core.events import Accepted, Closed, DataReceived
from metaprotocol.core.filters import CONTINUE, Abort, Filter, FilterResult
from metaprotocol.core.message import ErrorType
from metaprotocol.core.outputs import OpenUpstream, Write
from metaprotocol.core.stats import Labels, Stats

from .helpers import UP, config, error_reply, playbook, req


class RequireKey(Filter):
    """Rejects requests without the configured metadata key."""

    name = "require_key"

    def __init__(self, settings: Mapping[str, Any], stats: Stats, labels: Labels) -> None:
        self.key = str(settings["key"])
        self.stats = stats
        self.labels = labels

    @staticmethod
    def validate(settings: Mapping[str, Any]) -> list[str]:
        return [] if isinstance(settings.get("key"), str) else ["key: expected a string"]

    def on_request(self, properties: Mapping[str, str], now: float) -> FilterResult:
        if self.key in properties:
            return CONTINUE
        self.stats.inc("require_key_rejected", self.labels)
        return Abort(ErrorType.BAD_REQUEST, f"missing {self.key}")


def test_a_plugin_filter_runs_before_the_router() -> None:
    plugin = PluginFilterConfig("require_key", RequireKey, {"key": "tenant"})
    pb = playbook(config(filters=(plugin,)))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(1))
    pb << Write(1, error_reply(1, "bad_request", "missing tenant", 10))
    pb >> DataReceived(1, req(2, tenant="acme"))
    pb << OpenUpstream(-1, *UP)
    assert pb.proxy.stats.counter("require_key_rejected", (("listener", "main"),)) == 1
    pb >> Closed(1)
    pb >> Closed(-1)
    pb.assert_clean()


def _yaml(settings: object) -> dict[str, Any]:
    return {
        "listeners": [
            {
                "name": "l",
                "address": "127.0.0.1:0",
                "codec": "lengthprefixed",
                "filters": [{"require_key": settings}, "router"],
                "routes": [],
            }
        ],
        "clusters": [],
    }


def test_config_finds_plugins_by_entry_point_name(monkeypatch: pytest.MonkeyPatch) -> None:
    def lookup(name: str) -> Any:
        return RequireKey if name == "require_key" else None

    monkeypatch.setattr(config_routing, "find_filter_factory", lookup)
    monkeypatch.setattr(config_routing, "filter_plugin_names", lambda: ["require_key"])
    cfg = parse_config(_yaml({"key": "tenant"}))
    (plugin,) = cfg.listeners[0].filters
    assert plugin == PluginFilterConfig("require_key", RequireKey, {"key": "tenant"})
    with pytest.raises(ConfigError) as info:
        parse_config(_yaml({"key": 7}))
    assert str(info.value) == "listeners[0].filters[0].require_key: key: expected a string"


def test_unknown_filter_names_are_still_errors() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_yaml({"key": "tenant"}))
    assert "listeners[0].filters[0]: unknown filter 'require_key'" in str(info.value)
