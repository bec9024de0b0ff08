"""Which Redis commands the proxy refuses because they cannot share a pooled upstream connection.

The proxy multiplexes many client connections over a few upstream connections and matches
replies to requests in FIFO order. A command is refused (with a ``-ERR`` naming the reason,
the client connection stays open) when it would

- turn the connection into a push stream (pub/sub, MONITOR, replication),
- park the connection, so every request pipelined behind it on the shared connection waits
  (blocking pops, WAIT, XREAD/XREADGROUP with BLOCK),
- change connection state that other clients would inherit (transactions, WATCH, SELECT,
  AUTH, HELLO protocol switching, CLIENT ... including CLIENT REPLY OFF, which breaks FIFO
  matching, RESET, READONLY / READWRITE).

With ``codec_options.auth`` AUTH and ``HELLO <v> AUTH <user> <pass>`` are answered by the
proxy too (the login to the proxy, see codec.py); without it they are refused.

HELLO (without AUTH or SETNAME) is answered by the proxy itself: a RESP3 client (``HELLO 3``,
what redis-py 5+ sends by default) gets RESP3 upstream connections of its own, opened with
``HELLO 3``; RESP2 clients share the others.

QUIT is answered by the proxy itself: ``+OK`` and the client connection is closed (the
decoder raises a fatal ``ProtocolError`` whose detail is :data:`QUIT_DETAIL`; ``encode_error``
turns that detail into ``+OK``). PING is forwarded like any other command.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

__all__ = [
    "AUTH_ARITY_DETAIL",
    "CONDITIONALLY_BLOCKING_COMMANDS",
    "NON_POOLABLE_COMMANDS",
    "NOPROTO_DETAIL",
    "QUIT_DETAIL",
    "refusal_reason",
    "uses_block_option",
]

AUTH_ARITY_DETAIL: Final = "wrong number of arguments for 'auth' command"
"""The ProtocolError detail for an AUTH that is neither ``AUTH pass`` nor ``AUTH user pass``."""

NOPROTO_DETAIL: Final = "unsupported protocol version"
"""The ProtocolError detail for ``HELLO <v>`` with v not 2 or 3; answered ``-NOPROTO``."""

QUIT_DETAIL: Final = "client sent QUIT"
"""The ProtocolError detail for QUIT; ``RedisCodec.encode_error`` answers it with ``+OK``."""

_PUBSUB: Final = "pub/sub needs a dedicated connection"
_BLOCKING: Final = "blocking commands would stall the shared upstream connection"
_STATE: Final = "it changes connection state shared with other clients"
_TRANSACTION: Final = "transactions need a dedicated connection"
_STREAMING: Final = "it turns the connection into a stream"

# One entry per refused command (upper case) with the reason sent to the client.
# NON_POOLABLE_COMMANDS below is derived from it: keep the two in one place.
_REFUSED: dict[str, str] = {
    # pub/sub: the connection switches to push mode
    "SUBSCRIBE": _PUBSUB,
    "PSUBSCRIBE": _PUBSUB,
    "SSUBSCRIBE": _PUBSUB,
    "UNSUBSCRIBE": _PUBSUB,
    "PUNSUBSCRIBE": _PUBSUB,
    "SUNSUBSCRIBE": _PUBSUB,
    # the connection becomes a one-way stream
    "MONITOR": _STREAMING,
    "SYNC": _STREAMING,
    "PSYNC": _STREAMING,
    "REPLCONF": _STREAMING,
    # transactions and optimistic locking live on the connection
    "MULTI": _TRANSACTION,
    "EXEC": _TRANSACTION,
    "DISCARD": _TRANSACTION,
    "WATCH": _TRANSACTION,
    "UNWATCH": _TRANSACTION,
    # blocking commands
    "BLPOP": _BLOCKING,
    "BRPOP": _BLOCKING,
    "BLMOVE": _BLOCKING,
    "BRPOPLPUSH": _BLOCKING,
    "BZPOPMIN": _BLOCKING,
    "BZPOPMAX": _BLOCKING,
    "BLMPOP": _BLOCKING,
    "BZMPOP": _BLOCKING,
    "WAIT": _BLOCKING,
    "WAITAOF": _BLOCKING,
    # connection state
    "CLIENT": _STATE,
    "SELECT": _STATE,
    "RESET": _STATE,
    "HELLO": _STATE,
    "AUTH": _STATE,
    "READONLY": _STATE,
    "READWRITE": _STATE,
}

NON_POOLABLE_COMMANDS: frozenset[str] = frozenset(_REFUSED)
"""Commands refused outright (see the module docstring for why each group is here)."""

CONDITIONALLY_BLOCKING_COMMANDS: frozenset[str] = frozenset({"XREAD", "XREADGROUP"})
"""Refused only when they carry a ``BLOCK`` option before ``STREAMS``."""


def refusal_reason(command: str) -> str:
    """The ``-ERR`` text for a refused command."""
    reason = _REFUSED.get(command, _BLOCKING)
    return f"command {command} is not supported by the proxy: {reason}"


def uses_block_option(arguments: Sequence[bytes]) -> bool:
    """Whether XREAD / XREADGROUP arguments (after the command name) include ``BLOCK``.

    Options come before the ``STREAMS`` keyword and some take values (``COUNT n``,
    ``GROUP group consumer``), so a group, consumer or key named "block" does not count.
    """
    index = 0
    while index < len(arguments):
        option = arguments[index].upper()
        if option == b"BLOCK":
            return True
        if option == b"STREAMS":
            return False
        index += _OPTION_VALUES.get(option, 0) + 1
    return False


_OPTION_VALUES: Final = {b"COUNT": 1, b"GROUP": 2}  # how many values follow each XREAD option
