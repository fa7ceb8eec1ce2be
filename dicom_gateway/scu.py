"""C-STORE SCU: send stored result objects to a DICOM destination (PS3.4 Annex B).

Used by the delivery outbox, over :mod:`dicom_gateway.requestor`'s association (one blocking
socket, the file's bytes sent as they are); every failure raises a typed delivery error
(:mod:`kernel.delivery_errors`) with the peer's reason, so the outbox dead-letters a refusal at
once and retries an outage:

- permanent: the association rejected with Result 1 "rejected-permanent" (PS3.8 9.3.4); no
  presentation context accepted for an object's SOP Class and transfer syntax (PS3.8 9.3.3.2);
  a C-STORE status of the Failure class other than those below: Error A9xx "Data Set does not
  match SOP Class" and Cxxx "Cannot understand" (PS3.4 B.2.3), 0122 "SOP Class not supported",
  0124 "Refused: Not authorized", 0111 "Duplicate SOP Instance" (PS3.7 Annex C); a file that
  cannot be read.
- transient: the association rejected with Result 2 "rejected-transient", aborted, or not
  connected; no C-STORE response (timeout, abort); Refused A7xx "Out of Resources" (PS3.4 B.2.3);
  0110 "Processing failure", "a general failure in processing the operation", and 0213 "Resource
  limitation" (PS3.7 Annex C): neither blames the data set, so they are retried (and bounded by
  the outbox's ``max_attempts``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from dicom_gateway.requestor import Association, Lost, Part10, Refused
from dicom_gateway.status import REASONS_OF_SOURCE, RejectResult, RejectSource, StoreStatus
from kernel.delivery_errors import PermanentDeliveryError, TransientDeliveryError

#: PS3.7 Annex C Failure: Resource limitation (the peer's, not the data set's).
RESOURCE_LIMITATION = 0x0213
#: PS3.7 Annex C Cancel (C-STORE has none in PS3.4 B.2.3; a peer that answers it may take the object later).
CANCEL = 0xFE00
#: C-STORE statuses after which the same object may be accepted later (see the module docstring).
TRANSIENT_STATUSES = frozenset({StoreStatus.PROCESSING_FAILURE, RESOURCE_LIMITATION, CANCEL})


def is_stored(code: int) -> bool:
    """Success (0000, PS3.7 Annex C) or a Warning Bxxx (PS3.4 B.2.3): the peer stored the object."""
    return code == StoreStatus.SUCCESS or 0xB000 <= code <= 0xBFFF


def is_transient(code: int) -> bool:
    """A failure status after which the same object may be accepted later (PS3.4 B.2.3 A7xx
    Refused: Out of Resources; :data:`TRANSIENT_STATUSES`)."""
    return code & 0xFF00 == StoreStatus.OUT_OF_RESOURCES or code in TRANSIENT_STATUSES


def send_files(paths: Sequence[str | Path], *, ae_title: str, host: str, port: int,
               calling_ae_title: str = "MEDGATE", timeout_s: float = 30.0) -> None:
    """C-STORE every file in ``paths`` to ``ae_title@host:port`` over one association
    (:class:`dicom_gateway.requestor.Association`).

    Raises
    ------
    PermanentDeliveryError
        A file cannot be read, the association was rejected permanently, no presentation context
        was accepted for an object, or a C-STORE was refused with an error status.
    TransientDeliveryError
        The peer could not be reached, rejected the association transiently, aborted it, did not
        answer, or was out of resources.
    """
    if not paths:
        raise ValueError("`paths` must name at least one file, an empty sequence is given.")
    peer = f"{ae_title}@{host}:{port}"
    try:
        objects = [Part10.read(p) for p in paths]
    except (OSError, InvalidDicomError, AttributeError) as exc:
        raise PermanentDeliveryError(f"cannot read an object for {peer}: {exc}") from None
    try:
        with Association(host, port, called_ae=ae_title, calling_ae=calling_ae_title, objects=objects,
                         timeout_s=timeout_s) as association:
            for obj in objects:
                _store(association, obj, peer)
    except Refused as exc:
        if exc.result is None:
            raise PermanentDeliveryError(str(exc)) from None
        reason = f"{peer} rejected the association: {_rejection_text(exc.result, exc.source, exc.reason)}"
        raise (PermanentDeliveryError if exc.result == RejectResult.PERMANENT else TransientDeliveryError)(reason) \
            from None
    except Lost as exc:
        raise TransientDeliveryError(str(exc)) from None


def _store(association: Association, obj: Part10, peer: str) -> None:
    try:
        status = association.store(obj)
    except LookupError:
        raise PermanentDeliveryError(f"{peer} accepted no presentation context for "
                                     f"{UID(obj.sop_class_uid).name or obj.sop_class_uid}") from None
    except Lost as exc:
        raise TransientDeliveryError(f"no C-STORE response from {peer} for {obj.sop_instance_uid} ({exc})") from None
    code = getattr(status, "Status", None)
    if code is None:
        raise TransientDeliveryError(f"no Status in the C-STORE response from {peer} for {obj.sop_instance_uid}")
    code = int(code)
    if is_stored(code):
        return
    comment = getattr(status, "ErrorComment", None)
    reason = (f"{peer} answered C-STORE of {obj.sop_instance_uid} with status 0x{code:04X}"
              + (f": {comment}" if comment else ""))
    raise (TransientDeliveryError if is_transient(code) else PermanentDeliveryError)(reason)


def _rejection_text(result: int, source: int, diagnostic: int) -> str:
    """``rejected-permanent, service-user: CALLED_AE_NOT_RECOGNIZED`` from A-ASSOCIATE-RJ fields."""
    try:
        result_name = RejectResult(result).name.lower()
        source_enum = RejectSource(source)
        source_name = source_enum.name.lower()
        reason_name = REASONS_OF_SOURCE[source_enum](diagnostic).name.lower()
    except ValueError:
        return f"result {result}, source {source}, reason {diagnostic}"
    return f"rejected-{result_name}, {source_name}: {reason_name}"
