"""The span exporter's pieces that need no collector: the traces URL, the missing extra."""

from __future__ import annotations

import builtins
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from metaprotocol.core.config import TracingConfig
from metaprotocol.tracing import (
    OTEL_EXTRA_HINT,
    OTEL_PROTO_CLASH_HINT,
    SpanExporter,
    otel_hint,
    traces_url,
)


def test_traces_url_appends_the_signal_path_once() -> None:
    assert traces_url("http://127.0.0.1:4318") == "http://127.0.0.1:4318/v1/traces"
    assert traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert traces_url("https://c/otlp/v1/traces") == "https://c/otlp/v1/traces"


def test_without_the_sdk_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_otel(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("opentelemetry"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_otel)
    with pytest.raises(ModuleNotFoundError, match=r"metaprotocol\[otel\]") as caught:
        SpanExporter(TracingConfig("http://127.0.0.1:4318"))
    assert str(caught.value) == OTEL_EXTRA_HINT


def test_modules_replaced_by_xds_protos_get_their_own_hint() -> None:
    # What importing the exporter raises when xds-protos's older copy of the OpenTelemetry
    # .proto modules replaced opentelemetry-proto's: the module is there, a name is not.
    clash = ImportError("cannot import name 'InstrumentationScope' from 'common_pb2'")
    assert otel_hint(clash) == OTEL_PROTO_CLASH_HINT
    assert "--force-reinstall --no-deps opentelemetry-proto" in OTEL_PROTO_CLASH_HINT
    assert otel_hint(ModuleNotFoundError("No module named 'opentelemetry'")) == OTEL_EXTRA_HINT


def test_the_installed_proto_modules_are_opentelemetry_protos_own() -> None:
    # make venv / make compiled restore them after xds-protos (see the Makefile): without
    # that, the tracing e2e tests fail to import the exporter.
    from opentelemetry.proto.common.v1 import common_pb2

    assert hasattr(common_pb2, "InstrumentationScope")


MISSING_SDK = """
import sys
sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
from metaprotocol.cli import main
sys.exit(main(["run", sys.argv[1]]))
"""


def test_run_with_tracing_but_no_sdk_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text(
        "listeners: [{name: redis, address: '127.0.0.1:0', codec: redis,"
        " routes: [{route: {cluster: main}}]}]\n"
        "clusters: [{name: main, endpoints: ['127.0.0.1:6379']}]\n"
        "tracing: {otlp_endpoint: 'http://127.0.0.1:4318'}\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-c", MISSING_SDK, str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"error: {OTEL_EXTRA_HINT}"]
