"""DICOM Storage SCP: C-ECHO and C-STORE (PS3.4 Annex A and B) with pynetdicom.

Each C-STORE is decoded in ``try``, checked, written durably to the spool and recorded in the store
*before* success is returned.  Bad input gets a specific failure status (see
:class:`dicom_gateway.status.StoreStatus`), a log line with the reason, and the server keeps running.
Studies of single-image modalities are declared complete when the association that brought them
is released (or aborted: every instance already answered with success is on disk).
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

from pydicom import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom import sop_class as sc

from dicom_gateway.pixels import PixelDataError, grayscale_image
from dicom_gateway.routing import DEFAULT_RULES, SINGLE_IMAGE_MODALITIES, Rule, route
from dicom_gateway.status import StoreStatus
from dicom_gateway.storage import check_uid, instance_path, write_durably

log = logging.getLogger("medgate.dicom")

#: Storage SOP classes a medgate model can use (PS3.4 Annex B.5).
STORAGE_SOP_CLASSES = (
    sc.ComputedRadiographyImageStorage,
    sc.DigitalXRayImageStorageForPresentation,
    sc.DigitalXRayImageStorageForProcessing,
    sc.CTImageStorage,
    sc.EnhancedCTImageStorage,
    sc.MRImageStorage,
    sc.VLPhotographicImageStorage,
    sc.SecondaryCaptureImageStorage,
)

#: Called when a study is complete: (study_uid, model name).
StudyCallback = Callable[[str, str], None]


class StorageScp:
    """The gateway's listening AE.

    Parameters
    ----------
    ae_title, host, port
        Our AE title and the address to bind (``port=0`` picks a free port, see :attr:`port`).
    store
        The local store (instances and studies tables).
    spool
        Directory that receives instance files.
    on_study_complete
        Called with ``(study_uid, model)`` for each complete, routed study.
    """

    def __init__(self, ae_title: str, host: str, port: int, store, spool: Path,
                 on_study_complete: StudyCallback, *, max_associations: int = 10,
                 rules: tuple[Rule, ...] = DEFAULT_RULES) -> None:
        self.ae = AE(ae_title=ae_title)
        self.ae.require_called_aet = True
        self.ae.maximum_associations = max_associations
        self.ae.add_supported_context(sc.Verification)
        for uid in STORAGE_SOP_CLASSES:
            self.ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        self.address = (host, port)
        self.store = store
        self.spool = Path(spool)
        self.on_study_complete = on_study_complete
        self.rules = rules
        self._sop_classes = {str(uid) for uid in STORAGE_SOP_CLASSES}
        self._open: dict[int, dict[str, str | None]] = {}  # association id -> {study: route}
        self._lock = threading.Lock()
        self._server = None

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self.address[1]

    def start(self) -> None:
        handlers = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_association_end),
            (evt.EVT_ABORTED, self._on_association_end),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        self._server = self.ae.start_server(self.address, block=False, evt_handlers=handlers)
        log.info("DICOM SCP %s listening on %s:%d", self.ae.ae_title, self.address[0], self.port)

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server = None

    # -- handlers ------------------------------------------------------------------------------
    def _on_echo(self, event: evt.Event) -> int:
        return StoreStatus.SUCCESS

    def _on_rejected(self, event: evt.Event) -> None:
        requestor = event.assoc.requestor
        log.warning("association from %s (%s:%s) rejected", requestor.ae_title,
                    requestor.address, requestor.port)

    def _on_store(self, event: evt.Event) -> int:
        calling = event.assoc.requestor.ae_title
        try:
            ds: Dataset = event.dataset
            ds.file_meta = event.file_meta
            sop_class = check_uid("SOPClassUID", ds.SOPClassUID)
            sop_instance = check_uid("SOPInstanceUID", ds.SOPInstanceUID)
            study = check_uid("StudyInstanceUID", ds.StudyInstanceUID)
            series = check_uid("SeriesInstanceUID", ds.SeriesInstanceUID)
        except Exception as exc:  # noqa: BLE001 - any decode failure is "cannot understand"
            log.warning("C-STORE from %s refused: cannot decode dataset: %s", calling, exc)
            return StoreStatus.CANNOT_UNDERSTAND
        if sop_class not in self._sop_classes:
            log.warning("C-STORE %s from %s refused: SOP class %s not supported", sop_instance,
                        calling, sop_class)
            return StoreStatus.SOP_CLASS_NOT_SUPPORTED
        if sop_class != str(event.context.abstract_syntax):
            log.warning("C-STORE %s from %s refused: SOP class %s differs from the context's %s",
                        sop_instance, calling, sop_class, event.context.abstract_syntax)
            return StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
        model = route(ds, self.rules)
        if model is not None:
            try:
                grayscale_image(ds)
            except PixelDataError as exc:
                log.warning("C-STORE %s (study %s) from %s refused: %s", sop_instance, study,
                            calling, exc)
                return StoreStatus.CANNOT_UNDERSTAND
        try:
            path = instance_path(self.spool, study, sop_instance)
            write_durably(path, event.encoded_dataset())
            new = self.store.add_instance({
                "sop_instance_uid": sop_instance, "study_uid": study, "series_uid": series,
                "sop_class_uid": sop_class, "modality": str(ds.get("Modality", "")),
                "path": str(path), "calling_ae": calling,
            })
        except OSError as exc:
            log.error("C-STORE %s (study %s): cannot persist: %s", sop_instance, study, exc)
            return StoreStatus.OUT_OF_RESOURCES
        log.info("stored %s%s (study %s, %s) from %s -> %s", sop_instance,
                 "" if new else " (duplicate)", study, ds.get("Modality", "?"), calling,
                 model or "no model")
        if str(ds.get("Modality", "")).upper() in SINGLE_IMAGE_MODALITIES or model is None:
            with self._lock:
                self._open.setdefault(id(event.assoc), {})[study] = model
        return StoreStatus.SUCCESS

    def _on_association_end(self, event: evt.Event) -> None:
        with self._lock:
            studies = self._open.pop(id(event.assoc), {})
        for study, model in studies.items():
            if model is None:
                self.store.set_study_status(study, "unrouted", detail="no routing rule matched")
                log.info("study %s stored; no routing rule matched", study)
                continue
            self.store.set_study_status(study, "complete", route=model)
            try:
                self.on_study_complete(study, model)
            except Exception:  # noqa: BLE001 - a failing consumer must not kill the SCP
                log.exception("study %s: completion callback failed", study)
