"""Upstream servers and proxies of the end-to-end benchmark: configs written, processes started.

Every process listens on 127.0.0.1 on a free port and runs single-threaded / one worker, so
CPU per request compares like with like: haproxy ``nbthread 1``, nginx ``worker_processes
1``, twemproxy (single-threaded by design), mitmdump, metaprotocol ``--workers 1``, and the
raw forwarder. Upstream servers and the proxies in front of them are separate process
groups, so a proxy's CPU never includes its upstream's.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .procs import Proc, Procs, free_port, wait_port

__all__ = [
    "MITM_VENVS",
    "Target",
    "TlsFiles",
    "make_certificates",
    "metaprotocol_config",
    "mitmdump_binary",
    "shards_config",
    "start_canned",
    "start_haproxy",
    "start_metaprotocol",
    "start_mitmdump",
    "start_nginx_http",
    "start_nginx_stream",
    "start_rawfwd",
    "start_redis",
    "start_twemproxy",
]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
MITM_VENVS = (ROOT / "benchmarks" / ".venv-mitm", Path("/tmp/venv-mitm"))
NGINX_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
HTTP_BODY = b"metaprotocol benchmark: a small static file served by nginx.\n" * 2  # 122 bytes


@dataclass
class Target:
    """Something the load is pointed at: ``proc`` is None for the direct (no proxy) case."""

    name: str
    kind: str  # direct | metaprotocol | native | python
    port: int
    proc: Proc | None = None


def _start(procs: Procs, name: str, argv: list[str], port: int) -> Proc:
    proc = procs.spawn(name, argv)
    try:
        wait_port(port, proc)
    except BaseException:
        procs.stop(proc)
        raise
    return proc


# Upstreams ---------------------------------------------------------------------------------


def start_redis(procs: Procs, port: int) -> Proc:
    argv = [
        "redis-server",
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--maxclients",
        "15000",
        "--protected-mode",
        "no",
        "--dir",
        str(procs.workdir),
    ]
    return _start(procs, "upstream-redis", argv, port)


def start_nginx_http(procs: Procs, port: int) -> Proc:
    root = procs.workdir / "www"
    root.mkdir(exist_ok=True)
    (root / "index.html").write_bytes(HTTP_BODY)
    conf = procs.workdir / "nginx-http.conf"
    conf.write_text(
        _nginx_main(procs.workdir, "nginx-http")
        + f"""http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    default_type text/html;
    {_nginx_temp_paths(procs.workdir, "nginx-http")}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {root};
    }}
}}
"""
    )
    return _start(
        procs, "upstream-nginx", ["nginx", "-c", str(conf), "-p", str(procs.workdir)], port
    )


def start_canned(procs: Procs, kind: str, port: int) -> Proc:
    argv = [sys.executable, str(HERE / "upstreams.py"), kind, "--port", str(port)]
    return _start(procs, f"upstream-{kind}", argv, port)


# Proxies -----------------------------------------------------------------------------------


def _nginx_main(workdir: Path, name: str) -> str:
    load = f"load_module {NGINX_STREAM_MODULE};\n" if name == "nginx-stream" else ""
    return f"""{load}daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 20000;
