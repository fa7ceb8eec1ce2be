"""STOW-RS: ``POST /dicomweb/studies`` (PS3.18 10.5, Store Transaction), into the gateway's intake.

The request body is ``multipart/related; type="application/dicom"`` with one DICOM Part 10 file
per part.  Each part goes through :meth:`dicom_gateway.intake.Intake.accept`, exactly as a C-STORE:
durable spool write and one store transaction before it counts as stored.  The end of the request
plays the part of an association release for completion (single-image studies complete at once).

This route runs in the HTTP ingress (a Ray worker process on the same machine); it opens the same
SQLite store under ``state_dir``.  The server process's
:class:`~dicom_gateway.completion.StudyAssembler` reads the store, so studies received here are
completed and dispatched by the same code, once, to the same pipeline.

Responses (PS3.18 10.5.3): 200 when every instance was stored, 202 when some failed, 409 when all
failed, 415 for another media type, 400 for a body that is not multipart; the body is a Store
Instances Response Module dataset in DICOM JSON: Referenced SOP Sequence (0008,1199) and Failed SOP
Sequence (0008,1198) with Failure Reason (0008,1197).
"""
from __future__ import annotations

import io
import logging
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter()
log = logging.getLogger("medgate.dicom")

#: PS3.18 10.5.3.1 status codes.
HTTP_OK, HTTP_ACCEPTED, HTTP_BAD_REQUEST, HTTP_CONFLICT, HTTP_UNSUPPORTED = 200, 202, 400, 409, 415
#: Failure Reason (0008,1197) for a part that is not a DICOM file (PS3.4 B.2.3 "Cannot understand").
CANNOT_UNDERSTAND = 0xC000
#: Calling AE recorded for instances received over STOW-RS (used by routing's ``calling_ae``).
STOW_CALLING_AE = "STOW-RS"


def _boundary(content_type: str) -> str | None:
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    return match.group(1) if match else None


def split_multipart(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """The ``(headers, payload)`` of each part of a multipart body (RFC 2046 5.1)."""
    delimiter = b"--" + boundary.encode("ascii")
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk[2:] if chunk.startswith(b"\r\n") else chunk
        head, sep, payload = chunk.partition(b"\r\n\r\n")
        if not sep:
            continue
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        parts.append((headers, payload[:-2] if payload.endswith(b"\r\n") else payload))
    return parts


class StowReceiver:
    """The intake and the completion bookkeeping the route uses, opened on first use."""

    def __init__(self, state_dir: str | Path, settings: dict[str, Any]) -> None:
        self.state_dir = Path(state_dir)
        self.settings = settings
        self._intake = None

    def intake(self):
        if self._intake is None:
            from dicom_gateway.intake import Intake
            from dicom_gateway.routing import rules_from_config
            from serving.store import Store

            store = Store(self.state_dir / "medgate.sqlite3")
            rules = rules_from_config(self.settings.get("routes", []))
            self._intake = Intake(store, self.state_dir / "spool", rules,
                                  group_by=self.settings.get("group_by", "study"),
                                  min_free_bytes=int(self.settings.get("min_free_bytes", 0)))
        return self._intake

    def store_parts(self, parts: list[tuple[dict[str, str], bytes]]) -> tuple[int, dict]:
        from pydicom import dcmread

        from dicom_gateway import ledger
        from dicom_gateway.status import StoreStatus
        from dicom_gateway.wellformed import part10_problem

        intake = self.intake()
        called = str(self.settings.get("ae_title", "MEDGATE"))
        stored, failed, groups = [], [], set()
        for headers, payload in parts:
            media = headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
            if media != "application/dicom":
                failed.append(("", "", CANNOT_UNDERSTAND))
                continue
            problem = part10_problem(payload)
            if problem is not None:
                log.warning("STOW-RS part refused: %s", problem)
                failed.append(("", "", CANNOT_UNDERSTAND))
                continue
            try:
                ds = dcmread(io.BytesIO(payload))
                ds.SOPInstanceUID  # noqa: B018 - a file without it is not an instance
                declared = str(ds.file_meta.get("MediaStorageSOPClassUID") or "") or None
            except Exception:  # noqa: BLE001 - not a DICOM file: cannot understand
                failed.append(("", "", CANNOT_UNDERSTAND))
                continue
            result = intake.accept(ds, intake.writer.begin(payload), STOW_CALLING_AE, called,
                                   context_sop_class=declared)
            if result.status == StoreStatus.SUCCESS:
                stored.append((result.sop_class_uid, result.sop_instance_uid))
                groups.add(result.group_uid)
            else:
                failed.append((result.sop_class_uid, result.sop_instance_uid, int(result.status)))
        ledger.mark_released(intake.store, groups)
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


def stow_settings(settings) -> dict[str, Any]:
    """What the route needs from the server's :class:`serving.config.Settings` (plain, picklable)."""
    dicom = settings.dicom
    return {"ae_title": dicom.ae_title, "group_by": dicom.completion.group_by,
            "min_free_bytes": dicom.storage.min_free_bytes,
            "routes": [r.model_dump(exclude_none=True) for r in dicom.routes]}


def configure(app, state_dir: str | Path, settings: dict[str, Any] | None) -> None:
    """Attach the receiver for :func:`store_instances` to ``app`` (the ingress FastAPI app)."""
    app.state.stow = StowReceiver(state_dir, settings or {})


@router.post("/dicomweb/studies")
async def store_instances(request: Request) -> JSONResponse:
    """Store Instances (PS3.18 10.5)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/related"):
        return JSONResponse({"error": f"send multipart/related; type=\"application/dicom\", "
                                      f"{content_type!r} is given"}, status_code=HTTP_UNSUPPORTED)
    kind = re.search(r'type="?([^";]+)"?', content_type)
    if kind and kind.group(1).lower() != "application/dicom":
        return JSONResponse({"error": f"only type=\"application/dicom\" is accepted, {kind.group(1)!r} is given"},
                            status_code=HTTP_UNSUPPORTED)
    boundary = _boundary(content_type)
    if boundary is None:
        return JSONResponse({"error": "the multipart/related content type has no boundary"},
                            status_code=HTTP_BAD_REQUEST)
    parts = split_multipart(await request.body(), boundary)
    if not parts:
        return JSONResponse({"error": "the body holds no parts"}, status_code=HTTP_BAD_REQUEST)
    receiver: StowReceiver = request.app.state.stow
    import asyncio

    status, body = await asyncio.to_thread(receiver.store_parts, parts)
    return JSONResponse(body, status_code=status, media_type="application/dicom+json")
