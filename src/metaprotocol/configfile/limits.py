"""Limits on a config file's shape, checked before it is built: nesting depth and YAML aliases.

A 400-byte YAML file of nested aliases ("billion laughs") loads as a small graph of shared
objects but expands to hundreds of megabytes wherever it is walked or dumped
(``/config_dump``); a document nested a few hundred levels deep makes every recursive walk
(the YAML composer, the validator, ``json.dumps``) die of ``RecursionError``. Both are
refused here from a single streaming pass over the text (YAML events, JSON tokens), which
keeps no recursion of its own, with an error naming where: ``FILE:LINE:COLUMN: PATH: ...``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

import yaml

from metaprotocol.configfile.values import ConfigError

__all__ = ["MAX_ALIAS_NODES", "MAX_NESTING", "check_json_shape", "check_yaml_shape"]

MAX_NESTING: Final = 64
"""Mappings and lists nested deeper than this are refused (real configs nest about 8)."""

MAX_ALIAS_NODES: Final = 100_000
"""Values that YAML aliases may add to a document once expanded (each alias counts the
values of what it stands for)."""

_JSON_TOKEN: Final = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}:,]')


def _path(parts: list[str]) -> str:
    return "".join(parts).lstrip(".") or "(top level)"


def _offset(event: yaml.Event) -> int:
    mark = event.start_mark
    return 0 if mark is None else int(mark.index)


def _refuse(source: str, text: str, offset: int, parts: list[str], problem: str) -> ConfigError:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return ConfigError([f"{source}:{line}:{column}: {_path(parts)}: {problem}"], source)


class _Open:
    """One mapping or list being read: its expanded size so far and where the next value goes."""

    __slots__ = ("anchor", "index", "is_mapping", "key", "size")

    def __init__(self, is_mapping: bool, anchor: str | None) -> None:
        self.is_mapping = is_mapping
        self.anchor = anchor
        self.size = 1
        self.index = 0  # values read (a mapping reads key, value, key, value, ...)
        self.key = "?"

    def part(self) -> str:
        """The path element of the value being read."""
        if self.is_mapping:
            return f".{self.key}"
        return f"[{self.index}]"


def check_yaml_shape(text: str, source: str, loader: type[Any]) -> None:
    """Refuse YAML nested deeper than MAX_NESTING or whose aliases expand past
    MAX_ALIAS_NODES. Syntax errors are left to the loader that follows."""
    stack: list[_Open] = []
    parts: list[str] = []
    sizes: dict[str, int] = {}  # anchor -> expanded size of what it names
    added = 0  # values the aliases have added so far
    try:
        for event in yaml.parse(text, Loader=loader):
            size = 0
            if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
                if stack:
                    parts.append(stack[-1].part())
                if len(stack) >= MAX_NESTING:
                    raise _refuse(
                        source, text, _offset(event), parts,
                        f"nested too deeply (more than {MAX_NESTING} levels)",
                    )  # fmt: skip
                stack.append(_Open(isinstance(event, yaml.MappingStartEvent), event.anchor))
                continue
            if isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
                closed = stack.pop()
                if parts:
                    parts.pop()
                size = closed.size
                if closed.anchor is not None:
                    sizes[closed.anchor] = size
            elif isinstance(event, yaml.ScalarEvent):
                size = 1
                if event.anchor is not None:
                    sizes[event.anchor] = 1
            elif isinstance(event, yaml.AliasEvent):
                size = sizes.get(event.anchor or "", 1)
                added += size
                if added > MAX_ALIAS_NODES:
                    where = [*parts, stack[-1].part()] if stack else parts
                    raise _refuse(
                        source, text, _offset(event), where,
                        f"YAML aliases expand to more than {MAX_ALIAS_NODES} values "
                        f"(this *{event.anchor} alone stands for {size})",
                    )  # fmt: skip
            else:
                continue
            if stack:
                top = stack[-1]
                top.size += size
                if top.is_mapping and top.index % 2 == 0:  # a key: it names the next value
                    top.key = event.value if isinstance(event, yaml.ScalarEvent) else "?"
                top.index += 1
    except yaml.YAMLError:
        return  # the loader reports it with its position


def check_json_shape(text: str, source: str) -> None:
    """Refuse JSON nested deeper than MAX_NESTING (JSON has no aliases). Syntax errors are
    left to ``json.loads``."""
    stack: list[list[Any]] = []  # [kind, key or index]
    parts: list[str] = []
    last_string = ""
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token in ("{", "["):
            if stack:
                kind, at = stack[-1]
                parts.append(f".{at}" if kind == "{" else f"[{at}]")
            if len(stack) >= MAX_NESTING:
                raise _refuse(
                    source,
                    text,
                    match.start(),
                    parts,
                    f"nested too deeply (more than {MAX_NESTING} levels)",
                )
            stack.append([token, "?" if token == "{" else 0])
        elif token in ("}", "]"):
            if stack:
                stack.pop()
            if parts:
                parts.pop()
        elif token == ",":
            if stack:
                if stack[-1][0] == "[":
                    stack[-1][1] += 1
                else:
                    stack[-1][1] = "?"
        elif token == ":":
            if stack and stack[-1][0] == "{":
                stack[-1][1] = last_string
        else:
            try:
                last_string = str(json.loads(token))
            except ValueError:
                last_string = "?"
