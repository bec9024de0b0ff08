"""Optional codec hooks are resolved once per listener into a ``Capabilities`` record."""

from __future__ import annotations

from metaprotocol.codecs.registry import get_codec
from metaprotocol.core.codec import Capabilities, capabilities_of
from metaprotocol.core.proxy import Proxy

from .helpers import config


def test_each_codec_declares_the_hooks_it_has() -> None:
    assert capabilities_of(get_codec("lengthprefixed")) == Capabilities()
    http1 = capabilities_of(get_codec("http1"))
    assert http1.interim_reply and http1.decode_eof and http1.reply_status
    assert not http1.decode_many and not http1.preamble
    redis = capabilities_of(get_codec("redis"))
    assert redis.decode_many and redis.preamble and redis.reply_status
    assert not redis.interim_reply and not redis.decode_eof
    dubbo = capabilities_of(get_codec("dubbo"))
    assert dubbo == Capabilities(reply_status=True, probe=True)


def test_a_listener_keeps_its_codecs_capabilities() -> None:
    proxy = Proxy(config(codec="redis"), now=0.0)
    (listener,) = proxy.runtime.listeners.values()
    assert listener.caps == capabilities_of(get_codec("redis"))
    assert listener.batchable  # decode_many, no filters, plain routes: runs may merge
