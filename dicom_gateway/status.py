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
    #: PS3.4 B.2.3 Error: Cannot understand (Cxxx); the data set cannot be decoded.
    CANNOT_UNDERSTAND = 0xC000
    #: PS3.4 B.2.3 Error: Cannot understand (Cxxx, medgate's own code in that range): the instance is
    #: well formed and matches its SOP class, but a model it is routed to cannot read it (a MONOCHROME
    #: image for a colour model, a multi-frame instance for a 2D image model).  Not A900: a MONOCHROME2
    #: VL Photographic Image does match its SOP class.
    NOT_READABLE_BY_MODEL = 0xC001


class RejectResult(IntEnum):
    """A-ASSOCIATE-RJ Result (PS3.8 9.3.4, Table 9-21)."""

    #: Rejected (permanent): retrying the same request will fail again.
    PERMANENT = 0x01
    #: Rejected (transient): the requestor may retry later.
    TRANSIENT = 0x02


class RejectSource(IntEnum):
    """A-ASSOCIATE-RJ Source (PS3.8 9.3.4, Table 9-21)."""

    #: DICOM UL service-user.
    SERVICE_USER = 0x01
    #: DICOM UL service-provider (ACSE related function).
    SERVICE_PROVIDER_ACSE = 0x02
    #: DICOM UL service-provider (Presentation related function).
    SERVICE_PROVIDER_PRESENTATION = 0x03


class ServiceUserReason(IntEnum):
    """A-ASSOCIATE-RJ Reason/Diag. when the Source is the DICOM UL service-user (PS3.8 9.3.4, Table 9-21)."""

    #: no-reason-given.
    NO_REASON_GIVEN = 0x01
    #: application-context-name-not-supported.
    APPLICATION_CONTEXT_NOT_SUPPORTED = 0x02
    #: calling-AE-title-not-recognized.
    CALLING_AE_NOT_RECOGNIZED = 0x03
    #: called-AE-title-not-recognized.
    CALLED_AE_NOT_RECOGNIZED = 0x07


class AcseReason(IntEnum):
    """A-ASSOCIATE-RJ Reason/Diag. when the Source is the service-provider, ACSE related function
    (PS3.8 9.3.4, Table 9-21)."""

    #: no-reason-given.
    NO_REASON_GIVEN = 0x01
    #: protocol-version-not-supported.
    PROTOCOL_VERSION_NOT_SUPPORTED = 0x02


class PresentationReason(IntEnum):
    """A-ASSOCIATE-RJ Reason/Diag. when the Source is the service-provider, Presentation related
    function (PS3.8 9.3.4, Table 9-21)."""

    #: temporary-congestion.
    TEMPORARY_CONGESTION = 0x01
    #: local-limit-exceeded (medgate: the spool's free-space watermark is reached).
    LOCAL_LIMIT_EXCEEDED = 0x02


#: A Reason/Diag. value: its meaning depends on the Source, so each Source has its own enumeration
#: and every member its own name (one IntEnum for all would alias equal values under one name).
RejectReason = ServiceUserReason | AcseReason | PresentationReason
#: The enumeration of reasons each Source may give.
REASONS_OF_SOURCE: dict[RejectSource, type[IntEnum]] = {
    RejectSource.SERVICE_USER: ServiceUserReason,
    RejectSource.SERVICE_PROVIDER_ACSE: AcseReason,
    RejectSource.SERVICE_PROVIDER_PRESENTATION: PresentationReason,
}
