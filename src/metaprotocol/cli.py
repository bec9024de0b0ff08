"""The ``metaprotocol`` command line: run, check and demo (docs/configuration.md)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from metaprotocol import __version__
from metaprotocol.configfile import ConfigError, load_config
from metaprotocol.core.config import Config
from metaprotocol.logs import LOG_FORMATS, configure

__all__ = ["ADAPTERS", "build_parser", "main", "summary"]

ADAPTERS = ("asyncio", "uvloop", "trio", "blocking")
LOG_LEVELS = ("debug", "info", "warning", "error")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metaprotocol",
        description="A sans-IO L7 proxy for request/response protocols "
        "(Dubbo, Thrift, HTTP/1.1, Redis, yours).",
    )
    parser.add_argument("--version", action="version", version=f"metaprotocol {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run the proxy with a config file")
    run.add_argument("config", metavar="CONFIG", help="YAML or JSON config file")
    run.add_argument(
        "--adapter", choices=ADAPTERS, default="asyncio", help="event loop (default: asyncio)"
    )
    run.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="worker processes sharing the ports with SO_REUSEPORT (default: 1)",
    )
    run.add_argument(
        "--log-level", type=str.lower, choices=LOG_LEVELS, default="info", help="(default: info)"
    )
    run.add_argument(
        "--log-format",
        type=str.lower,
        choices=LOG_FORMATS,
        default="text",
        help="text lines, or one JSON object per line (default: text)",
    )

    check = commands.add_parser(
        "check", help="validate a config file; print every error with its path"
    )
    check.add_argument("config", metavar="CONFIG", help="YAML or JSON config file")

    commands.add_parser(
        "demo",
        help="start sample upstreams and the proxy on loopback, drive traffic, print a report",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metaprotocol`` script and ``python -m metaprotocol``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            return _check(args.config)
        if args.command == "run":
            return _run(args.config, args.adapter, args.workers, args.log_level, args.log_format)
        if args.command == "demo":
            from metaprotocol.demo import main as demo_main

            return demo_main()
    except KeyboardInterrupt:
        return 130
    parser.print_help(sys.stderr)
    return 2


def summary(source: str, config: Config) -> str:
    """One line describing a valid config, e.g. for ``metaprotocol check``."""
    listeners = ", ".join(
        f"{lc.name} ({lc.codec} on {_address(lc.host, lc.port)})" for lc in config.listeners
    )
    routes = sum(len(lc.routes) for lc in config.listeners)
    parts = [
        _plural(len(config.listeners), "listener") + f": {listeners}",
        _plural(len(config.clusters), "cluster"),
        _plural(routes, "route"),
    ]
    if config.admin is not None:
        parts.append(f"admin on {_address(config.admin.host, config.admin.port)}")
    return f"{source}: ok; " + "; ".join(parts)


def _check(path: str) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        _print_errors(path, exc)
        return 1
    print(summary(path, config))
    return 0


def _run(path: str, adapter: str, workers: int, log_level: str, log_format: str) -> int:
    # Validate first so a bad config reads the same as under `check`, before any IO starts.
    try:
        load_config(path)
    except ConfigError as exc:
        _print_errors(path, exc)
        return 1
    configure(log_level, log_format)
    from metaprotocol.runner import run

    return run(path, adapter, workers)


def _print_errors(path: str, exc: ConfigError) -> None:
    for line in exc.errors:
        print(line, file=sys.stderr)
    print(f"{path}: {_plural(len(exc.errors), 'error')}", file=sys.stderr)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
