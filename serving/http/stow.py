"""STOW-RS: ``POST /dicomweb/studies`` (PS3.18 10.5, Store Transaction), into the gateway's intake.

The request body is ``multipart/related; type="application/dicom"`` with one DICOM Part 10 file
per part.  Each part goes through :meth:`dicom_gateway.intake.Intake.accept`, exactly as a C-STORE:
durable spool write and one store transaction before it counts as stored.  The end of the request
plays the part of an association release for completion (single-image studies complete at once).

This route runs in the HTTP ingress (a Ray worker process on the same machine); it opens the same
SQLite store under ``state_dir``.  The server process's
:class:`~dicom_gateway.completion.StudyAssembler` reads the store, so studies received here are
completed and dispatched by the same code, once, to the same pipeline.

The body is parsed as it streams and its parts spilled to an anonymous temporary file beside the
spool (:mod:`serving.http.related_parts`), so memory does not grow with the body; its bytes are counted
and the request refused with 413 as soon as they pass ``http.stow_max_bytes``, before any instance
is stored; likewise past ``http.stow_max_parts`` parts, or when spilling would leave less free
space than ``dicom.storage.min_free_bytes``.  Parts are then stored one at a time, each mapped from
the file.  At most
``LOGGED_WARNINGS`` warnings are logged per request (refused parts), then one line with the count.

Responses (PS3.18 10.5.3): 200 when every instance was stored, 202 when some failed, 409 when all
failed, 415 for another media type, 400 for a body that is not multipart, 413 for one over the
limit; the body is a Store
Instances Response Module dataset in DICOM JSON: Referenced SOP Sequence (0008,1199) and Failed SOP
Sequence (0008,1198) with Failure Reason (0008,1197).
"""
from __future__ import annotations

import asyncio
import logging
import re
import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from dicom_gateway.config import DicomConfig
from dicom_gateway.store import GatewayStore
from kernel.database import open_database, store_location
from serving.config import HttpConfig
from serving.http import request_body
from serving.http.related_parts import MultipartError, SpilledParts, SpillLimit, ViewReader, spill
from serving.http.uploads import UploadError

router = APIRouter()
log = logging.getLogger("medgate.dicom")

#: PS3.18 10.5.3.1 status codes.
HTTP_OK, HTTP_ACCEPTED, HTTP_BAD_REQUEST, HTTP_CONFLICT, HTTP_UNSUPPORTED = 200, 202, 400, 409, 415
#: RFC 9110 15.5.14: over http.stow_max_parts parts, or too little free space to spill the body.
HTTP_CONTENT_TOO_LARGE = 413
#: Failure Reason (0008,1197) for a part that is not a DICOM file (PS3.4 B.2.3 "Cannot understand").
CANNOT_UNDERSTAND = 0xC000
#: Calling AE recorded for instances received over STOW-RS (used by routing's ``calling_ae``).
STOW_CALLING_AE = "STOW-RS"
#: The configuration's defaults, for settings left out (each written in its model only).
_DICOM, _HTTP = DicomConfig(), HttpConfig()
#: Warnings logged per request before the rest are only counted (a body of 10,000 bad parts).
LOGGED_WARNINGS = 5


def _boundary(content_type: str) -> str | None:
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    return match.group(1) if match else None


