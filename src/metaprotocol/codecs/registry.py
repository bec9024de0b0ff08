"""Codec lookup by name: the built-ins, then third-party codecs from the
``metaprotocol.codecs`` entry-point group."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from metaprotocol.core.codec import CodecFactory

__all__ = ["BUILTIN_CODECS", "UnknownCodecError", "codec_names", "get_codec"]

BUILTIN_CODECS: dict[str, str] = {
    "lengthprefixed": "metaprotocol.codecs.lengthprefixed:LengthPrefixedCodec",
    "dubbo": "metaprotocol.codecs.dubbo:DubboCodec",
    "thrift": "metaprotocol.codecs.thrift:ThriftCodec",
    "http1": "metaprotocol.codecs.http1:Http1Codec",
    "redis": "metaprotocol.codecs.redis:RedisCodec",
    "trpc": "metaprotocol.codecs.trpc:TrpcCodec",
}

_cache: dict[str, CodecFactory] = {}


class UnknownCodecError(LookupError):
    pass


def _load(target: str) -> CodecFactory:
    module_name, _, attr = target.partition(":")
    factory: CodecFactory = getattr(importlib.import_module(module_name), attr)
    return factory


def codec_names() -> list[str]:
    names = set(BUILTIN_CODECS)
    names.update(ep.name for ep in entry_points(group="metaprotocol.codecs"))
    return sorted(names)


def get_codec(name: str) -> CodecFactory:
    factory = _cache.get(name)
    if factory is not None:
        return factory
    target = BUILTIN_CODECS.get(name)
    if target is not None:
        factory = _load(target)
    else:
        for ep in entry_points(group="metaprotocol.codecs"):
            if ep.name == name:
                factory = ep.load()
                break
        else:
            known = ", ".join(codec_names())
            raise UnknownCodecError(f"unknown codec {name!r} (known: {known})")
    _cache[name] = factory
    return factory
