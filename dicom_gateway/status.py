"""C-STORE response status values used by the gateway, named and cited.

PS3.4 Annex B.2.3 (Storage Service Class specific statuses) and PS3.7 Annex C (general statuses).
"""
from __future__ import annotations

from enum import IntEnum


class StoreStatus(IntEnum):
    #: PS3.7 C.1.1 Success.
    SUCCESS = 0x0000
    #: PS3.7 C.4.1 Failure: Processing failure.
    PROCESSING_FAILURE = 0x0110
    #: PS3.7 C.4.2 Refused: SOP Class not supported.
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    #: PS3.4 B.2.3 Refused: Out of Resources (A7xx).
    OUT_OF_RESOURCES = 0xA700
    #: PS3.4 B.2.3 Error: Data Set does not match SOP Class (A9xx).
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    #: PS3.4 B.2.3 Error: Cannot understand (Cxxx); 0xC210 is pynetdicom's "cannot decode dataset".
    CANNOT_UNDERSTAND = 0xC000
