"""IO adapters binding the sans-IO core to sockets: ``asyncio`` (and uvloop), ``anyio`` (trio or
asyncio) and ``blocking`` (selectors). Each translates the core's instructions one to one
and shares the dispatcher in ``metaprotocol.adapters.dispatch``.

Embedding entry points: ``metaprotocol.adapters.asyncio.serve``,
``metaprotocol.adapters.anyio.serve`` and ``metaprotocol.adapters.blocking.serve_forever``.
Submodules are imported on demand so that using one adapter never imports another's loop.
"""

from __future__ import annotations

__all__: list[str] = []
