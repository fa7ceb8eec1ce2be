"""C-STORE SCU: send stored result objects to a DICOM destination (PS3.4 Annex B).

Used by the delivery outbox; every failure raises :class:`DeliveryError` with the reason so the
outbox can retry or dead-letter the item.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from pydicom import dcmread
from pynetdicom import AE

from dicom_gateway.status import StoreStatus


class DeliveryError(RuntimeError):
    """The destination could not be reached or refused an object."""


def send_files(paths: Sequence[str | Path], *, ae_title: str, host: str, port: int,
               calling_ae_title: str = "MEDGATE", timeout_s: float = 30.0) -> None:
    """C-STORE every file in ``paths`` to ``ae_title@host:port`` over one association.

    Raises
    ------
    DeliveryError
        The association was refused or aborted, or a C-STORE returned a non-success status.
    """
    if not paths:
        raise ValueError("`paths` must name at least one file, an empty sequence is given.")
    datasets = [dcmread(p) for p in paths]
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate(host, port, ae_title=ae_title)
    if not assoc.is_established:
        raise DeliveryError(f"association with {ae_title}@{host}:{port} was not established")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None:
                raise DeliveryError(f"no C-STORE response from {ae_title} for {ds.SOPInstanceUID}")
            if code != StoreStatus.SUCCESS and not 0xB000 <= code <= 0xBFFF:
                raise DeliveryError(
                    f"{ae_title} answered C-STORE of {ds.SOPInstanceUID} with status 0x{code:04X}")
    finally:
        if assoc.is_established:
            assoc.release()
