"""docs/writing-a-codec.md runs as written: its Python blocks in order in one session (with
``examples/`` on the module path, in a directory holding the page's YAML files), calling
every ``test_*`` function a block defines; its YAML configs load. A block preceded by
``<!-- fragment -->`` is a listing and is only compiled."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from metaprotocol.codecs.registry import is_reference
from metaprotocol.configfile import load_config

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "writing-a-codec.md"
EXAMPLES = ROOT / "examples"
_BLOCK_RE = re.compile(
    r"^(?P<fragment><!-- fragment -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)^```$", re.S | re.M
)
_FILE_RE = re.compile(r"# (?P<name>[\w.-]+\.yaml)\n")


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int
    fragment: bool

    @property
    def where(self) -> str:
        return f"{DOC.relative_to(ROOT)}:{self.line}"


def blocks(text: str) -> list[Block]:
    return [
        Block(m["lang"], m["code"], text.count("\n", 0, m.start("code")) + 1, bool(m["fragment"]))
        for m in _BLOCK_RE.finditer(text)
    ]


BLOCKS = blocks(DOC.read_text(encoding="utf-8"))


def _yaml_files() -> dict[str, str]:
    files: dict[str, str] = {}
    for block in BLOCKS:
        m = _FILE_RE.match(block.code) if block.lang == "yaml" else None
        if m is not None:
            files[m["name"]] = block.code
    return files


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    for name, text in _yaml_files().items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def test_the_page_has_what_this_test_runs() -> None:
    langs = [(b.lang, b.fragment) for b in BLOCKS]
    assert langs.count(("python", False)) >= 3
    assert langs.count(("python", True)) == 2
    assert set(_yaml_files()) == {"proxy.yaml", "embedded.yaml"}


def test_the_python_blocks_run(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    session: dict[str, Any] = {"__name__": "writing_a_codec"}
    ran = 0
    for block in BLOCKS:
        if block.lang != "python":
            continue
        code = compile(block.code, block.where, "exec")
        if block.fragment:
            continue
        before = set(session)
        exec(code, session)
        for name in sorted(set(session) - before):
            if name.startswith("test_") and callable(session[name]):
                session[name]()
                ran += 1
    assert ran == 1  # the conformance test of section 2
    out = capsys.readouterr().out
    assert "msgs/s" in out  # section 3 printed its measurements
    assert "'trpc':" in out and "'cache':" in out  # section 4 served both listeners


def test_the_yaml_configs_load(workdir: Path) -> None:
    from trpc_unary_codec import TrpcUnaryCodec  # type: ignore[import-not-found]

    for name in _yaml_files():
        config = load_config(workdir / name, codecs={"my-trpc": TrpcUnaryCodec})
        assert config.listeners, name
    referenced = load_config(workdir / "proxy.yaml").listeners[0].codec
    assert is_reference(referenced)


def test_the_entry_point_is_a_reference() -> None:
    (toml,) = [b for b in BLOCKS if b.lang == "toml"]
    group = tomllib.loads(toml.code)["project"]["entry-points"]["metaprotocol.codecs"]
    assert all(is_reference(target) for target in group.values())
