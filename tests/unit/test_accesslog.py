"""Access log lines: one JSON object per completed request, every field and response flag."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import pytest

from metaprotocol.accesslog import RESPONSE_FLAGS, AccessLog, format_line, response_flags
from metaprotocol.core.message import ErrorType
from metaprotocol.core.outputs import RequestCompleted
from metaprotocol.core.tracing import TraceSpan


def _event(status: str = "ok", error: ErrorType | None = None, **fields: Any) -> RequestCompleted:
    event = RequestCompleted(
        conn=7,
        listener="redis",
        route="sessions",
        cluster="main",
        endpoint="127.0.0.1:6379",
        status=status,
        error=error,
        duration=0.0012345,
        properties={"command": "GET", "key": "session:é"},
        peer="10.1.2.3:40000",
        codec="redis",
        wire_status="OK",
        bytes_received=31,
        bytes_sent=9,
        attempts=1,
    )
    return dataclasses.replace(event, **fields)


def test_line_format() -> None:
    line = format_line(_event(), wall_time=1700000000.2512345)
    assert "\n" not in line
    assert json.loads(line) == {
        "start_time": "2023-11-14T22:13:20.250+00:00",  # completion minus the duration
        "duration_ms": 1.234,
        "listener": "redis",
        "route": "sessions",
        "cluster": "main",
        "upstream_host": "127.0.0.1:6379",
        "downstream_remote_address": "10.1.2.3:40000",
        "codec": "redis",
        "status": "OK",
        "response_flags": "-",
        "bytes_received": 31,
        "bytes_sent": 9,
        "attempts": 1,
        "outcome": "ok",
        "error": None,
        "trace_id": None,
        "metadata": {"command": "GET", "key": "session:é"},
    }


def test_a_local_answer_before_routing_has_nulls_not_empty_strings() -> None:
    refused = _event(
        "local_error",
        ErrorType.BAD_REQUEST,
        route="",
        cluster="",
        endpoint="",
        wire_status="ERR",
        attempts=0,
    )
    line = json.loads(format_line(refused, 0.0))
    assert (line["route"], line["cluster"], line["upstream_host"]) == (None, None, None)
    assert (line["status"], line["response_flags"], line["error"]) == ("ERR", "DPE", "bad_request")
    assert line["outcome"] == "local_error"
    nothing_sent = json.loads(format_line(_event(wire_status="", peer="", codec=""), 0.0))
    assert nothing_sent["status"] is None
    assert nothing_sent["downstream_remote_address"] is None
    assert nothing_sent["codec"] is None


def test_trace_id_is_logged_for_a_traced_request() -> None:
    span = TraceSpan(0x0AF7651916CD43DD8448EB211C80319C, 0x00F067AA0BA902B7, 0)
    line = json.loads(format_line(_event(span=span), 0.0))
    assert line["trace_id"] == "0af7651916cd43dd8448eb211c80319c"


@pytest.mark.parametrize(
    ("error", "cluster", "attempts", "flags"),
    [
        (ErrorType.ROUTE_NOT_FOUND, "", 0, "NR"),
        (ErrorType.CLUSTER_NOT_FOUND, "", 0, "NC"),
        (ErrorType.NO_HEALTHY_UPSTREAM, "main", 0, "UH"),
        (ErrorType.CONNECT_FAILURE, "main", 1, "UF"),
        (ErrorType.CONNECT_FAILURE, "main", 3, "UF,URX"),
        (ErrorType.TIMEOUT, "main", 1, "UT"),
        (ErrorType.TIMEOUT, "main", 2, "UT,URX"),
        (ErrorType.UPSTREAM_RESET, "main", 1, "UR"),
        (ErrorType.UPSTREAM_RESET, "main", 2, "UR,URX"),
        (ErrorType.BAD_RESPONSE, "main", 1, "UPE"),
        (ErrorType.BAD_RESPONSE, "main", 2, "UPE"),  # never retried: no URX
        (ErrorType.BAD_REQUEST, "", 0, "DPE"),
        (ErrorType.MESSAGE_TOO_LARGE, "", 0, "DPE"),
        (ErrorType.OVER_LIMIT, "", 0, "RL"),  # a rate-limit filter, before routing
        (ErrorType.OVER_LIMIT, "main", 0, "UO"),  # a circuit breaker of the cluster
        (ErrorType.UNAUTHENTICATED, "", 0, "UAEX"),
        (ErrorType.PERMISSION_DENIED, "", 0, "UAEX"),
        (ErrorType.UNSPECIFIED, "", 0, "LR"),
    ],
)
def test_response_flags(error: ErrorType, cluster: str, attempts: int, flags: str) -> None:
    event = _event("local_error", error, cluster=cluster, attempts=attempts)
    assert response_flags(event) == flags
    assert json.loads(format_line(event, 0.0))["response_flags"] == flags


def test_response_flags_without_a_local_answer() -> None:
    assert response_flags(_event("ok")) == "-"
    assert response_flags(_event("error", wire_status="500")) == "-"  # the upstream's answer
    assert response_flags(_event("oneway")) == "-"
    assert response_flags(_event("abandoned")) == "DC"  # the client went away first
    assert response_flags(_event("reset")) == "DC"  # or reset its stream


def test_every_error_type_has_a_flag() -> None:
    assert set(RESPONSE_FLAGS) | {ErrorType.UNSPECIFIED} == set(ErrorType)


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
    assert [json.loads(line)["outcome"] for line in lines] == ["ok", "error", "oneway"]


def test_reopen_after_a_rotation_writes_to_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"
    log = AccessLog(str(path))
    assert log.path == str(path)
    log.log(_event(route="before"))
    log.flush()
    path.rename(rotated)
    log.log(_event(route="buffered"))  # written before the reopen: still the old file
    log.reopen()
    log.log(_event(route="after"))
    log.close()
    routes = [json.loads(line)["route"] for line in rotated.read_text().splitlines()]
    assert routes == ["before", "buffered"]
    assert [json.loads(line)["route"] for line in path.read_text().splitlines()] == ["after"]


def test_reopen_that_fails_keeps_the_old_file(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    path = folder / "access.log"
    log = AccessLog(str(path))
    path.rename(tmp_path / "moved.log")
    folder.rmdir()  # the path cannot be opened again
    with pytest.raises(OSError):
        log.reopen()
    log.log(_event())
    log.close()
    assert len((tmp_path / "moved.log").read_text().splitlines()) == 1


def test_reopen_of_stdout_or_a_stream_is_a_no_op(capsys: pytest.CaptureFixture[str]) -> None:
    log = AccessLog("-")
    assert log.path is None
    log.log(_event())
    log.reopen()
    assert json.loads(capsys.readouterr().out)["route"] == "sessions"
    stream = io.StringIO()
    other = AccessLog(stream)
    other.reopen()
    other.log(_event())
    other.flush()
    assert stream.getvalue().count("\n") == 1


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
