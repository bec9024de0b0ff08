"""The ``metaprotocol`` command line: exit codes, what goes to stdout and stderr, dispatch."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

import metaprotocol
from metaprotocol.cli import main

GOOD = """
admin: {address: "127.0.0.1:9901"}
listeners:
  - name: tutorial
    address: 127.0.0.1:7000
    codec: lengthprefixed
    routes:
      - {name: all, route: {cluster: backend}}
clusters:
  - {name: backend, endpoints: ["127.0.0.1:7001"]}
"""

BAD = """
listeners:
  - name: tutorial
    address: 127.0.0.1:7000
    codec: lengthprefixed
    idle_timout: 5s
    routes:
      - {name: all, route: {cluster: backnd}}
clusters:
  - {name: backend, endpoints: ["127.0.0.1:7001", localhost]}
"""

BAD_ERRORS = [
    "listeners[0].idle_timout: unknown key (did you mean 'idle_timeout'?)",
    "clusters[0].endpoints[1]: expected host:port, got 'localhost'",
    "listeners[0].routes[0].route.cluster: unknown cluster 'backnd' (did you mean 'backend'?)",
]


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    return path


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metaprotocol", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_accepts_a_good_config_with_a_one_line_summary(
    good: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(good)]) == 0
    out, err = capsys.readouterr()
    assert out == (
        f"{good}: ok; 1 listener: tutorial (lengthprefixed on 127.0.0.1:7000); 1 cluster;"
        " 1 route; admin on 127.0.0.1:9901\n"
    )
    assert err == ""


def test_check_prints_every_error_to_stderr_and_exits_1(
    bad: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [*BAD_ERRORS, f"{bad}: 3 errors"]


def test_check_reports_an_unreadable_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["check", str(missing)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{missing}: cannot read config: No such file or directory",
        f"{missing}: 1 error",
    ]


def test_python_dash_m_check_exit_codes_and_streams(good: Path, bad: Path) -> None:
    ok = cli("check", str(good))
    assert (ok.returncode, ok.stderr) == (0, "")
    assert ok.stdout.startswith(f"{good}: ok; 1 listener")
    failed = cli("check", str(bad))
    assert (failed.returncode, failed.stdout) == (1, "")
    assert failed.stderr.splitlines() == [*BAD_ERRORS, f"{bad}: 3 errors"]


def test_version_prints_the_package_version() -> None:
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"metaprotocol {metaprotocol.__version__}"


def test_help_lists_the_commands() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for command in ("run", "check", "demo"):
        assert command in result.stdout
    run_help = cli("run", "--help")
    assert run_help.returncode == 0
    assert "{asyncio,uvloop,trio,blocking}" in run_help.stdout
    assert "--workers N" in run_help.stdout and "--log-level" in run_help.stdout


def test_no_command_prints_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: metaprotocol" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["run"], ["run", "c.yaml", "--workers", "0"], ["run", "c.yaml", "--adapter", "gevent"],
     ["check"], ["frobnicate"]],
)  # fmt: skip
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def _fake_module(monkeypatch: pytest.MonkeyPatch, name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def test_run_validates_then_calls_the_runner(good: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str, int]] = []

    def run(config_path: str, adapter: str, workers: int) -> int:
        calls.append((config_path, adapter, workers))
        return 7

    runner = _fake_module(monkeypatch, "metaprotocol.runner")
    runner.run = run  # type: ignore[attr-defined]
    monkeypatch.setattr("logging.basicConfig", lambda **kwargs: None)
    assert main(["run", str(good), "--adapter", "trio", "--workers", "3"]) == 7
    assert main(["run", str(good)]) == 7
    assert calls == [(str(good), "trio", 3), (str(good), "asyncio", 1)]


def test_run_with_a_bad_config_reports_like_check_and_never_starts(
    bad: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(config_path: str, adapter: str, workers: int) -> int:
        raise AssertionError("the runner must not start on a bad config")

    runner = _fake_module(monkeypatch, "metaprotocol.runner")
    runner.run = run  # type: ignore[attr-defined]
    assert main(["run", str(bad)]) == 1
    assert capsys.readouterr().err.splitlines() == [*BAD_ERRORS, f"{bad}: 3 errors"]


def test_demo_calls_the_demo_module(monkeypatch: pytest.MonkeyPatch) -> None:
    demo = _fake_module(monkeypatch, "metaprotocol.demo")
    demo.main = lambda: 0  # type: ignore[attr-defined]
    assert main(["demo"]) == 0
    demo.main = lambda: 3  # type: ignore[attr-defined]
    assert main(["demo"]) == 3


def test_ctrl_c_exits_130(good: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def run(config_path: str, adapter: str, workers: int) -> int:
        raise KeyboardInterrupt

    runner = _fake_module(monkeypatch, "metaprotocol.runner")
    runner.run = run  # type: ignore[attr-defined]
    monkeypatch.setattr("logging.basicConfig", lambda **kwargs: None)
    assert main(["run", str(good)]) == 130
