"""Config loader harnesses: YAML and JSON text in, a ``Config`` or a ``ConfigError`` out.

The input is the file's bytes (not necessarily UTF-8), read through ``load_config`` like a
real config file; anything but ``ConfigError`` escaping is a finding.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

import yaml

from metaprotocol.configfile import ConfigError, load_config

__all__ = ["json_seeds", "json_text", "yaml_seeds", "yaml_text"]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
_files: dict[str, Path] = {}


def _load(data: bytes, suffix: str) -> None:
    path = _files.get(suffix)
    if path is None:
        directory = Path(tempfile.mkdtemp(prefix="metaprotocol-fuzz-config-"))
        path = _files[suffix] = directory / f"config{suffix}"
    path.write_bytes(data)
    with contextlib.suppress(ConfigError):
        load_config(path)


def yaml_text(data: bytes) -> None:
    _load(data, ".yaml")


def json_text(data: bytes) -> None:
    _load(data, ".json")


_SMALL = b"""listeners:
  - name: l
    address: 127.0.0.1:0
    codec: redis
    routes: [{name: r, route: {cluster: c}}]
clusters:
  - {name: c, endpoints: ["127.0.0.1:6379"]}
"""


def _examples() -> list[bytes]:
    return [_SMALL, *(p.read_bytes() for p in sorted(EXAMPLES.glob("*.yaml")))]


def yaml_seeds() -> list[bytes]:
    return [*_examples(), b"a: &x [1, 2]\nb: *x\n", b"{listeners: []}\n"]


def json_seeds() -> list[bytes]:
    out = []
    for text in _examples():
        data: Any = yaml.safe_load(text)
        out.append(json.dumps(data, indent=1).encode())
    return out
