"""The config loader's limits: YAML aliases ("billion laughs"), nesting depth, codec options.

Each is refused with an error naming the place (``FILE:LINE:COLUMN: PATH: ...``), and
``metaprotocol check`` exits 1 without a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metaprotocol.cli import main
from metaprotocol.configfile import ConfigError, load_config
from metaprotocol.configfile.limits import MAX_ALIAS_NODES, MAX_NESTING

LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [
        f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]"
        for prev, name in zip("abcdefgh", "bcdefghi", strict=True)
    ]
)

GOOD = """\
listeners:
  - name: redis
    address: 127.0.0.1:6380
    codec: redis
    routes:
      - name: default
        route: {cluster: main}
clusters:
  - {name: main, endpoints: ["127.0.0.1:6379"]}
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_billion_laughs_is_refused_with_its_place(tmp_path: Path) -> None:
    assert len(LAUGHS) < 500  # ~10**9 values once expanded
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, "laughs.yaml", LAUGHS))
    (error,) = info.value.errors
    assert "YAML aliases expand to more than 100000 values" in error
    # FILE:LINE:COLUMN: PATH: the alias that passed the limit, and where it sits.
    assert error.startswith(f"{tmp_path / 'laughs.yaml'}:6:8: f[0]: ")


def test_aliases_within_the_limit_are_fine(tmp_path: Path) -> None:
    """Sharing a block with an anchor is what aliases are for."""
    text = GOOD.replace(
        "    routes:",
        "    filters:\n"
        "      - local_ratelimit:\n"
        "          token_bucket: &bucket {max_tokens: 10, tokens_per_fill: 10, "
        "fill_interval: 1s}\n"
        "          conditions:\n"
        "            - match: {metadata: {command: {exact: GET}}}\n"
        "              token_bucket: *bucket\n"
        "      - router: {}\n"
        "    routes:",
    )
    config = load_config(_write(tmp_path, "shared.yaml", text))
    assert config.listeners[0].name == "redis"


def test_alias_expansion_limit_counts_values(tmp_path: Path) -> None:
    # One anchored list of 999 values plus itself, used n times: n * 1000 added values.
    items = ", ".join(["1"] * 999)
    under = MAX_ALIAS_NODES // 1000

    def doc(uses: int) -> str:
        return f"x: &x [{items}]\ny: [{', '.join(['*x'] * uses)}]\n"

    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, "over.yaml", doc(under + 1)))
    assert "YAML aliases expand" in info.value.errors[0]
    # Under the limit the shape check passes (the schema then has its own complaints).
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, "under.yaml", doc(under)))
    assert "YAML aliases" not in str(info.value)


def _nested_yaml(depth: int) -> str:
    return "x: " + "[" * depth + "]" * depth + "\n"


def test_yaml_nested_600_levels_is_refused_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, "deep.yaml", _nested_yaml(600)))
    (error,) = info.value.errors
    assert f"nested too deeply (more than {MAX_NESTING} levels)" in error
    assert f": x{'[0]' * (MAX_NESTING - 1)}: " in error


def test_yaml_nesting_up_to_the_limit_passes_the_shape_check(tmp_path: Path) -> None:
    # The mapping "x:" is one level, so the list may nest MAX_NESTING - 1 deep.
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, "ok.yaml", _nested_yaml(MAX_NESTING - 1)))
    assert "nested too deeply" not in str(info.value)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(_write(tmp_path, "over.yaml", _nested_yaml(MAX_NESTING)))


def test_json_nested_600_levels_is_refused_with_its_path(tmp_path: Path) -> None:
    text = '{"listeners": [' + '{"a": ' * 600 + "1" + "}" * 600 + "]}"
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, "deep.json", text))
    (error,) = info.value.errors
    assert f"nested too deeply (more than {MAX_NESTING} levels)" in error
    assert f": listeners[0]{'.a' * (MAX_NESTING - 2)}: " in error


def test_json_strings_holding_brackets_do_not_count(tmp_path: Path) -> None:
    data = json.loads(json.dumps({"listeners": [], "note": "[" * 200 + '\\"{' * 100}))
    path = _write(tmp_path, "strings.json", json.dumps(data))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "nested too deeply" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "text"),
    [("laughs.yaml", LAUGHS), ("deep.yaml", _nested_yaml(600)),
     ("deep.json", "[" * 600 + "]" * 600)],
)  # fmt: skip
def test_check_exits_1_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str
) -> None:
    assert main(["check", str(_write(tmp_path, name, text))]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "RecursionError" not in err
    assert err.startswith(str(tmp_path / name) + ":1:") or "laughs" in name


@pytest.mark.parametrize(
    ("options", "key"),
    [("{max_header_count: 0}", "max_header_count"), ("{max_header_size: lots}", "max_header_size")],
)
def test_http_header_limit_options_are_validated_with_their_path(
    tmp_path: Path, options: str, key: str
) -> None:
    text = GOOD.replace("codec: redis", f"codec: http1\n    codec_options: {options}")
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, "http.yaml", text))
    assert info.value.errors[0].startswith(f"listeners[0].codec_options.{key}: expected a")


def test_http_header_limit_options_load(tmp_path: Path) -> None:
    text = GOOD.replace("codec: redis", "codec: http1\n    codec_options: "
                        "{max_header_count: 50, max_header_size: 16KiB}")  # fmt: skip
    config = load_config(_write(tmp_path, "ok.yaml", text))
    assert config.listeners[0].codec_options == {"max_header_count": 50, "max_header_size": "16KiB"}
