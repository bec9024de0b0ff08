"""The compiled (mypyc) build compiles the adapters' per-message path too, not only core/
and codecs/ (setup.py, ``HOT_ADAPTER_MODULES``): run under ``make unit-compiled``, this
fails if one of those modules is installed as plain Python. Under the interpreted build
(the package imported from src/) there is nothing to check."""

from __future__ import annotations

import importlib

import pytest

import metaprotocol.core.proxy

HOT_ADAPTER_MODULES = (
    "metaprotocol.adapters.dispatcher",
    "metaprotocol.adapters.asyncio_connections",
    "metaprotocol.adapters.asyncio",
    "metaprotocol.adapters.observers",
    "metaprotocol.logs",
)


def _compiled(module: str) -> bool:
    path = importlib.import_module(module).__file__
    return path is not None and path.endswith(".so")


def test_the_compiled_build_compiles_the_adapters_hot_path() -> None:
    if not _compiled(metaprotocol.core.proxy.__name__):
        pytest.skip("the interpreted build: core/ is not compiled either")
    assert [m for m in HOT_ADAPTER_MODULES if not _compiled(m)] == []
