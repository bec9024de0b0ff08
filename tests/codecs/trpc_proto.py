"""The official tRPC protobuf messages, built with google.protobuf (not with our helper).

The message and field definitions are those of trpc-group/trpc ``trpc/trpc.proto`` (package
``trpc``): ``RequestProtocol``, ``ResponseProtocol`` and the stream metas. They are declared
here as a descriptor, so google.protobuf serialises and parses them; the tests' tRPC peers and
the helper's property tests use them as the independent oracle. The golden vectors pin them.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = [
    "CloseMeta",
    "FeedBackMeta",
    "InitMeta",
    "InitRequestMeta",
    "InitResponseMeta",
    "RequestProtocol",
    "ResponseProtocol",
]

_F = descriptor_pb2.FieldDescriptorProto
_U32 = _F.TYPE_UINT32
_I32 = _F.TYPE_INT32
_BYTES = _F.TYPE_BYTES
_STRING = _F.TYPE_STRING
_MSG = _F.TYPE_MESSAGE
_MAP = "map"

# (message name, [(field name, number, type or MAP or nested message name)])
_MESSAGES: list[tuple[str, list[tuple[str, int, Any]]]] = [
    ("RequestProtocol", [
        ("version", 1, _U32), ("call_type", 2, _U32), ("request_id", 3, _U32),
        ("timeout", 4, _U32), ("caller", 5, _BYTES), ("callee", 6, _BYTES), ("func", 7, _BYTES),
        ("message_type", 8, _U32), ("trans_info", 9, _MAP), ("content_type", 10, _U32),
        ("content_encoding", 11, _U32), ("attachment_size", 12, _U32),
    ]),
    ("ResponseProtocol", [
        ("version", 1, _U32), ("call_type", 2, _U32), ("request_id", 3, _U32),
        ("ret", 4, _I32), ("func_ret", 5, _I32), ("error_msg", 6, _BYTES),
        ("message_type", 7, _U32), ("trans_info", 8, _MAP), ("content_type", 9, _U32),
        ("content_encoding", 10, _U32), ("attachment_size", 12, _U32),
    ]),
    ("TrpcStreamInitRequestMeta", [
        ("caller", 1, _BYTES), ("callee", 2, _BYTES), ("func", 3, _BYTES),
        ("message_type", 4, _U32), ("trans_info", 5, _MAP),
    ]),
    ("TrpcStreamInitResponseMeta", [("ret", 1, _I32), ("error_msg", 2, _BYTES)]),
    ("TrpcStreamInitMeta", [
        ("request_meta", 1, ".trpc.TrpcStreamInitRequestMeta"),
        ("response_meta", 2, ".trpc.TrpcStreamInitResponseMeta"),
        ("init_window_size", 3, _U32), ("content_type", 4, _U32),
        ("content_encoding", 5, _U32),
    ]),
    ("TrpcStreamFeedBackMeta", [("window_size_increment", 1, _U32)]),
    ("TrpcStreamCloseMeta", [
        ("close_type", 1, _I32), ("ret", 2, _I32), ("msg", 3, _BYTES),
        ("message_type", 4, _U32), ("trans_info", 5, _MAP), ("func_ret", 6, _I32),
    ]),
]  # fmt: skip


def _build() -> dict[str, Any]:
    file = descriptor_pb2.FileDescriptorProto(name="tests_trpc.proto", package="trpc")
    file.syntax = "proto3"
    for name, fields in _MESSAGES:
        message = file.message_type.add(name=name)
        for field_name, number, kind in fields:
            field = message.field.add(name=field_name, number=number, label=_F.LABEL_OPTIONAL)
            if kind == _MAP:
                entry = message.nested_type.add(name="TransInfoEntry")
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, type=_STRING, label=_F.LABEL_OPTIONAL)
                entry.field.add(name="value", number=2, type=_BYTES, label=_F.LABEL_OPTIONAL)
                field.label = _F.LABEL_REPEATED
                field.type = _MSG
                field.type_name = f".trpc.{name}.TransInfoEntry"
            elif isinstance(kind, str):
                field.type = _MSG
                field.type_name = kind
            else:
                field.type = kind
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"trpc.{name}"))
        for name, _ in _MESSAGES
    }


_CLASSES = _build()
RequestProtocol: Any = _CLASSES["RequestProtocol"]
ResponseProtocol: Any = _CLASSES["ResponseProtocol"]
InitRequestMeta: Any = _CLASSES["TrpcStreamInitRequestMeta"]
InitResponseMeta: Any = _CLASSES["TrpcStreamInitResponseMeta"]
InitMeta: Any = _CLASSES["TrpcStreamInitMeta"]
FeedBackMeta: Any = _CLASSES["TrpcStreamFeedBackMeta"]
CloseMeta: Any = _CLASSES["TrpcStreamCloseMeta"]
