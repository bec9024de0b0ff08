"""The Redis (RESP) codec: RESP2 requests downstream, RESP2/RESP3 replies upstream.

Properties (docs/configuration.md): ``command`` is the first argument upper-cased, ``key``
the second one when present (bytes that are not UTF-8 map to lone surrogates, so any key
becomes a ``str``). Replies are ordered (FIFO pipelining), there are no request ids and
frames are forwarded untouched.

Commands that cannot share a pooled upstream connection are refused with
``-ERR command X is not supported by the proxy: <reason>`` and the client connection stays
usable: the decoder consumes the whole command and raises a *non-fatal*
``ProtocolError(BAD_REQUEST)``, the core answers it with ``encode_error`` in order. The list
(:data:`NON_POOLABLE_COMMANDS`) and the reasons are in :mod:`.commands`: pub/sub
(SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE and the UNSUBSCRIBE family), MONITOR, SYNC, PSYNC,
REPLCONF, transactions (MULTI, EXEC, DISCARD, WATCH, UNWATCH), blocking commands (BLPOP,
BRPOP, BLMOVE, BRPOPLPUSH, BZPOPMIN, BZPOPMAX, BLMPOP, BZMPOP, WAIT, WAITAOF, and
XREAD / XREADGROUP with BLOCK) and connection state (CLIENT, SELECT, RESET, HELLO, AUTH,
READONLY, READWRITE). QUIT gets ``+OK`` and the connection is closed (a fatal
ProtocolError whose detail is :data:`QUIT_DETAIL`).

A top-level RESP3 push reply (``>``) decodes as a RESPONSE with ``properties["push"] ==
"1"``: it answers no request.

codec_options (all optional positive integers): ``max_array_length`` (elements per request
or reply aggregate, default 4Mi), ``max_nesting_depth`` (reply aggregates, default 64),
``max_inline_size`` (inline command line, default 64KiB like redis); and ``auth``
(``Credentials``): clients must log in to the proxy with ``AUTH`` or ``HELLO <v> AUTH``,
answered by the codec; other commands before that get ``-NOAUTH``, wrong credentials
``-WRONGPASS``. Upstream, ``preamble`` logs in with a cluster's credentials (``AUTH``, or
``HELLO 3 AUTH`` on RESP3 connections); a refusal is a connect failure. An upstream variant
naming ``readonly`` (``"readonly"``, ``"resp3+readonly"``) also sends ``READONLY``, which a
Redis Cluster replica needs before it serves reads.

Sharding (not yet called by the engine): ``split`` splits multi-key commands per target
(split.py, keys.py), ``hash_input`` gives a key's hash tag (slots.py); cluster.py reads
slot maps and MOVED / ASK redirections.
"""

from __future__ import annotations

from metaprotocol.codecs.redis.codec import DEFAULT_OPTIONS, RedisCodec
from metaprotocol.codecs.redis.commands import NON_POOLABLE_COMMANDS, QUIT_DETAIL

__all__ = ["DEFAULT_OPTIONS", "NON_POOLABLE_COMMANDS", "QUIT_DETAIL", "RedisCodec"]
