"""Optional compiled build: ``METAPROTOCOL_MYPYC=1 pip install .`` compiles the sans-IO core
and the codecs with mypyc (same source, same behaviour, faster). Without the variable this is
a plain pure-Python install; pyproject.toml holds all the metadata."""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import setup

ext_modules = []
if os.environ.get("METAPROTOCOL_MYPYC") == "1":
    from mypyc.build import mypycify

    root = Path(__file__).parent / "src" / "metaprotocol"
    # Interpreted: the registry loads entry points dynamically; core/codec.py holds
    # runtime-checkable Protocols, which mypyc cannot compile; the h11 reference parser is
    # the slow oracle, never the data path; events and outputs stay plain dataclasses so
    # tests can put placeholders such as ``testing.ANY`` in them.
    interpreted = {
        "codecs/registry.py",
        "core/codec.py",
        "codecs/http1/reference.py",
        "core/events.py",
        "core/outputs.py",
    }
    sources = sorted(
        str(path)
        for package in ("core", "codecs")
        for path in (root / package).rglob("*.py")
        if path.relative_to(root).as_posix() not in interpreted
    )
    ext_modules = mypycify(["--strict", *sources], opt_level="3")

setup(ext_modules=ext_modules)
