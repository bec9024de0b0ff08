"""A listener's codec named as ``package.module:Class``, and codecs given by an embedding
program: loaded, checked, and every way a reference can be wrong reported at its path."""

from __future__ import annotations

import copy
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from metaprotocol.codecs.lengthprefixed import LengthPrefixedCodec
from metaprotocol.codecs.registry import (
    BadCodecReference,
    CodecClassNotFound,
    CodecModuleFailed,
    CodecModuleNotFound,
    CodecReferenceError,
    NotACodecClass,
    codec_class_problems,
    get_codec,
    load_reference,
)
from metaprotocol.configfile import ConfigError, load_config, parse_config
from metaprotocol.core.codec import Side
from metaprotocol.core.events import Accepted, DataReceived
from metaprotocol.core.outputs import OpenUpstream
from metaprotocol.core.proxy import Proxy
from metaprotocol.testing.playbook import Playbook
from tests.core.helpers import req

HERE = __name__  # how this module is imported, so references to it resolve to it


class GoodCodec(LengthPrefixedCodec):
    """The tutorial codec under another name, with one option it refuses."""

    name = "good"

    def __init__(self, side: Side, options: Mapping[str, Any], max_message_size: int) -> None:
        if "bad" in options:
            raise ValueError("bad: not an option of the good codec")
        super().__init__(side, {}, max_message_size)


class Holder:
    Inner: ClassVar[type[GoodCodec]] = GoodCodec


def not_a_class() -> None:
    pass


INSTANCE = GoodCodec(Side.DOWNSTREAM, {}, 1024)


class MissingAttributes:
    name = ""

    def __init__(self, side: Side, options: Mapping[str, Any], max_message_size: int) -> None:
        pass


class NoMethods:
    name = "nomethods"
    ordering = GoodCodec.ordering
    supports_mutation = False


def data(codec: str, *more: dict[str, Any]) -> dict[str, Any]:
    return {
        "listeners": [
            {"name": "main", "address": "127.0.0.1:0", "codec": codec,
             "routes": [{"name": "all", "route": {"cluster": "up"}}]},
            *more,
        ],
        "clusters": [{"name": "up", "endpoints": ["10.0.0.1:9000"]}],
    }  # fmt: skip


def errors(config: Mapping[str, Any], **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(config, **kwargs)
    return info.value.errors


# --- loading ----------------------------------------------------------------------------


def test_a_codec_class_is_loaded_by_reference() -> None:
    reference = f"{HERE}:GoodCodec"
    config = parse_config(data(reference))
    assert config.listeners[0].codec == reference
    assert get_codec(reference) is GoodCodec
    assert load_reference(f"{HERE}:Holder.Inner") is GoodCodec  # a nested class


def test_the_referenced_class_checks_its_options() -> None:
    config = data(f"{HERE}:GoodCodec")
    config["listeners"][0]["codec_options"] = {"bad": 1}
    assert errors(config) == ["listeners[0].codec_options.bad: not an option of the good codec"]


def test_a_proxy_runs_a_referenced_codec() -> None:
    pb = Playbook(Proxy(parse_config(data(f"{HERE}:GoodCodec")), now=0.0))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(7))
    pb << OpenUpstream(-1, "10.0.0.1", 9000)


def test_a_reference_in_a_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(
        "listeners:\n"
        f"  - {{name: main, address: '127.0.0.1:0', codec: '{HERE}:GoodCodec',\n"
        "     routes: [{name: all, route: {cluster: up}}]}\n"
        "clusters: [{name: up, endpoints: ['10.0.0.1:9000']}]\n"
    )
    assert load_config(path).listeners[0].codec == f"{HERE}:GoodCodec"


# --- every way a reference is wrong ---------------------------------------------------------

WRONG: list[tuple[str, type[CodecReferenceError], str]] = [
    ("mymodule:", BadCodecReference, "'mymodule:' is not of the form package.module:Class"),
    (":GoodCodec", BadCodecReference, "is not of the form package.module:Class"),
    ("my module:Codec", BadCodecReference, "is not of the form package.module:Class"),
    ("a:b:C", BadCodecReference, "is not of the form package.module:Class"),
    ("pkg.1mod:Codec", BadCodecReference, "is not of the form package.module:Class"),
    (
        "no_such_package_zq.codec:Codec",
        CodecModuleNotFound,
        "codec module 'no_such_package_zq.codec' not found (it must be importable: "
        "installed, or in a directory on PYTHONPATH)",
    ),
    (f"{HERE}.sub:Codec", CodecModuleNotFound, f"codec module '{HERE}.sub' not found"),
    (
        f"{HERE}:GodCodec",
        CodecClassNotFound,
        f"codec module '{HERE}' has no attribute 'GodCodec' (did you mean 'GoodCodec'?)",
    ),
    (f"{HERE}:Holder.Outer", CodecClassNotFound, "has no attribute 'Holder.Outer'"),
    (
        f"{HERE}:not_a_class",
        NotACodecClass,
        f"{HERE}:not_a_class is not a codec class: expected a codec class, got the function",
    ),
    (f"{HERE}:INSTANCE", NotACodecClass, "got an instance of GoodCodec"),
    (
        f"{HERE}:MissingAttributes",
        NotACodecClass,
        "'name' must be a non-empty str, got ''; 'ordering' must be an Ordering, got None; "
        "'supports_mutation' must be a bool, got None; missing methods decode, encode, "
        "encode_error, encode_heartbeat_reply",
    ),
    (f"{HERE}:NoMethods", NotACodecClass, "missing methods decode, encode"),
]


