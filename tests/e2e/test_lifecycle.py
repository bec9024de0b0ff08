"""Admin and lifecycle end to end: ``metaprotocol run CONFIG`` as a real process.

SIGHUP with a bad file keeps serving (and says why in the log); SIGHUP with a good, changed
file changes routing; SIGTERM with a request in flight answers it, then exits 0. The admin
endpoint's ``/stats/prometheus`` parses with prometheus_client.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from metaprotocol.testing.serving import start_proxy
from tests.e2e.servers import (
    DEADLINE,
    GatedHandler,
    http_server,
    proxy_config,
    scrape_admin,
    wait_until,
)


def _config(cluster: str, ports: dict[str, int]) -> dict[str, Any]:
    return {
        "admin": {"address": "127.0.0.1:0"},
        "listeners": [
            {"name": "web", "address": "127.0.0.1:0", "codec": "http1",
             "routes": [{"name": "all", "route": {"cluster": cluster}}]}
        ],
        "clusters": [
            {"name": name, "endpoints": [f"127.0.0.1:{port}"]} for name, port in ports.items()
        ],
    }  # fmt: skip


class ProxyProcess:
    """``python -m metaprotocol run`` with its log lines collected by a reader thread."""

    def __init__(
        self, config_path: Path, adapter: str, *extra_args: str, prefix: Sequence[str] = ()
    ) -> None:
        """``prefix``: a command the proxy runs under (it execs ``"$@"``)."""
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "metaprotocol", "run", str(config_path),
             "--adapter", adapter, *extra_args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def wait_for_line(self, pattern: str, start: int = 0) -> re.Match[str]:
        def find() -> re.Match[str] | None:
            if self.proc.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"proxy exited {self.proc.returncode}: {self.lines}")
            for line in self.lines[start:]:
                found = re.search(pattern, line)
                if found:
                    return found
            return None

        found = wait_until(find, message=f"log line /{pattern}/ in {self.lines}")
        assert found is not None
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(DEADLINE)
        self._reader.join(DEADLINE)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def _running(config_path: Path, adapter: str) -> Iterator[tuple[ProxyProcess, int, int]]:
    """The proxy process, its listener port and its admin port."""
    process = ProxyProcess(config_path, adapter)
    try:
        port = int(process.wait_for_line(r"listener web on 127\.0\.0\.1:(\d+)").group(1))
        admin = int(process.wait_for_line(r"admin on 127\.0\.0\.1:(\d+)").group(1))
        yield process, port, admin
    finally:
        process.stop()


def test_reload_and_graceful_shutdown(adapter: str, tmp_path: Path) -> None:
    with (
        http_server(GatedHandler, name="a") as a,
        http_server(GatedHandler, name="b") as b,
    ):
        ports = {"a": a.server_address[1], "b": b.server_address[1]}
        config_path = tmp_path / "proxy.yaml"
        config_path.write_text(yaml.safe_dump(_config("a", ports)))
        with _running(config_path, adapter) as (process, port, admin_port):
            url = f"http://127.0.0.1:{port}"
            with httpx.Client(timeout=DEADLINE) as client:
                assert client.get(f"{url}/whoami").text == "a"

                # SIGHUP with a broken file: logged, and the old routes keep serving.
                config_path.write_text("listeners: [ {name: web, codec: nosuch")
                mark = len(process.lines)
                process.proc.send_signal(signal.SIGHUP)
                process.wait_for_line(r"reload of .* rejected", start=mark)
                assert client.get(f"{url}/whoami").text == "a"
                # A file that parses but is invalid (unknown cluster) is rejected too.
                config_path.write_text(yaml.safe_dump(_config("missing", ports)))
                mark = len(process.lines)
                process.proc.send_signal(signal.SIGHUP)
                process.wait_for_line(r"reload of .* rejected", start=mark)
                assert client.get(f"{url}/whoami").text == "a"

                # SIGHUP with a good, changed file: routing changes.
                config_path.write_text(yaml.safe_dump(_config("b", ports)))
                mark = len(process.lines)
                process.proc.send_signal(signal.SIGHUP)
                process.wait_for_line(r"reloaded ", start=mark)
                assert client.get(f"{url}/whoami").text == "b"

            # The admin endpoint of the real process.
            text = scrape_admin(("127.0.0.1", admin_port))
            families = {f.name: f for f in text_string_to_metric_families(text)}
            requests = [
                s.value for s in families["metaprotocol_request"].samples
                if s.labels.get("listener") == "web"
            ]  # fmt: skip
            assert requests == [4.0]
            assert scrape_admin(("127.0.0.1", admin_port), "/ready") == "ready\n"

            # SIGTERM with a request in flight: it is answered, then the process exits 0.
            answer: list[httpx.Response] = []
            failure: list[BaseException] = []

            def slow_request() -> None:
                try:
                    with httpx.Client(timeout=DEADLINE) as slow:
                        answer.append(slow.get(f"{url}/gated"))
                except BaseException as exc:
                    failure.append(exc)

            requester = threading.Thread(target=slow_request)
            requester.start()
            gated: Any = b
            assert gated.arrived.wait(DEADLINE)  # upstream b holds the request
            mark = len(process.lines)
            process.proc.send_signal(signal.SIGTERM)
            process.wait_for_line(r"draining", start=mark)
            assert process.proc.poll() is None  # still waiting for the request in flight
            gated.gate.set()
            requester.join(DEADLINE)
            assert not failure, (failure, process.lines)
            assert [(r.status_code, r.text) for r in answer] == [(200, "released\n")]
            assert process.proc.wait(DEADLINE) == 0


def test_admin_prometheus_parses_in_process(adapter: str, redis_port: int) -> None:
    config = proxy_config("redis", {"main": [redis_port]})
    with start_proxy(config, adapter) as running:
        import redis

        client = redis.Redis(host="127.0.0.1", port=running.ports["redis"], protocol=2)
        try:
            for i in range(7):
                client.set(f"admin:{i}", i)
        finally:
            client.close()
        assert running.admin_address is not None
        text = scrape_admin(running.admin_address)
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families["metaprotocol_request"].type == "counter"
        assert families["metaprotocol_active_requests"].type == "gauge"
        listener = {"listener": "redis"}
        values = {s.name: s.value for f in families.values() for s in f.samples
                  if s.labels == listener}  # fmt: skip
        assert values["metaprotocol_request_total"] >= 7
        assert values["metaprotocol_active_requests"] == 0
        with pytest.raises(httpx.HTTPStatusError):
            httpx.get(
                f"http://127.0.0.1:{running.admin_address[1]}/nope", timeout=DEADLINE
            ).raise_for_status()
