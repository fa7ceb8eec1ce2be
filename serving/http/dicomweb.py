"""What the DICOMweb read routes share: who may read, UIDs in paths, the audit row, links.

QIDO-RS (:mod:`serving.http.qido`) and WADO-RS (:mod:`serving.http.wado`) live under the same base
as STOW-RS (:mod:`serving.http.stow`, ``POST /dicomweb/studies``), so one DICOMweb client URL
(``https://medgate.example/dicomweb``) stores, searches and retrieves.

- Reading returns patient data: only the clinical roles may (:data:`serving.http.auth.CLINICAL`);
  the guard lets engineers through to ``/dicomweb/`` because they may store (STOW-RS), so each
  read route checks the role itself and answers 403, audited, for any other.
- Every UID in a path is checked against the UID grammar (PS3.5 9.1,
  :func:`dicom_gateway.uids.is_uid`) before it reaches a query or a file: 400 naming it.
- Every read is one audit row (:meth:`serving.http.context.WebContext.record`) with the study UID.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from dicom_gateway.uids import is_uid
from serving.http.auth import CLINICAL
from serving.http.context import WebContext

#: Where the DICOMweb services are mounted (STOW-RS's ``POST /dicomweb/studies`` included).
BASE_PATH = "/dicomweb"
#: Roles that may search and retrieve (patient data).
READERS = CLINICAL
#: Audit resource type of every DICOMweb read (FHIR ImagingStudy: a study's images and results).
RESOURCE_TYPE = "ImagingStudy"
#: PS3.18 8.7.1 / RFC 9110 status codes the read routes answer with.
HTTP_NO_CONTENT, HTTP_BAD_REQUEST, HTTP_FORBIDDEN, HTTP_NOT_FOUND, HTTP_NOT_ACCEPTABLE = 204, 400, 403, 404, 406
#: Media type of QIDO-RS results and WADO-RS metadata (PS3.18 8.7.3.2, the DICOM JSON model of F.2).
DICOM_JSON = "application/dicom+json"
#: Characters of the query string an audit row keeps.
AUDIT_QUERY_CHARS = 500


class DicomwebError(Exception):
    """A refusal with its HTTP status and a reason naming what was given."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def check_uids(**uids: str | None) -> None:
    """:class:`DicomwebError` (400) naming the first of ``uids`` (attribute keyword -> value from
    the path) that is not a UID by PS3.5 9.1."""
    for name, value in uids.items():
        if value is not None and not is_uid(value):
            raise DicomwebError(HTTP_BAD_REQUEST, f"{name} must be a DICOM UID (PS3.5 9.1: components of digits "
                                                  f"without leading zeros, separated by dots, at most 64 "
                                                  f"characters), {value[:80]!r} is given")


def retrieve_path(study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None) -> str:
    """The WADO-RS path of a study, series or instance (PS3.18 10.4.1)."""
    path = f"{BASE_PATH}/studies/{study_uid}"
    if series_uid:
        path += f"/series/{series_uid}"
    if sop_instance_uid:
        path += f"/instances/{sop_instance_uid}"
    return path


def refused(ctx: WebContext, request: Request, study_uid: str | None, action: str) -> JSONResponse | None:
    """403, audited, when the caller's role may not read; None when it may."""
    principal = getattr(request.state, "principal", None)
    role = principal.role if principal else None
    if role in READERS:
        return None
    ctx.record(request, action, "denied", resource_type=RESOURCE_TYPE, study_uid=study_uid,
               query=request.url.path[:AUDIT_QUERY_CHARS], detail=f"role {role} may not read DICOM objects")
    return JSONResponse({"error": f"role {role!r} may not read {request.url.path[:200]}; "
                                  f"allowed: {sorted(READERS)}"}, status_code=HTTP_FORBIDDEN)


async def audit(ctx: WebContext, request: Request, action: str, outcome: str, study_uid: str | None,
                detail: str) -> None:
    """One audit row of a DICOMweb read (written in a worker thread)."""
    query = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    await asyncio.to_thread(ctx.record, request, action, outcome, resource_type=RESOURCE_TYPE,
                            study_uid=study_uid, query=query[:AUDIT_QUERY_CHARS], detail=detail)


def outcome_of(status: int) -> str:
    """The audit outcome of an HTTP status."""
    return "success" if status < 400 else "not-found" if status == HTTP_NOT_FOUND else \
        "denied" if status == HTTP_FORBIDDEN else "error"


def error_response(exc: DicomwebError) -> JSONResponse:
    return JSONResponse({"error": exc.reason}, status_code=exc.status)


def dicom_json_response(body: list[dict[str, Any]], headers: dict[str, str] | None = None) -> Response:
    """``body`` as ``application/dicom+json`` (PS3.18 F.2)."""
    return Response(json.dumps(body, separators=(",", ":")), media_type=DICOM_JSON, headers=headers)
