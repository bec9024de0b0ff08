"""Access log lines: one JSON object per completed request."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from metaprotocol.accesslog import AccessLog, format_line
from metaprotocol.core.message import ErrorType
from metaprotocol.core.outputs import RequestCompleted


def _event(status: str = "ok", error: ErrorType | None = None) -> RequestCompleted:
    return RequestCompleted(
        conn=7,
        listener="redis",
        route="sessions",
        cluster="main",
        endpoint="127.0.0.1:6379",
        status=status,
        error=error,
        duration=0.0012345,
        properties={"command": "GET", "key": "session:é"},
    )


def test_line_format() -> None:
    line = format_line(_event("local_error", ErrorType.OVER_LIMIT), wall_time=1700000000.25)
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2023-11-14T22:13:20.250+00:00",
        "listener": "redis",
        "route": "sessions",
        "cluster": "main",
        "endpoint": "127.0.0.1:6379",
        "status": "local_error",
        "error": "over_limit",
        "duration_ms": 1.234,
        "metadata": {"command": "GET", "key": "session:é"},
    }
    assert json.loads(format_line(_event(), 0.0))["error"] is None


def test_file_gets_one_line_per_event_on_flush(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    log.log(_event())
    log.log(_event("error"))
    assert path.read_text() == ""  # buffered until the adapter's flush
    log.flush()
    log.log(_event("oneway"))
    log.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["ok", "error", "oneway"]


def test_dash_means_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    log = AccessLog("-")
    log.log(_event())
    log.flush()
    assert json.loads(capsys.readouterr().out)["route"] == "sessions"


def test_stream_target_and_closed_stream_do_not_raise() -> None:
    stream = io.StringIO()
    log = AccessLog(stream)
    log.log(_event())
    log.flush()
    assert stream.getvalue().count("\n") == 1
    stream.close()
    log.log(_event())
    log.flush()


def test_only_the_metadata_asked_for_is_logged() -> None:
    line = json.loads(format_line(_event(), 0.0, ("command", "absent")))
    assert line["metadata"] == {"command": "GET"}
    assert json.loads(format_line(_event(), 0.0, ()))["metadata"] == {}
    stream = io.StringIO()
    log = AccessLog(stream, ("key",))
    log.log(_event(), 0.0)
    log.flush()
    assert json.loads(stream.getvalue())["metadata"] == {"key": "session:é"}