class _RequestWarnings(logging.Filter):
    """Passes the first ``limit`` warnings logged by one thread (one request's storing) and counts
    the rest; other threads' records pass untouched."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit, self.seen, self.thread = limit, 0, threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread != self.thread or record.levelno != logging.WARNING:
            return True
        self.seen += 1
        return self.seen <= self.limit


class StowReceiver:
    """The intake and the completion bookkeeping the route uses, opened on first use."""

    def __init__(self, state_dir: str | Path, settings: dict[str, Any], store_url: str | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.settings = settings
        self.store_url = store_url  # ``store.url``: PostgreSQL when set, else the SQLite file
        self._intake = None

    def intake(self):
        if self._intake is None:
            from dicom_gateway.intake import Intake
            from dicom_gateway.routing import rules_from_config

            store = GatewayStore(open_database(store_location(self.store_url, self.state_dir)))
            rules = rules_from_config(self.settings.get("routes", []))
            self._intake = Intake(store, self.state_dir / "spool", rules,
                                  group_by=self.settings.get("group_by", _DICOM.completion.group_by),
                                  min_free_bytes=self.min_free_bytes)
        return self._intake

    @property
    def max_bytes(self) -> int:
        return int(self.settings.get("max_bytes") or _HTTP.stow_max_bytes)

    @property
    def max_parts(self) -> int:
        return int(self.settings.get("max_parts") or _HTTP.stow_max_parts)

    @property
    def min_free_bytes(self) -> int:
        return int(self.settings.get("min_free_bytes", _DICOM.storage.min_free_bytes))

    @property
    def parts_folder(self) -> Path:
        """Where bodies are spilled: beside the spool (the same disk and free-space watermark)."""
        return self.state_dir / "spool"

    def store_parts(self, parts: SpilledParts) -> tuple[int, dict]:
        """Store each part as an instance; the PS3.18 10.5.3 status and Store Instances Response."""
        from dicom_gateway import ledger

        quiet = _RequestWarnings(LOGGED_WARNINGS)
        log.addFilter(quiet)
        try:
            stored, failed, groups = self._store_each(parts)
        finally:
            log.removeFilter(quiet)
        if quiet.seen > quiet.limit:
            log.warning("STOW-RS request of %d parts (%d refused): %d more warnings not logged",
                        len(parts), len(failed), quiet.seen - quiet.limit)
        ledger.mark_released(self.intake().store, groups)
        body: dict[str, Any] = {}
        if stored:
            body["00081199"] = {"vr": "SQ", "Value": [
                {"00081150": {"vr": "UI", "Value": [c]}, "00081155": {"vr": "UI", "Value": [i]}}
                for c, i in stored]}
        if failed:
            body["00081198"] = {"vr": "SQ", "Value": [
                {**({"00081150": {"vr": "UI", "Value": [c]}} if c else {}),
                 **({"00081155": {"vr": "UI", "Value": [i]}} if i else {}),
                 "00081197": {"vr": "US", "Value": [reason]}} for c, i, reason in failed]}
        status = HTTP_OK if not failed else HTTP_ACCEPTED if stored else HTTP_CONFLICT
        return status, body

    def _store_each(self, parts: SpilledParts) -> tuple[list, list, set]:
        from dicom_gateway.status import StoreStatus

        intake = self.intake()
        called = str(self.settings.get("ae_title", _DICOM.ae_title))
        stored, failed, groups = [], [], set()
        for part in parts.parts:
            media = part.headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
            if media != "application/dicom":
                log.warning("STOW-RS part refused: its type is %r, not application/dicom", media[:80])
                failed.append(("", "", CANNOT_UNDERSTAND))
                continue
            with parts.payload(part) as payload:
                result = self._accept(intake, payload, called)
            if result is None:
                failed.append(("", "", CANNOT_UNDERSTAND))
            elif result.status == StoreStatus.SUCCESS:
                stored.append((result.sop_class_uid, result.sop_instance_uid))
                groups.add(result.group_uid)
            else:
                failed.append((result.sop_class_uid, result.sop_instance_uid, int(result.status)))
        return stored, failed, groups

    @staticmethod
    def _accept(intake, payload, called: str):
        """One part (mapped from the spill file) through the intake: its outcome, or None when it is
        not a DICOM file."""
        from pydicom import dcmread

        from dicom_gateway.wellformed import part10_problem

        problem = part10_problem(payload)
        if problem is not None:
            log.warning("STOW-RS part refused: %s", problem)
            return None
        try:
            ds = dcmread(ViewReader(payload))  # read as a file: values copied, not the whole part
            ds.SOPInstanceUID  # noqa: B018 - a file without it is not an instance
            declared = str(ds.file_meta.get("MediaStorageSOPClassUID") or "") or None
        except Exception as exc:  # noqa: BLE001 - not a DICOM file: cannot understand
            log.warning("STOW-RS part refused: not a readable DICOM file: %s", type(exc).__name__)
            return None
        with memoryview(payload) as data:  # written from the mapping, without a copy
            return intake.accept(ds, intake.writer.begin(data), STOW_CALLING_AE, called,
                                 context_sop_class=declared)


def stow_settings(settings) -> dict[str, Any]:
    """What the route needs from the server's :class:`serving.config.Settings` (plain, picklable)."""
    dicom = settings.dicom
    return {"ae_title": dicom.ae_title, "group_by": dicom.completion.group_by,
            "max_bytes": settings.http.stow_max_bytes, "max_parts": settings.http.stow_max_parts,
            "min_free_bytes": dicom.storage.min_free_bytes,
            "routes": [r.model_dump(exclude_none=True) for r in dicom.routes]}


def configure(app, state_dir: str | Path, settings: dict[str, Any] | None, store_url: str | None = None) -> None:
    """Attach the receiver for :func:`store_instances` to ``app`` (the ingress FastAPI app)."""
    app.state.stow = StowReceiver(state_dir, settings or {}, store_url)


def _refusal(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status)


@router.post("/dicomweb/studies")
async def store_instances(request: Request) -> JSONResponse:
    """Store Instances (PS3.18 10.5)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/related"):
        return _refusal(HTTP_UNSUPPORTED, f"send multipart/related; type=\"application/dicom\", "
                                          f"{content_type[:200]!r} is given")
    kind = re.search(r'type="?([^";]+)"?', content_type)
    if kind and kind.group(1).lower() != "application/dicom":
        return _refusal(HTTP_UNSUPPORTED, f"only type=\"application/dicom\" is accepted, {kind.group(1)[:80]!r} "
                                          "is given")
    boundary = _boundary(content_type)
    if boundary is None:
        return _refusal(HTTP_BAD_REQUEST, "the multipart/related content type has no boundary")
    receiver: StowReceiver = request.app.state.stow
    try:
        parts = await spill(request_body.chunks(request, receiver.max_bytes), boundary, receiver.parts_folder,
                            receiver.max_parts, receiver.min_free_bytes)
    except MultipartError as exc:
        return _refusal(HTTP_BAD_REQUEST, str(exc))
    except SpillLimit as exc:  # too many parts, or too little free space beside the spool
        return _refusal(HTTP_CONTENT_TOO_LARGE, str(exc))
    except UploadError as exc:  # 413 over the limit, 400 for a Content-Length that is not a number
        return _refusal(exc.status, exc.reason)
    with parts:
        if not parts:
            return _refusal(HTTP_BAD_REQUEST, "the body holds no parts")
        status, body = await asyncio.to_thread(receiver.store_parts, parts)
    return JSONResponse(body, status_code=status, media_type="application/dicom+json")
