"""Codec lookup by name: the built-ins, third-party codecs from the ``metaprotocol.codecs``
entry-point group, and any codec class named as ``package.module:Class``.

A name with a colon is a reference: the module is imported and the class taken from it
(``my_codecs.trpc:TrpcCodec``), so a codec needs no installed package, only a module Python
can import (installed, or on ``PYTHONPATH``). Every way that fails raises one of the
``CodecReferenceError`` subclasses below, with a message meant for the config's author.
"""

from __future__ import annotations

import difflib
import importlib
import re
from importlib.metadata import entry_points

from metaprotocol.core.codec import CodecFactory, Ordering

__all__ = [
    "BUILTIN_CODECS",
    "BadCodecReference",
    "CodecClassNotFound",
    "CodecModuleFailed",
    "CodecModuleNotFound",
    "CodecReferenceError",
    "NotACodecClass",
    "UnknownCodecError",
    "codec_class_problems",
    "codec_names",
    "get_codec",
    "is_reference",
    "load_reference",
]

BUILTIN_CODECS: dict[str, str] = {
    "lengthprefixed": "metaprotocol.codecs.lengthprefixed:LengthPrefixedCodec",
    "dubbo": "metaprotocol.codecs.dubbo:DubboCodec",
    "thrift": "metaprotocol.codecs.thrift:ThriftCodec",
    "http1": "metaprotocol.codecs.http1:Http1Codec",
    "redis": "metaprotocol.codecs.redis:RedisCodec",
    "trpc": "metaprotocol.codecs.trpc:TrpcCodec",
}

_cache: dict[str, CodecFactory] = {}

# package.module:Class, each part a Python identifier; the class may be nested (Outer.Inner).
_DOTTED = r"[^\W\d]\w*(?:\.[^\W\d]\w*)*"
_REFERENCE_RE = re.compile(rf"(?P<module>{_DOTTED}):(?P<attr>{_DOTTED})")
_METHODS = ("decode", "encode", "encode_error", "encode_heartbeat_reply")


class UnknownCodecError(LookupError):
    pass


class CodecReferenceError(LookupError):
    """A ``module:Class`` codec reference that cannot be used. ``reference`` is the text as
    written; the message says what is wrong and how to fix it."""

    def __init__(self, reference: str, message: str) -> None:
        super().__init__(message)
        self.reference = reference


class BadCodecReference(CodecReferenceError):
    """Not of the form ``package.module:Class``."""


class CodecModuleNotFound(CodecReferenceError):
    """The module (or a package on its path) does not exist."""


class CodecModuleFailed(CodecReferenceError):
    """The module exists but raised while being imported (its own import, a syntax error)."""


class CodecClassNotFound(CodecReferenceError):
    """The module has no attribute of that name."""


class NotACodecClass(CodecReferenceError):
    """The attribute is not a codec class (see ``codec_class_problems``)."""


def is_reference(name: str) -> bool:
    """Whether a listener's ``codec`` names a class (``module:Class``) rather than a codec."""
    return ":" in name


def codec_class_problems(obj: object) -> list[str]:
    """Why ``obj`` is not a codec class, or ``[]``: a class with ``name`` (a non-empty str),
    ``ordering`` (an ``Ordering``), ``supports_mutation`` (a bool) and the four methods of
    ``metaprotocol.core.codec.Codec`` (or slots its instances fill in), called as
    ``cls(side, options, max_message_size)``."""
    if not isinstance(obj, type):
        return [f"expected a codec class, got {_kind(obj)}"]
    problems: list[str] = []
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not name:
        problems.append(f"'name' must be a non-empty str, got {name!r}")
    ordering = getattr(obj, "ordering", None)
    if not isinstance(ordering, Ordering):
        problems.append(f"'ordering' must be an Ordering, got {ordering!r}")
    mutation = getattr(obj, "supports_mutation", None)
    if not isinstance(mutation, bool):
        problems.append(f"'supports_mutation' must be a bool, got {mutation!r}")
    missing = [m for m in _METHODS if not hasattr(obj, m)]  # a method, or a slot (Redis)
    if missing:
        problems.append(f"missing method{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    return problems


def load_reference(reference: str) -> CodecFactory:
    """Import the codec class ``reference`` (``package.module:Class``) names, checked."""
    m = _REFERENCE_RE.fullmatch(reference.strip())
    if m is None:
        raise BadCodecReference(
            reference,
            f"codec reference {reference!r} is not of the form package.module:Class",
        )
    module_name, attr = m["module"], m["attr"]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise CodecModuleNotFound(
                reference,
                f"codec module {module_name!r} not found (it must be importable: "
                "installed, or in a directory on PYTHONPATH)",
            ) from None
        raise CodecModuleFailed(
            reference, f"codec module {module_name!r} failed to import: {exc}"
        ) from exc
    except Exception as exc:  # whatever the module raised while running
        raise CodecModuleFailed(
            reference,
            f"codec module {module_name!r} failed to import: {type(exc).__name__}: {exc}",
        ) from exc
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CodecClassNotFound(
                reference,
                f"codec module {module_name!r} has no attribute {attr!r}{_close(obj, part)}",
            ) from None
    problems = codec_class_problems(obj)
    if problems:
        raise NotACodecClass(reference, f"{reference} is not a codec class: {'; '.join(problems)}")
    factory: CodecFactory = obj  # type: ignore[assignment]  # checked just above
    return factory


def _kind(obj: object) -> str:
    if callable(obj):
        return f"the {type(obj).__name__} {getattr(obj, '__qualname__', obj)!r}"
    return f"an instance of {type(obj).__qualname__}"


def _close(obj: object, name: str) -> str:
    names = [n for n in dir(obj) if not n.startswith("_")]
    close = difflib.get_close_matches(name, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _load(target: str) -> CodecFactory:
    module_name, _, attr = target.partition(":")
    factory: CodecFactory = getattr(importlib.import_module(module_name), attr)
    return factory


def codec_names() -> list[str]:
    names = set(BUILTIN_CODECS)
    names.update(ep.name for ep in entry_points(group="metaprotocol.codecs"))
    return sorted(names)


def get_codec(name: str) -> CodecFactory:
    """The codec class for a listener's ``codec``: a built-in or entry-point name, or a
    ``module:Class`` reference. Raises ``UnknownCodecError`` or a ``CodecReferenceError``."""
    factory = _cache.get(name)
    if factory is not None:
        return factory
    target = BUILTIN_CODECS.get(name)
    if target is not None:
        factory = _load(target)
    elif is_reference(name):
        factory = load_reference(name)
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
