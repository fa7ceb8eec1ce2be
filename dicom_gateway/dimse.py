"""DIMSE command sets (PS3.7 9.3 and Annex E): decode a request, encode its response.

Command sets are always Implicit VR Little Endian, group 0000, led by Command Group Length.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from io import BytesIO

from pydicom import Dataset
from pynetdicom.dsutils import decode

from dicom_gateway.header import Header
from dicom_gateway.upper_layer import UpperLayerError

#: Command Field values (PS3.7 E.1-1).
C_STORE_RQ, C_ECHO_RQ = 0x0001, 0x0030
#: Command Data Set Type: no data set follows.
NO_DATA_SET = 0x0101
#: Status codes (PS3.7 C).
UNRECOGNIZED_OPERATION = 0x0211
PROCESSING_FAILURE = 0x0110
#: Error Comment (0000,0902) is LO (PS3.7 E.1-1): at most 64 characters (PS3.5 6.2), of the default
#: repertoire in a command set, no backslash and no control character.
ERROR_COMMENT_MAX_CHARS = 64
_NOT_LO = re.compile(r"[^\x20-\x5b\x5d-\x7e]")


@dataclass(frozen=True)
class Response:
    """What a handler answers a request: the status and, for a non-success status, why, sent as Error
    Comment (0000,0902) (see :func:`error_comment`).  A handler may return a bare status instead."""

    status: int
    comment: str = ""

    @classmethod
    def of(cls, reply: "Response | int") -> "Response":
        return reply if isinstance(reply, Response) else cls(int(reply))


def error_comment(text: str) -> str:
    """``text`` as an Error Comment value (LO, PS3.5 6.2): control characters, backslashes and
    characters outside the default repertoire replaced, at most :data:`ERROR_COMMENT_MAX_CHARS`
    characters (a longer text cut, ending in ``...``)."""
    value = " ".join(_NOT_LO.sub(" ", str(text)).split())
    if len(value) > ERROR_COMMENT_MAX_CHARS:
        value = value[:ERROR_COMMENT_MAX_CHARS - 3].rstrip() + "..."
    return value


#: Command elements a request is read for (PS3.7 E.1-1): tag -> (keyword, VR).
_COMMAND_ELEMENTS = {0x00000002: ("AffectedSOPClassUID", "UI"), 0x00000100: ("CommandField", "US"),
                     0x00000110: ("MessageID", "US"), 0x00000700: ("Priority", "US"),
                     0x00000800: ("CommandDataSetType", "US"), 0x00001000: ("AffectedSOPInstanceUID", "UI")}
_ELEMENT_HEADER = struct.Struct("<HHI")
_US_VALUE = struct.Struct("<H")


def decode_command(data: bytes | memoryview) -> Header | Dataset:
    """The command set of a request; :class:`UpperLayerError` when it cannot be read.

    A plain command set (group 0000 only, the usual elements well formed) is read directly from its
    bytes; anything else goes through pydicom, which reads what it can or fails."""
    command = _plain_command(data)
    if command is not None:
        return command
    try:
        command = decode(BytesIO(data), True, True)
        int(command.CommandField), int(command.MessageID)
    except Exception as exc:  # noqa: BLE001 - any malformed command set aborts the association
        raise UpperLayerError(f"malformed DIMSE command set: {type(exc).__name__}: {exc}") from None
    return command


def _plain_command(data) -> Header | None:
    values, pos, end = {}, 0, len(data)
    while pos < end:
        if end - pos < 8:
            return None
        group, element, length = _ELEMENT_HEADER.unpack_from(data, pos)
        pos += 8
        if group != 0x0000 or length > end - pos:
            return None
        known = _COMMAND_ELEMENTS.get(element)
        if known is not None:
            value = bytes(data[pos:pos + length])
            if known[1] == "US":
                if length != 2:
                    return None
                values[known[0]] = _US_VALUE.unpack(value)[0]
            else:
                values[known[0]] = value.decode("ascii", "replace").strip("\0 ")
        pos += length
    if "CommandField" not in values or "MessageID" not in values:
        return None
    return Header(values)


def has_data_set(command: Dataset) -> bool:
    return int(command.get("CommandDataSetType", NO_DATA_SET)) != NO_DATA_SET


def encode_response(command: Dataset, status: int, comment: str = "") -> bytes:
    """The response command set to ``command`` (C-ECHO-RSP, C-STORE-RSP, ...) with ``status`` and, for
    a non-success status, ``comment`` as Error Comment (0000,0902) (PS3.7 C.4; :func:`error_comment`).

    Written element by element (tags ascending, as PS3.5 7.1 requires): a response is at most seven
    elements, and building a pydicom Dataset to encode it cost more than the rest of a C-STORE's
    protocol handling."""
    comment = error_comment(comment) if int(status) != 0 else ""
    elements = b"".join((
        _uid(0x0002, command.get("AffectedSOPClassUID")),
        _us(0x0100, int(command.CommandField) | 0x8000),
        _us(0x0120, int(command.MessageID)),  # Message ID Being Responded To
        _us(0x0800, NO_DATA_SET),
        _us(0x0900, int(status)),
        _lo(0x0902, comment),
        _uid(0x1000, command.get("AffectedSOPInstanceUID")),
    ))
    return _GROUP_LENGTH.pack(0x0000, 0x0000, 4, len(elements)) + elements


#: Command Field of C-STORE-RQ and Priority MEDIUM (PS3.7 9.3.1.1, E.1-1).
C_STORE_RQ, PRIORITY_MEDIUM = 0x0001, 0x0000
#: Command Data Set Type: a data set follows (any value but 0101H, PS3.7 E.1-1).
DATA_SET_PRESENT = 0x0000


def encode_store_request(sop_class_uid: str, sop_instance_uid: str, message_id: int) -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1), Implicit VR Little Endian, tags ascending."""
    elements = b"".join((
        _uid(0x0002, sop_class_uid),
        _us(0x0100, C_STORE_RQ),
        _us(0x0110, message_id),
        _us(0x0700, PRIORITY_MEDIUM),
        _us(0x0800, DATA_SET_PRESENT),
        _uid(0x1000, sop_instance_uid),
    ))
    return _GROUP_LENGTH.pack(0x0000, 0x0000, 4, len(elements)) + elements


_GROUP_LENGTH = struct.Struct("<HHII")
_US = struct.Struct("<HHIH")


def _us(element: int, value: int) -> bytes:
    """An Implicit VR Little Endian US element of group 0000."""
    return _US.pack(0x0000, element, 2, value)


def _lo(element: int, value: str) -> bytes:
    """An Implicit VR Little Endian LO element of group 0000 (space-padded to even length), or
    nothing for an empty value."""
    if not value:
        return b""
    encoded = value.encode("ascii")
    if len(encoded) % 2:
        encoded += b" "
    return struct.pack("<HHI", 0x0000, element, len(encoded)) + encoded


def _uid(element: int, value: str | None) -> bytes:
    """An Implicit VR Little Endian UI element of group 0000 (NUL-padded to even length), or
    nothing when the request had none."""
    if value is None:
        return b""
    encoded = str(value).encode("ascii")
    if len(encoded) % 2:
        encoded += b"\0"
    return struct.pack("<HHI", 0x0000, element, len(encoded)) + encoded
