"""Active health checks and DNS discovery end to end, through ``metaprotocol run``.

- Health: three redis-servers behind a cluster with ``health_check``; one is killed: after
  ``unhealthy_threshold`` failed probes it is out, and from then on every request is
  answered by the others without a client error; restarted, it is back after
  ``healthy_threshold`` good probes and takes traffic again.
- DNS: a cluster on a name whose record the test rewrites in ``/etc/hosts`` (bind-mounted,
  in a mount namespace the proxy runs in): traffic moves to the new address.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from tests.e2e.servers import DEADLINE, free_port, scrape_admin, wait_for_port, wait_until
from tests.e2e.test_lifecycle import ProxyProcess
from tests.peers import require_binary


class RedisProcess:
    """A redis-server on a fixed address that the test can kill and start again."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.binary = require_binary("redis-server")
        self.host, self.port = host, port
        self.dir = tempfile.TemporaryDirectory(prefix="mp-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, name: str) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", self.host, "--save", "",
             "--appendonly", "no", "--dir", self.dir.name, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port(self.port, self.proc) if self.host == "127.0.0.1" else self._wait()
        redis.Redis(self.host, self.port).set("who", name)

    def _wait(self) -> None:
        def up() -> bool:
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
            except OSError:
                return False
            return True

        wait_until(up, message=f"redis-server on {self.host}:{self.port}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(DEADLINE)

    def close(self) -> None:
        self.kill()
        self.dir.cleanup()


@contextlib.contextmanager
def _redis_servers(*names: str, host: str = "127.0.0.1") -> Iterator[list[RedisProcess]]:
    servers = [RedisProcess(free_port(), host) for _ in names]
    try:
        for server, name in zip(servers, names, strict=True):
            server.start(name)
        yield servers
    finally:
        for server in servers:
            server.close()


def _clusters(admin: int) -> dict[str, dict[str, Any]]:
    """``/clusters?format=json`` as {cluster: {endpoint address: fields}}."""
    data = json.loads(scrape_admin(("127.0.0.1", admin), "/clusters?format=json"))
    return {c["name"]: {e["address"]: e for e in c["endpoints"]} for c in data["clusters"]}


def _start(config: dict[str, Any], tmp_path: Path, adapter: str) -> tuple[ProxyProcess, int, int]:
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    process = ProxyProcess(path, adapter)
    port = int(process.wait_for_line(r"listener redis on 127\.0\.0\.1:(\d+)").group(1))
    admin = int(process.wait_for_line(r"admin on 127\.0\.0\.1:(\d+)").group(1))
    return process, port, admin


def test_a_killed_redis_is_taken_out_and_comes_back_after_restart(
    tmp_path: Path, adapter: str
) -> None:
    interval, unhealthy, healthy = 0.5, 2, 2
    with _redis_servers("a", "b", "c") as servers:
        config = {
            "admin": {"address": "127.0.0.1:0"},
            "listeners": [
                {"name": "redis", "address": "127.0.0.1:0", "codec": "redis",
                 "routes": [{"name": "all", "route": {"cluster": "cache"}}]},
            ],
            "clusters": [
                {"name": "cache",
                 "endpoints": [f"127.0.0.1:{s.port}" for s in servers],
                 "health_check": {"interval": f"{interval}s", "timeout": "400ms",
                                  "unhealthy_threshold": unhealthy,
                                  "healthy_threshold": healthy}},
            ],
        }  # fmt: skip
        process, port, admin = _start(config, tmp_path, adapter)
        try:
            client = redis.Redis("127.0.0.1", port)
            dead = f"127.0.0.1:{servers[2].port}"
            wait_until(
                lambda: all(e["health"] == "healthy" for e in _clusters(admin)["cache"].values()),
                message="every endpoint healthy",
            )
            assert {client.get("who") for _ in range(30)} == {b"a", b"b", b"c"}

            servers[2].kill()
            wait_until(
                lambda: _clusters(admin)["cache"][dead]["health"] == "unhealthy",
                message=f"{dead} taken out",
            )
            # Out after unhealthy_threshold failed probes in a row (one probe per interval):
            # the log says so, and /clusters says why it is out of rotation.
            process.wait_for_line(
                rf"endpoint {dead} of cluster cache unhealthy after {unhealthy} failed"
            )
            assert "/failed_active_hc" in scrape_admin(("127.0.0.1", admin), "/clusters")
            assert _clusters(admin)["cache"][dead]["healthy"] is False
            gauge = f'metaprotocol_upstream_endpoint_healthy{{cluster="cache",endpoint="{dead}"}}'
            assert f"{gauge} 0" in scrape_admin(("127.0.0.1", admin))
            answers = [client.get("who") for _ in range(300)]  # raises on any error reply
            assert set(answers) == {b"a", b"b"}

            servers[2].start("c")
            wait_until(
                lambda: _clusters(admin)["cache"][dead]["health"] == "healthy",
                message=f"{dead} back",
            )
            assert b"c" in {client.get("who") for _ in range(30)}
            metrics = scrape_admin(("127.0.0.1", admin))
            assert (
                f'metaprotocol_upstream_endpoint_healthy{{cluster="cache",endpoint="{dead}"}} 1'
                in metrics
            )
        finally:
            process.stop()


def test_dns_records_changing_in_etc_hosts_move_traffic(tmp_path: Path, adapter: str) -> None:
    unshare, mount = shutil.which("unshare"), shutil.which("mount")
    if os.geteuid() != 0 or unshare is None or mount is None:
        pytest.skip("needs root, unshare and mount for a private /etc/hosts")
    port = free_port()
    first, second = RedisProcess(port, "127.0.0.2"), RedisProcess(port, "127.0.0.3")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.2 cache.mesh.test\n")
    config = {
        "listeners": [
            {"name": "redis", "address": "127.0.0.1:0", "codec": "redis",
             "routes": [{"name": "all", "route": {"cluster": "cache"}}]},
        ],
        "admin": {"address": "127.0.0.1:0"},
        "clusters": [
            {"name": "cache", "endpoints": [f"cache.mesh.test:{port}"],
             "discovery": "dns", "dns_refresh": "100ms"},
        ],
    }  # fmt: skip
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        first.start("first")
        second.start("second")
        # The proxy runs in a mount namespace where /etc/hosts is the test's file.
        process = ProxyProcess(
            path, adapter, prefix=(unshare, "--mount", "sh", "-c",
                                     f'{mount} --bind {hosts} /etc/hosts && exec "$@"', "sh"),
        )  # fmt: skip
        try:
            listen = int(process.wait_for_line(r"listener redis on 127\.0\.0\.1:(\d+)").group(1))
            client = redis.Redis("127.0.0.1", listen)
            wait_until(lambda: client.get("who") == b"first", message="traffic to 127.0.0.2")
            with hosts.open("w") as f:  # in place: the bind mount follows the same file
                f.write("127.0.0.1 localhost\n127.0.0.3 cache.mesh.test\n")
            wait_until(lambda: client.get("who") == b"second", message="traffic to 127.0.0.3")
            assert {client.get("who") for _ in range(50)} == {b"second"}
        finally:
            process.stop()
    finally:
        first.close()
        second.close()
