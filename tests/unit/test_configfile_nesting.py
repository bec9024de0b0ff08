"""Config files and data nested too deeply are a ConfigError, never a RecursionError."""

from __future__ import annotations

from pathlib import Path

import pytest

from metaprotocol.configfile import ConfigError, load_config, parse_config

DEPTH = 5000


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("deep.json", "[" * DEPTH + "]" * DEPTH),
        ("deep.yaml", "listeners: " + "[" * DEPTH + "]" * DEPTH),
        # Parses (below the parser's own limit), then too deep for the checker.
        ("nested.json", '{"x": ' + "[" * 600 + "]" * 600 + "}"),
    ],
)
def test_a_deeply_nested_file_is_a_config_error(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(path)


def test_deeply_nested_data_is_a_config_error() -> None:
    value: list[object] = []
    for _ in range(DEPTH):
        value = [value]
    with pytest.raises(ConfigError):
        parse_config({"listeners": [], "x": value})
