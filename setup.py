"""Optional compiled build: ``METAPROTOCOL_MYPYC=1 pip install .`` compiles the sans-IO core,
the codecs and the adapters' per-message path with mypyc (same source, same behaviour,
faster). Without the variable this is
a plain pure-Python install; pyproject.toml holds all the metadata."""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import setup

# Compiled besides core/ and codecs/ (tests/adapters/test_compiled_build.py checks that the
# compiled build has them as extension modules).
HOT_ADAPTER_MODULES = (
    "adapters/dispatcher.py",
    "adapters/asyncio_connections.py",
    "adapters/asyncio.py",
    "adapters/observers.py",
    "logs.py",
)

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
    # The adapters' per-message path: the dispatcher, the asyncio (and uvloop) adapter's
    # connection callbacks and write flushing, and the observer routing every completed
    # request goes through. Interpreted, they were half the compiled build's user CPU. The
    # rest of adapters/ runs at startup, on a reload or a timer, or is another adapter.
    sources += [str(root / path) for path in HOT_ADAPTER_MODULES]
    ext_modules = mypycify(["--strict", *sources], opt_level="3")

setup(ext_modules=ext_modules)
