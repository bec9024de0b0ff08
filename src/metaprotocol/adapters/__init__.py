"""IO adapters binding the sans-IO core to sockets: ``asyncio`` (and uvloop), ``anyio`` (trio or
asyncio) and ``blocking`` (selectors). Each translates the core's instructions one to one;
what is not IO is shared (``serving``, ``dispatcher``, ``observers``, ``external``,
``jobs``, ``admin_core``, ``binding``; docs/architecture.md, "Adapters").

Embedding entry points: ``metaprotocol.adapters.asyncio.serve``,
``metaprotocol.adapters.anyio.serve`` and ``metaprotocol.adapters.blocking.serve_forever``.
Submodules are imported on demand so that using one adapter never imports another's loop.
"""

from __future__ import annotations

__all__: list[str] = []
