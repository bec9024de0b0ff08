"""Load a YAML or JSON config file and validate it into the core's frozen dataclasses.

``load_config(path)`` reads a file; ``parse_config(data)`` takes already parsed data.
Before a file is parsed, its shape is checked (``limits``): nesting deeper than 64 levels
and YAML aliases expanding past 100,000 values are refused with an error naming where.
Validation never stops at the first problem: every error is collected with the path of
the offending value (``clusters[0].endpoints[1]: expected host:port, got 'localhost'``)
and raised together as one ``ConfigError``. docs/configuration.md lists every key; the
defaults live in ``metaprotocol.core.config``.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import yaml

from metaprotocol.configfile.limits import check_json_shape, check_yaml_shape
from metaprotocol.configfile.routing import FILTER_NAMES, RETRY_ON
from metaprotocol.configfile.schema import LB_POLICIES, Checker
from metaprotocol.configfile.values import (
    ConfigError,
    parse_address,
    parse_duration,
    parse_size,
)
from metaprotocol.core.codec import CodecFactory
from metaprotocol.core.config import Config

__all__ = [
    "FILTER_NAMES",
    "LB_POLICIES",
    "RETRY_ON",
    "ConfigError",
    "load_config",
    "parse_address",
    "parse_config",
    "parse_duration",
    "parse_size",
]


# The parsers and the checker recurse once per level of nesting; a config is never this deep.
_TOO_DEEP = "nested too deeply"


def parse_config(
    data: Mapping[str, Any],
    source: str = "<string>",
    *,
    codecs: Mapping[str, CodecFactory] | None = None,
) -> Config:
    """Validate parsed YAML/JSON data into a ``Config``; raise ``ConfigError`` with every error.

    A listener's codec is looked up in ``codecs`` (name -> codec class, for programs that
    bring their own) first, then with ``metaprotocol.codecs.registry.get_codec``: the
    built-ins, the ``metaprotocol.codecs`` entry points, or a ``package.module:Class``
    reference. ``source`` names the input in errors about the whole document. The input is
    kept, deep-copied, in ``Config.raw``.
    """
    checker = Checker(source, codecs)
    try:
        config = checker.config(data)
    except RecursionError:  # JSON or a YAML flow nested hundreds of levels deep
        raise ConfigError([f"{source}: {_TOO_DEEP}"], source) from None
    if checker.errors:
        raise ConfigError(checker.errors, source)
    return config


def load_config(path: str | Path, *, codecs: Mapping[str, CodecFactory] | None = None) -> Config:
    """Read, parse and validate a config file (``*.json`` as JSON, anything else as YAML)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([f"{source}: cannot read config: {reason}"], source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{source}: cannot read config: {exc}"], source) from None
    data: Any
    if source.endswith(".json"):
        check_json_shape(text, source)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            where = f"{source}:{exc.lineno}:{exc.colno}"
            raise ConfigError([f"{where}: invalid JSON: {exc.msg}"], source) from None
        except RecursionError:
            raise ConfigError([f"{source}: invalid JSON: {_TOO_DEEP}"], source) from None
    else:
        check_yaml_shape(text, source, _StrictLoader)
        try:
            data = yaml.load(text, Loader=_StrictLoader)
        except yaml.YAMLError as exc:
            raise ConfigError([_yaml_error(source, exc)], source) from None
        except RecursionError:
            raise ConfigError([f"{source}: invalid YAML: {_TOO_DEEP}"], source) from None
    return parse_config(data, source, codecs=codecs)


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys instead of silently keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            # A `<<` merge may repeat keys on purpose; only literal keys must be unique.
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key_node.value!r}",
                        key_node.start_mark,
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


def _yaml_error(source: str, exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        problem = exc.problem or "syntax error"
        return f"{source}:{mark.line + 1}:{mark.column + 1}: invalid YAML: {problem}"
    return f"{source}: invalid YAML: {exc}"
