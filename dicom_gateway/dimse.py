"""DIMSE command sets (PS3.7 9.3 and Annex E): decode a request, encode its response.

Command sets are always Implicit VR Little Endian, group 0000, led by Command Group Length.
"""
from __future__ import annotations

import struct
from io import BytesIO

from pydicom import Dataset
from pynetdicom.dsutils import decode, encode

from dicom_gateway.upper_layer import UpperLayerError

#: Command Field values (PS3.7 E.1-1).
C_STORE_RQ, C_ECHO_RQ = 0x0001, 0x0030
#: Command Data Set Type: no data set follows.
NO_DATA_SET = 0x0101
#: Status codes (PS3.7 C).
UNRECOGNIZED_OPERATION = 0x0211
PROCESSING_FAILURE = 0x0110


def decode_command(data: bytes | memoryview) -> Dataset:
    """The command set of a request; :class:`UpperLayerError` when it cannot be read."""
    try:
        command = decode(BytesIO(data), True, True)
        int(command.CommandField), int(command.MessageID)
    except Exception as exc:  # noqa: BLE001 - any malformed command set aborts the association
        raise UpperLayerError(f"malformed DIMSE command set: {type(exc).__name__}: {exc}") from None
    return command


def has_data_set(command: Dataset) -> bool:
    return int(command.get("CommandDataSetType", NO_DATA_SET)) != NO_DATA_SET


def encode_response(command: Dataset, status: int) -> bytes:
    """The response command set to ``command`` (C-ECHO-RSP, C-STORE-RSP, ...) with ``status``."""
    response = Dataset()
    if "AffectedSOPClassUID" in command:
        response.AffectedSOPClassUID = command.AffectedSOPClassUID
    response.CommandField = int(command.CommandField) | 0x8000
    response.MessageIDBeingRespondedTo = int(command.MessageID)
    response.CommandDataSetType = NO_DATA_SET
    response.Status = int(status)
    if "AffectedSOPInstanceUID" in command:
        response.AffectedSOPInstanceUID = command.AffectedSOPInstanceUID
    elements = encode(response, True, True)
    return struct.pack("<HHII", 0x0000, 0x0000, 4, len(elements)) + elements
