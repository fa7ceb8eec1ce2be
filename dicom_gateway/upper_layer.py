"""DICOM Upper Layer PDUs on a blocking socket (PS3.8 9.3): read, write, and split P-DATA-TF.

One association is served by one thread doing blocking reads: a PDU is read whole into one buffer
(``recv_into``, no per-fragment copies) and its PDVs are views into that buffer.  A-ASSOCIATE
PDUs are decoded and encoded with pynetdicom's PDU classes; the data path needs only the fixed
PDU and PDV headers, which are parsed here.
"""
from __future__ import annotations

import socket
import struct
from typing import Iterator

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE

#: PDU types (PS3.8 9.3.1).
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, DATA_TF, RELEASE_RQ, RELEASE_RP, ABORT = range(1, 8)
PDU_NAMES = {ASSOCIATE_RQ: "A-ASSOCIATE-RQ", ASSOCIATE_AC: "A-ASSOCIATE-AC", ASSOCIATE_RJ: "A-ASSOCIATE-RJ",
             DATA_TF: "P-DATA-TF", RELEASE_RQ: "A-RELEASE-RQ", RELEASE_RP: "A-RELEASE-RP", ABORT: "A-ABORT"}

#: A-ABORT provider reasons (PS3.8 9.3.8).
UNRECOGNIZED_PDU, UNEXPECTED_PDU, INVALID_PARAMETER = 0x01, 0x02, 0x06
#: Largest A-ASSOCIATE/A-RELEASE/A-ABORT PDU accepted, and largest P-DATA-TF when ours is unlimited.
MAX_CONTROL_PDU = 1 << 20
MAX_UNLIMITED_PDU = 1 << 27

_HEADER = struct.Struct(">BxI")
_PDV = struct.Struct(">IBB")


class UpperLayerError(Exception):
    """The peer broke the protocol; the association is aborted with ``reason`` (PS3.8 9.3.8)."""

    def __init__(self, message: str, reason: int = INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


class PeerClosed(Exception):
    """The peer closed the connection."""


def read_exact(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    view, received = memoryview(buffer), 0
    while received < size:
        count = sock.recv_into(view[received:], size - received)
        if count == 0:
            raise PeerClosed(f"connection closed after {received} of {size} bytes")
        received += count
    return buffer


def read_pdu(sock: socket.socket, max_data_length: int) -> tuple[int, bytearray]:
    """The next PDU's type and variable field.  ``max_data_length`` is our Maximum Length
    Received for P-DATA-TF (0 = unlimited, still capped at :data:`MAX_UNLIMITED_PDU`)."""
    pdu_type, length = _HEADER.unpack(read_exact(sock, _HEADER.size))
    if pdu_type not in PDU_NAMES:
        raise UpperLayerError(f"unrecognised PDU type 0x{pdu_type:02X}", UNRECOGNIZED_PDU)
    limit = (max_data_length or MAX_UNLIMITED_PDU) if pdu_type == DATA_TF else MAX_CONTROL_PDU
    if length > limit:
        raise UpperLayerError(f"{PDU_NAMES[pdu_type]} of {length} bytes exceeds the maximum of {limit}")
    return pdu_type, read_exact(sock, length)


def pdvs(body: bytearray) -> Iterator[tuple[int, bool, bool, memoryview]]:
    """``(context id, is command, is last fragment, fragment)`` of each PDV item (PS3.8 9.3.5.1)."""
    view, offset = memoryview(body), 0
    while offset < len(view):
        if len(view) - offset < _PDV.size:
            raise UpperLayerError("P-DATA-TF ends inside a PDV item header")
        length, context_id, control = _PDV.unpack_from(view, offset)
        end = offset + 4 + length
        if length < 2 or end > len(view):
            raise UpperLayerError(f"PDV item length {length} does not fit the P-DATA-TF")
        yield context_id, bool(control & 0x01), bool(control & 0x02), view[offset + _PDV.size:end]
        offset = end


def pdu(pdu_type: int, body: bytes) -> bytes:
    return _HEADER.pack(pdu_type, len(body)) + body


def command_pdus(context_id: int, command: bytes, peer_max_length: int) -> list[bytes]:
    """P-DATA-TF PDUs carrying ``command`` in fragments that fit the peer's maximum length."""
    return _pdv_pdus(context_id, command, peer_max_length, 0x01)


def data_pdus(context_id: int, data_set: bytes, peer_max_length: int) -> list[bytes]:
    """P-DATA-TF PDUs carrying a data set in fragments that fit the peer's maximum length."""
    return _pdv_pdus(context_id, data_set, peer_max_length, 0x00)


def _pdv_pdus(context_id: int, payload: bytes, peer_max_length: int, kind: int) -> list[bytes]:
    """One PDV per P-DATA-TF; message control header bit 0 ``kind`` (1 command, 0 data set), bit 1
    on the last fragment (PS3.8 E.2)."""
    room = (peer_max_length - _PDV.size) if peer_max_length else len(payload)
    room = max(room, 1)
    view, out = memoryview(payload), []
    for start in range(0, max(len(payload), 1), room):
        fragment = view[start:start + room]
        control = kind | (0x02 if start + room >= len(payload) else 0x00)
        out.append(pdu(DATA_TF, _PDV.pack(len(fragment) + 2, context_id, control) + fragment))
    return out


RELEASE_RP_PDU = pdu(RELEASE_RP, b"\x00" * 4)


def abort_pdu(source: int, reason: int) -> bytes:
    """A-ABORT: ``source`` 0 service user, 2 service provider (PS3.8 9.3.8)."""
    return pdu(ABORT, bytes((0, 0, source, reason)))


def decode_associate_rq(body: bytearray) -> A_ASSOCIATE:
    """The A-ASSOCIATE request primitive of an A-ASSOCIATE-RQ's variable field."""
    request = A_ASSOCIATE_RQ()
    try:
        request.decode(pdu(ASSOCIATE_RQ, bytes(body)))
        primitive = request.to_primitive()
    except Exception as exc:  # noqa: BLE001 - any malformed item is an invalid PDU
        raise UpperLayerError(f"malformed A-ASSOCIATE-RQ: {type(exc).__name__}: {exc}") from None
    primitive.protocol_version = request.protocol_version
    return primitive


def encode_associate(primitive: A_ASSOCIATE) -> bytes:
    """The A-ASSOCIATE-AC (result 0) or A-ASSOCIATE-RJ PDU for ``primitive``."""
    message = A_ASSOCIATE_AC() if primitive.result == 0 else A_ASSOCIATE_RJ()
    message.from_primitive(primitive)
    return message.encode()
