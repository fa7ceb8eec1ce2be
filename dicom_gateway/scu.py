"""C-STORE SCU: send stored result objects to a DICOM destination (PS3.4 Annex B).

Used by the delivery outbox; every failure raises a typed delivery error
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

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, evt
from pynetdicom.pdu import A_ASSOCIATE_RJ

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
    """C-STORE every file in ``paths`` to ``ae_title@host:port`` over one association.

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
        datasets = [dcmread(p) for p in paths]
    except (OSError, InvalidDicomError) as exc:
        raise PermanentDeliveryError(f"cannot read an object for {peer}: {exc}") from None
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    rejections: list[A_ASSOCIATE_RJ] = []
    keep_rejection = (evt.EVT_PDU_RECV, lambda event: rejections.append(event.pdu)
                      if isinstance(event.pdu, A_ASSOCIATE_RJ) else None)
    assoc = ae.associate(host, port, ae_title=ae_title, evt_handlers=[keep_rejection])
    if not assoc.is_established:
        raise _not_established(assoc, peer, rejections)
    try:
        for ds in datasets:
            _store(assoc, ds, peer)
    finally:
        if assoc.is_established:
            assoc.release()


def _store(assoc, ds, peer: str) -> None:
    try:
        status = assoc.send_c_store(ds)
    except ValueError as exc:  # pynetdicom: no accepted presentation context for this object
        raise PermanentDeliveryError(f"{peer} accepted no presentation context for "
                                     f"{ds.SOPClassUID.name or ds.SOPClassUID}: {exc}") from None
    code = getattr(status, "Status", None)
    if code is None:
        raise TransientDeliveryError(f"no C-STORE response from {peer} for {ds.SOPInstanceUID} "
                                     "(timeout or abort)")
    if is_stored(code):
        return
    comment = getattr(status, "ErrorComment", None)
    reason = (f"{peer} answered C-STORE of {ds.SOPInstanceUID} with status 0x{code:04X}"
              + (f": {comment}" if comment else ""))
    raise (TransientDeliveryError if is_transient(code) else PermanentDeliveryError)(reason)


def _not_established(assoc, peer: str, rejections: Sequence[A_ASSOCIATE_RJ] = ()
                     ) -> PermanentDeliveryError | TransientDeliveryError:
    """The delivery error for an association that was not established (PS3.8 9.3.4).

    ``rejections`` are the A-ASSOCIATE-RJ PDUs the reader thread decoded. They are the evidence of
    a rejection when the peer sent A-ASSOCIATE-RJ and closed the connection before pynetdicom's
    requestor looked at the socket: it then takes the connection for failed and aborts, leaving
    ``is_rejected`` false and no primitive (seen under load with DCMTK ``storescp --refuse``).
    """
    if rejections:  # decoded before pynetdicom sets ``is_rejected``, so this covers that case too
        pdu = rejections[0]
        reason = (f"{peer} rejected the association: "
                  f"{_rejection_text(pdu.result, pdu.source, pdu.reason_diagnostic)}")
        if pdu.result == RejectResult.PERMANENT:
            return PermanentDeliveryError(reason)
        return TransientDeliveryError(reason)
    reply = assoc.acceptor.primitive if assoc.acceptor is not None else None
    if reply is None:  # no A-ASSOCIATE-AC/RJ: not connected, or no answer within the ACSE timeout
        return TransientDeliveryError(f"association with {peer} was not established (not reachable "
                                      "or no answer)")
    if reply.result == 0 and not assoc.accepted_contexts:
        return PermanentDeliveryError(f"{peer} accepted none of the proposed presentation contexts "
                                      "(SOP Class or transfer syntax not supported)")
    return TransientDeliveryError(f"{peer} aborted the association")


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
