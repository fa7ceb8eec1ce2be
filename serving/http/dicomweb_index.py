"""The DICOMweb object index kept in step: received instances and result objects, headers read once.

QIDO-RS (:mod:`serving.http.qido`) matches on columns of the gateway's ``dicom_object_index``
(:class:`dicom_gateway.store.GatewayStore`) and answers from the header stored there as DICOM JSON,
so a query opens no file.  :func:`refresh`, called before each DICOMweb request, adds the objects
that have no row yet:

- every received instance without one (its spool file's header read once; a database of before the
  index is indexed on its first query, :data:`REFRESH_BATCH` files at a time);
- the result objects (SR, SEG, SC, GSPS) recorded for each study whose ``updated_at`` moved since its
  results were last indexed: the pipeline records its results and then marks the study ``done`` or
  ``failed``, so a study's new results always come with a change of its row.

A file that cannot be read is indexed without a header (never matched, never read again).
Reading a header into the index costs 4-6 ms (a 500-slice CT 2-3 s), so the server process
runs :class:`IndexWorker`, which refreshes every :data:`INDEX_INTERVAL_S`: a request then finds
the objects received meanwhile already indexed, and its own refresh finds nothing to read.

:func:`dicom_json` is the DICOM JSON model (PS3.18 F.2) of a header without its bulk data (binary
values such as Pixel Data are left out, not inlined): QIDO-RS stores it, WADO-RS metadata sends it.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from pydicom import dcmread
from pydicom.dataset import Dataset

from dicom_gateway.store import IndexedObject
from kernel.periodic import PeriodicWorker
from serving.store import Store

log = logging.getLogger("medgate.dicom")

#: Files whose headers one refresh reads at most (the rest on the next request or pass).
REFRESH_BATCH = 2000
#: Seconds between the server process's refreshes (:class:`IndexWorker`).
INDEX_INTERVAL_S = 2.0
#: An element of the stored header whose DICOM JSON is longer than this is left out of the index
#: (an SR's Content Sequence): QIDO-RS returns header attributes, WADO-RS metadata reads the file.
INDEXED_ELEMENT_MAX_CHARS = 4096
#: Value representations of bulk data (PS3.18 F.2.7), left out of the DICOM JSON.
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
#: Specific Character Set (0008,0005): DICOM JSON is UTF-8 whatever the file's character set.
SPECIFIC_CHARACTER_SET = 0x00080005

_lock = threading.Lock()


def dicom_json(ds: Dataset, max_chars: int | None = None) -> dict[str, Any]:
    """``ds`` as a DICOM JSON object (PS3.18 F.2) without bulk data, private elements and the
    Specific Character Set; an element longer than ``max_chars`` as JSON is left out too, and so
    is one whose value cannot be encoded (logged)."""
    out: dict[str, Any] = {}
    for element in ds:
        if element.tag.is_private or element.tag == SPECIFIC_CHARACTER_SET or element.VR in BULK_VRS:
            continue
        try:
            if element.VR == "SQ":
                value: dict[str, Any] = {"vr": "SQ"}
                items = [dicom_json(item) for item in element.value]
                if items:
                    value["Value"] = items
            else:
                value = element.to_json_dict(None, 0)
        except Exception as exc:  # noqa: BLE001 - a malformed value: that element is left out
            log.warning("DICOM JSON: element %s left out: %s", element.tag, exc)
            continue
        if max_chars is not None and len(json.dumps(value)) > max_chars:
            continue
        out[f"{element.tag:08X}"] = value
    return out


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value).strip()


def _integer(ds: Dataset, keyword: str) -> int | None:
    try:
        return int(ds.get(keyword))
    except (TypeError, ValueError):
        return None


def indexed_object(ds: Dataset, path: str | Path, source: str) -> IndexedObject:
    """The index row of the object ``ds`` read from ``path`` (``received`` or ``result``)."""
    transfer_syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    return IndexedObject(
        sop_instance_uid=str(ds.SOPInstanceUID), study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.SeriesInstanceUID), sop_class_uid=str(ds.SOPClassUID),
        modality=_text(ds, "Modality"), source=source, path=str(path),
        transfer_syntax_uid=str(transfer_syntax) if transfer_syntax else None,
        patient_id=_text(ds, "PatientID"), patient_name=_text(ds, "PatientName"),
        patient_birth_date=_text(ds, "PatientBirthDate"), patient_sex=_text(ds, "PatientSex"),
        study_date=_text(ds, "StudyDate"), study_time=_text(ds, "StudyTime"),
        accession_number=_text(ds, "AccessionNumber"), study_id=_text(ds, "StudyID"),
        study_description=_text(ds, "StudyDescription"),
        referring_physician_name=_text(ds, "ReferringPhysicianName"),
        series_number=_integer(ds, "SeriesNumber"), series_description=_text(ds, "SeriesDescription"),
        pps_start_date=_text(ds, "PerformedProcedureStepStartDate"),
        pps_start_time=_text(ds, "PerformedProcedureStepStartTime"),
        instance_number=_integer(ds, "InstanceNumber"),
        header=json.dumps(dicom_json(ds, INDEXED_ELEMENT_MAX_CHARS)), indexed_at=time.time())


def _read(path: str, source: str, known: dict[str, str] | None = None) -> IndexedObject | None:
    """The row of the file at ``path``; when unreadable, a row without a header from ``known``
    (its UIDs as recorded), or None when nothing is known."""
    try:
        return indexed_object(dcmread(path, stop_before_pixels=True), path, source)
    except Exception as exc:  # noqa: BLE001 - gone or not DICOM: indexed as unreadable
        log.warning("DICOMweb index: %s cannot be read: %s: %s", path, type(exc).__name__, exc)
    if known is None:
        return None
    return IndexedObject(**known, source=source, path=path, transfer_syntax_uid=None, patient_id=None,
                         patient_name=None, patient_birth_date=None, patient_sex=None, study_date=None,
                         study_time=None, accession_number=None, study_id=None, study_description=None,
                         referring_physician_name=None, series_number=None, series_description=None,
                         pps_start_date=None, pps_start_time=None, instance_number=None, header=None,
                         indexed_at=time.time())


class Refreshed(NamedTuple):
    """What one :func:`refresh` did: objects added, and whether received instances are still
    waiting (more than :data:`REFRESH_BATCH` were unindexed)."""

    added: int
    pending: bool


def refresh(store: Store) -> Refreshed:
    """Index the received instances and result objects that have no row yet."""
    gateway = store.gateway
    with _lock:  # one reader of new files per process
        added = []
        waiting = gateway.unindexed_instances(REFRESH_BATCH)
        for instance in waiting:
            row = _read(instance.path, "received", {
                "sop_instance_uid": instance.sop_instance_uid, "study_uid": instance.study_uid,
                "series_uid": instance.series_uid, "sop_class_uid": instance.sop_class_uid,
                "modality": instance.modality})
            added.append(row)
        studies = gateway.studies_with_unindexed_results()
        for study_uid, _ in studies:
            for result in store.results_of(study_uid):
                if result.path and result.path.endswith(".dcm"):
                    row = _read(result.path, "result")
                    if row is not None:
                        added.append(row)
        if added or studies:
            gateway.index_objects(added, studies)
    return Refreshed(len(added), len(waiting) == REFRESH_BATCH)


class IndexWorker(PeriodicWorker):
    """Runs :func:`refresh` on ``store`` every ``interval_s`` (the server process starts it)."""

    worker_name = "medgate-dicomweb-index"

    def __init__(self, store: Store, interval_s: float = INDEX_INTERVAL_S) -> None:
        super().__init__(interval_s)
        self.store = store

    def tick(self) -> None:
        refreshed = refresh(self.store)
        if refreshed.added:
            log.info("DICOMweb index: %d objects added", refreshed.added)
        if refreshed.pending:
            self.wake()  # more are waiting: the next pass at once
