"""An Apache ``thrift`` (the reference Python library) client and server for ``Calculator``.

No code generator is needed: both speak the sample IDL (``metaprotocol.samples.thrift_server``)
through the library's own protocol and transport classes, field by field, the way generated
code does. The server implements ``add``, ``echo`` and ``whoami`` and answers any other
method with ``TApplicationException(UNKNOWN_METHOD)``.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

from thrift.protocol import TBinaryProtocol, TCompactProtocol
from thrift.Thrift import TApplicationException, TMessageType, TType
from thrift.transport import TSocket, TTransport

from tests.e2e.servers import DEADLINE, MiniServer

__all__ = ["ApacheCalculatorClient", "apache_calculator_server"]

Field = tuple[int, int, Any]  # (field id, TType, value)


def _protocol(sock: TSocket.TSocket, transport: str, protocol: str) -> tuple[Any, Any]:
    trans: Any = (
        TTransport.TFramedTransport(sock)
        if transport == "framed"
        else TTransport.TBufferedTransport(sock)
    )
    prot: Any = (
        TBinaryProtocol.TBinaryProtocol(trans)
        if protocol == "binary"
        else TCompactProtocol.TCompactProtocol(trans)
    )
    return trans, prot


def _write_struct(prot: Any, name: str, fields: list[Field]) -> None:
    prot.writeStructBegin(name)
    for fid, ttype, value in fields:
        prot.writeFieldBegin(f"f{fid}", ttype, fid)
        if ttype == TType.I32:
            prot.writeI32(value)
        elif ttype == TType.STRING:
            prot.writeString(value)
        else:
            raise ValueError(f"unsupported type {ttype}")
        prot.writeFieldEnd()
    prot.writeFieldStop()
    prot.writeStructEnd()


def _read_struct(prot: Any) -> dict[int, Any]:
    """Fields by id; i32 and string read, anything else skipped."""
    values: dict[int, Any] = {}
    prot.readStructBegin()
    while True:
        _, ttype, fid = prot.readFieldBegin()
        if ttype == TType.STOP:
            break
        if ttype == TType.I32:
            values[fid] = prot.readI32()
        elif ttype == TType.STRING:
            values[fid] = prot.readString()
        else:
            prot.skip(ttype)
        prot.readFieldEnd()
    prot.readStructEnd()
    return values


class ApacheCalculatorClient:
    """A blocking client over Apache thrift's TSocket; ``call(method, fields)`` -> field 0."""

    def __init__(self, port: int, transport: str, protocol: str) -> None:
        self._sock = TSocket.TSocket("127.0.0.1", port)
        self._sock.setTimeout(DEADLINE * 1000)
        self._trans, self._prot = _protocol(self._sock, transport, protocol)
        self._trans.open()
        self._seqid = 0

    def close(self) -> None:
        self._trans.close()

    def call(self, method: str, fields: list[Field]) -> Any:
        """Call ``method``; return the result (field 0), raise TApplicationException."""
        self._seqid += 1
        prot = self._prot
        prot.writeMessageBegin(method, TMessageType.CALL, self._seqid)
        _write_struct(prot, f"{method}_args", fields)
        prot.writeMessageEnd()
        self._trans.flush()
        name, mtype, seqid = prot.readMessageBegin()
        if mtype == TMessageType.EXCEPTION:
            error = TApplicationException()
            error.read(prot)
            prot.readMessageEnd()
            raise error
        assert (name, mtype, seqid) == (method, TMessageType.REPLY, self._seqid)
        result = _read_struct(prot)
        prot.readMessageEnd()
        return result.get(0)


def _serve_calculator(conn: socket.socket, name: str, transport: str, protocol: str) -> None:
    sock = TSocket.TSocket()
    sock.handle = conn
    trans, prot = _protocol(sock, transport, protocol)
    while True:
        try:
            method, mtype, seqid = prot.readMessageBegin()
        except (TTransport.TTransportException, EOFError, OSError):
            return
        args = _read_struct(prot)
        prot.readMessageEnd()
        if mtype == TMessageType.ONEWAY:
            continue
        result: list[Field]
        if method == "add":
            result = [(0, TType.I32, args.get(1, 0) + args.get(2, 0))]
        elif method == "echo":
            result = [(0, TType.STRING, args.get(1, ""))]
        elif method == "whoami":
            result = [(0, TType.STRING, name)]
        else:
            prot.writeMessageBegin(method, TMessageType.EXCEPTION, seqid)
            TApplicationException(
                TApplicationException.UNKNOWN_METHOD, f"unknown method {method}"
            ).write(prot)
            prot.writeMessageEnd()
            trans.flush()
            continue
        prot.writeMessageBegin(method, TMessageType.REPLY, seqid)
        _write_struct(prot, f"{method}_result", result)
        prot.writeMessageEnd()
        trans.flush()


@contextlib.contextmanager
def apache_calculator_server(name: str, transport: str, protocol: str) -> Iterator[int]:
    """An Apache-thrift Calculator (add, echo, whoami) on a free port; yields the port."""
    with MiniServer(lambda conn: _serve_calculator(conn, name, transport, protocol)) as server:
        yield server.port