user root;
pid {workdir}/{name}.pid;
error_log {workdir}/{name}.error.log warn;
events {{ worker_connections 20000; }}
"""


def _nginx_temp_paths(workdir: Path, name: str) -> str:
    return " ".join(
        f"{kind}_temp_path {workdir}/{name}-{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )


def start_nginx_stream(procs: Procs, upstream: int) -> Target:
    port = free_port()
    conf = procs.workdir / f"nginx-stream-{port}.conf"
    conf.write_text(
        _nginx_main(procs.workdir, "nginx-stream")
        + f"""stream {{
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        proxy_pass 127.0.0.1:{upstream};
        tcp_nodelay on;
    }}
}}
"""
    )
    argv = ["nginx", "-c", str(conf), "-p", str(procs.workdir)]
    return Target("nginx-stream", "native", port, _start(procs, "nginx-stream", argv, port))


@dataclass(frozen=True)
class TlsFiles:
    """A test CA and a server certificate for 127.0.0.1 (``combined``: certificate and key in
    one file, as haproxy's ``crt`` wants them)."""

    ca: str
    cert: str
    key: str
    combined: str


def make_certificates(workdir: Path) -> TlsFiles:
    import trustme  # the dev extra's test-certificate maker

    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    files = TlsFiles(*(str(workdir / n) for n in ("ca.pem", "cert.pem", "key.pem", "both.pem")))
    ca.cert_pem.write_to_path(files.ca)
    server.cert_chain_pems[0].write_to_path(files.cert)
    server.private_key_pem.write_to_path(files.key)
    Path(files.combined).write_bytes(
        server.private_key_pem.bytes() + b"".join(c.bytes() for c in server.cert_chain_pems)
    )
    return files


def start_haproxy(procs: Procs, mode: str, upstream: int, *, tls: TlsFiles | None = None) -> Target:
    """haproxy in ``mode`` (tcp or http); with ``tls`` it terminates TLS on its listener."""
    port = free_port()
    conf = procs.workdir / f"haproxy-{mode}-{port}.cfg"
    conf.write_text(
        f"""global
    nbthread 1
    maxconn 9900
defaults
    mode {mode}
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    {"option http-keep-alive" if mode == "http" else ""}
frontend fe
    bind 127.0.0.1:{port}{f" ssl crt {tls.combined}" if tls else ""}
    default_backend be
backend be
    {"http-reuse always" if mode == "http" else ""}
    server s1 127.0.0.1:{upstream}
"""
    )
    name = f"haproxy-{mode}" + ("-tls" if tls else "")
    return Target(
        name, "native", port, _start(procs, name, ["haproxy", "-db", "-f", str(conf)], port)
    )


def start_twemproxy(procs: Procs, upstream: int, shards: Sequence[int] = ()) -> Target:
    """nutcracker in front of ``upstream``, or of the ``shards`` (ketama on the key; it
    splits MGET, MSET and DEL per shard)."""
    port = free_port()
    conf = procs.workdir / f"twemproxy-{port}.yml"
    servers = "".join(f"    - 127.0.0.1:{p}:1\n" for p in shards or [upstream])
    conf.write_text(
        f"""bench:
  listen: 127.0.0.1:{port}
  redis: true
  hash: fnv1a_64
  distribution: ketama
  auto_eject_hosts: false
  timeout: 5000
  server_connections: 1
  servers:
{servers}"""
    )
    argv = [
        "nutcracker",
        "-c",
        str(conf),
        "-s",
        str(free_port()),
        "-a",
        "127.0.0.1",
        "-p",
        str(procs.workdir / f"twemproxy-{port}.pid"),
        "-o",
        str(procs.workdir / "twemproxy.out.log"),
        "-v",
        "4",
    ]
    return Target("twemproxy", "native", port, _start(procs, "twemproxy", argv, port))


def mitmdump_binary() -> Path | None:
    for venv in MITM_VENVS:
        if (venv / "bin" / "mitmdump").exists():
            return venv / "bin" / "mitmdump"
    found = shutil.which("mitmdump")
    return Path(found) if found else None


def start_mitmdump(procs: Procs, upstream: int) -> Target:
    binary = mitmdump_binary()
    if binary is None:
        raise FileNotFoundError("mitmdump is not installed (see docs/benchmarks.md)")
    port = free_port()
    argv = [
        str(binary),
        "--mode",
        f"reverse:http://127.0.0.1:{upstream}@{port}",
        "--listen-host",
        "127.0.0.1",
        "--quiet",
        "--set",
        "flow_detail=0",
        "--set",
        f"confdir={procs.workdir / 'mitm'}",
    ]
    return Target("mitmdump", "python", port, _start(procs, "mitmdump", argv, port))


def start_rawfwd(procs: Procs, loop: str, upstream: int) -> Target:
    port = free_port()
    argv = [
        sys.executable,
        str(HERE / "rawfwd.py"),
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        f"127.0.0.1:{upstream}",
        "--loop",
        loop,
    ]
    name = f"rawfwd/{loop}"
    return Target(name, "python", port, _start(procs, name, argv, port))


# metaprotocol ------------------------------------------------------------------------------

_ROUTES = {
    # Each listener routes on metadata: the first route is a miss for the benchmark traffic,
    # so every request runs one failed matcher and then a matching one.
    "redis": """    routes:
      - name: sessions
        match: {metadata: {key: {prefix: "session:"}}}
        route: {cluster: main}
      - name: default
        route: {cluster: main}
""",
    "http1": """    codec_options: {parser: fast}
    routes:
      - name: api
        match: {metadata: {":path": {prefix: /api/}}}
        route: {cluster: main}
      - name: web
        match: {metadata: {":method": {exact: GET}}}
        route: {cluster: main}
""",
    "thrift": """    codec_options: {transport: framed, protocol: binary}
    routes:
      - name: calculator
        match: {metadata: {service: {exact: Calculator}}}
        route: {cluster: main}
      - name: reads
        match: {metadata: {method: {prefix: get}}}
        route: {cluster: main}
""",
    "dubbo": """    routes:
      - name: orders
        match: {metadata: {interface: {suffix: .OrderService}}}
        route: {cluster: main}
      - name: users
        match:
          metadata:
            interface: {exact: my.demo.service.UserService}
            method: {exact: login}
        route: {cluster: main}
""",
}


def metaprotocol_config(codec: str, port: int, upstream: int, *, extra: str = "") -> str:
    """A one-listener YAML config: ``codec`` on ``port``, routed to 127.0.0.1:``upstream``."""
    if codec == "redis-shards":
        raise ValueError("redis-shards: use shards_config")
    return f"""listeners:
  - name: bench
    address: 127.0.0.1:{port}
    codec: {codec}
{extra}{_ROUTES[codec]}clusters:
  - name: main
    endpoints: [127.0.0.1:{upstream}]
"""


def shards_config(port: int, shards: Sequence[int]) -> str:
    """Redis on ``port`` in front of ``shards``: one ``ring_hash`` cluster hashed on the key
    (so multi-key commands need the proxy to split them)."""
    endpoints = ", ".join(f"127.0.0.1:{p}" for p in shards)
    return f"""listeners:
  - name: bench
    address: 127.0.0.1:{port}
    codec: redis
    routes:
      - name: shards
        route: {{cluster: shards, hash_policy: [key]}}
clusters:
  - name: shards
    endpoints: [{endpoints}]
    lb_policy: ring_hash
"""


def _runner_available() -> bool:
    try:
        return importlib.util.find_spec("metaprotocol.runner") is not None
    except ImportError:
        return False


def start_metaprotocol(
    procs: Procs,
    adapter: str,
    codec: str,
    upstream: int,
    *,
    extra: str = "",
    label: str = "",
    launcher_flags: tuple[str, ...] = (),
    python: str | None = None,
    shards: Sequence[int] = (),
) -> Target:
    """``python -m metaprotocol run`` on a one-listener config; ``launcher_flags`` (A/B
    experiments such as ``--no-observe``) go through ``mprun.py`` instead. ``python`` is
    another interpreter with metaprotocol installed (the mypyc build): its target is named
    ``metaprotocol[mypyc]/ADAPTER``. Codec ``redis-shards``: Redis in front of ``shards``
    (``shards_config``). Adapter ``rloop`` goes through ``mprun.py`` (the CLI has no such
    adapter: it is the asyncio adapter on rloop's event loop)."""
    port = free_port()
    build = "" if python is None else "-mypyc"
    conf = procs.workdir / f"metaprotocol{build}-{codec}-{adapter}{label}-{port}.yaml"
    if codec == "redis-shards":
        conf.write_text(shards_config(port, shards))
    else:
        conf.write_text(metaprotocol_config(codec, port, upstream, extra=extra))
    if python is not None:
        if adapter == "rloop":
            argv = [python, str(HERE / "mprun.py"), str(conf), "--adapter", adapter]
        else:
            argv = [python, "-m", "metaprotocol", "run", str(conf), "--adapter", adapter]
            argv += ["--log-level", "warning"]
        name = f"metaprotocol[mypyc]/{adapter}"
        return Target(name, "metaprotocol", port, _start(procs, name, argv, port))
    if launcher_flags or adapter == "rloop":
        argv = [sys.executable, str(HERE / "mprun.py"), str(conf), "--adapter", adapter]
        argv += list(launcher_flags)
    elif _runner_available():
        argv = [sys.executable, "-m", "metaprotocol", "run", str(conf), "--adapter", adapter]
        argv += ["--log-level", "warning"]
    else:  # the CLI's runner is not there yet: serve through the same adapters directly
        argv = [sys.executable, str(HERE / "mprun.py"), str(conf), "--adapter", adapter]
    name = f"metaprotocol/{adapter}{label}"
    return Target(name, "metaprotocol", port, _start(procs, name, argv, port))