@pytest.mark.parametrize(("reference", "kind", "message"), WRONG, ids=[w[0] for w in WRONG])
def test_a_wrong_reference_is_a_typed_error(
    reference: str, kind: type[CodecReferenceError], message: str
) -> None:
    with pytest.raises(kind) as info:
        get_codec(reference)
    assert message in str(info.value)
    assert info.value.reference == reference


@pytest.mark.parametrize(("reference", "kind", "message"), WRONG, ids=[w[0] for w in WRONG])
def test_a_wrong_reference_is_reported_at_the_listeners_codec(
    reference: str, kind: type[CodecReferenceError], message: str
) -> None:
    second = {"name": "two", "address": "127.0.0.1:0", "codec": reference}
    (first_error, second_error) = errors(data(reference, second))
    assert first_error.startswith("listeners[0].codec: ") and message in first_error
    assert second_error.startswith("listeners[1].codec: ") and message in second_error


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "import no_such_dependency_zq\n",
            "failed to import: No module named 'no_such_dependency_zq'",
        ),
        ("raise RuntimeError('no config')\n", "failed to import: RuntimeError: no config"),
        ("def broken(:\n", "failed to import: SyntaxError"),
    ],
)
def test_a_module_that_fails_to_import_is_reported(
    module_dir: Path, source: str, message: str
) -> None:
    name = f"codec_{uuid.uuid4().hex}"
    (module_dir / f"{name}.py").write_text(source)
    with pytest.raises(CodecModuleFailed, match=message):
        get_codec(f"{name}:Codec")
    assert sys.modules.get(name) is None
    (error,) = errors(data(f"{name}:Codec"))
    assert error.startswith(f"listeners[0].codec: codec module '{name}' failed to import")


def test_a_module_found_on_the_path(module_dir: Path) -> None:
    name = f"codec_{uuid.uuid4().hex}"
    (module_dir / f"{name}.py").write_text(
        "from metaprotocol.codecs.lengthprefixed import LengthPrefixedCodec\n"
        "class MyCodec(LengthPrefixedCodec):\n"
        "    name = 'mine'\n"
    )
    factory = get_codec(f"{name}:MyCodec")
    assert factory.name == "mine" and codec_class_problems(factory) == []


def test_a_class_named_with_a_dot_gets_a_hint() -> None:
    (error,) = errors(data(f"{HERE}.GoodCodec"))
    assert error == (
        f"listeners[0].codec: unknown codec '{HERE}.GoodCodec' (known: dubbo, http1, "
        "lengthprefixed, redis, thrift, trpc); to load a codec class, write "
        f"'{HERE}:GoodCodec'"
    )


def test_every_builtin_codec_is_a_codec_class() -> None:
    for name in ("lengthprefixed", "dubbo", "thrift", "http1", "redis", "trpc"):
        assert codec_class_problems(get_codec(name)) == [], name


# --- codecs given by an embedding program ------------------------------------------------


class MineCodec(LengthPrefixedCodec):
    name = "mine"


def test_given_codecs_come_before_the_registry_and_do_not_replace_it() -> None:
    both = data("mine", {"name": "cache", "address": "127.0.0.1:0", "codec": "redis",
                         "routes": [{"name": "all", "route": {"cluster": "up"}}]})  # fmt: skip
    config = parse_config(copy.deepcopy(both), codecs={"mine": MineCodec})
    assert [lc.codec for lc in config.listeners] == ["mine", "redis"]
    (error,) = errors(both)  # without them, "mine" is unknown
    assert error.startswith("listeners[0].codec: unknown codec 'mine'")
    (error,) = errors(data("mien"), codecs={"mine": MineCodec})
    assert error == "listeners[0].codec: unknown codec 'mien' (did you mean 'mine'?)"


def test_a_proxy_runs_given_codecs(tmp_path: Path) -> None:
    path = tmp_path / "proxy.json"
    path.write_text(
        '{"listeners": [{"name": "main", "address": "127.0.0.1:0", "codec": "mine",'
        ' "routes": [{"name": "all", "route": {"cluster": "up"}}]}],'
        ' "clusters": [{"name": "up", "endpoints": ["10.0.0.1:9000"]}]}'
    )
    codecs = {"mine": MineCodec}
    pb = Playbook(Proxy(load_config(path, codecs=codecs), now=0.0, codecs=codecs))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, req(7))
    pb << OpenUpstream(-1, "10.0.0.1", 9000)
