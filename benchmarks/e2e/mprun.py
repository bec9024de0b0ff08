"""Fallback launcher: serve a metaprotocol config on one adapter until SIGTERM.

``python benchmarks/e2e/mprun.py CONFIG --adapter asyncio|uvloop|rloop|trio|blocking``. The
benchmark prefers ``python -m metaprotocol run``; it uses this only when that command is not
usable (``metaprotocol.runner`` missing), so the numbers come from the same adapters, for
A/B experiments on engine options (``--no-observe``) without touching ``src/``, and for
``rloop`` (a Rust asyncio event loop, benchmark-only: the asyncio adapter on its loop).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading
from typing import Any

__all__ = ["main"]


def _core(path: str, now: float, observe: bool) -> Any:
    """The engine with observer events on or off (what the ``--no-observe`` experiment
    compares; without it the adapter builds its own, as ``metaprotocol run`` does)."""
    import random

    from metaprotocol.adapters.dispatch import resolve_config
    from metaprotocol.core.proxy import Proxy

    return Proxy(resolve_config(path), now=now, random=random.Random().random, observe=observe)


async def _asyncio(path: str, observe: bool = True) -> None:
    from metaprotocol.adapters.asyncio import serve

    now = asyncio.get_running_loop().time()
    # The adapter's own engine turns observer events on only for an access log or tracing
    # (and merges Redis pipelines only without them): rloop is measured like uvloop.
    handle = await serve(path, proxy=None if observe else _core(path, now, False))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await handle.close()


async def _anyio(path: str) -> None:
    import anyio

    from metaprotocol.adapters.anyio import serve

    async with serve(path):
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                return


def _blocking(path: str) -> None:
    from metaprotocol.adapters.blocking import serve_forever

    handles: list[Any] = []

    def on_term(signum: int, frame: object) -> None:
        if handles:
            threading.Thread(target=handles[0].stop).start()

    signal.signal(signal.SIGTERM, on_term)
    serve_forever(path, handles.append)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--adapter", choices=("asyncio", "uvloop", "rloop", "trio", "blocking"))
    parser.add_argument(
        "--no-observe",
        action="store_true",
        help="experiment: build the engine with observe=False (asyncio and uvloop only)",
    )
    args = parser.parse_args()
    if args.adapter == "asyncio":
        asyncio.run(_asyncio(args.config, not args.no_observe))
    elif args.adapter == "uvloop":
        import uvloop

        uvloop.run(_asyncio(args.config, not args.no_observe))
    elif args.adapter == "rloop":
        import rloop

        with asyncio.Runner(loop_factory=rloop.new_event_loop) as runner:
            runner.run(_asyncio(args.config, not args.no_observe))
    elif args.adapter == "trio":
        import anyio

        anyio.run(_anyio, args.config, backend="trio")
    else:
        _blocking(args.config)


if __name__ == "__main__":
    main()
