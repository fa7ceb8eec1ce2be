"""The read-only FHIR R4 API under ``/fhir`` over the local store (JSON only).

``GET /fhir/metadata``; ``GET /fhir/{type}?...`` searches (:mod:`serving.fhir.search`, includes by
:mod:`serving.fhir.include`) of Observation, DiagnosticReport, RiskAssessment, Flag, Patient and
AuditEvent (admin only); ``GET /fhir/{type}/{id}`` reads of those and of ``Device`` (the algorithm
an imaging Observation names in ``device``); ``GET /fhir/SearchParameter/{id}`` for the search
parameters medgate defines (:mod:`serving.fhir.capability`).  Each request that returns patient
data, and each Device read, is one audit row (a search is one row however many resources it
returns, its includes too).

Every resource carries ``meta.versionId`` and ``meta.lastUpdated`` (:mod:`serving.store`); a read
answers with ``ETag: W/"<versionId>"`` and ``Last-Modified``, and ``304 Not Modified`` to an
``If-None-Match`` naming that ETag or an ``If-Modified-Since`` not before it (R4 http.html
"read", "Conditional Read").  An id that is no FHIR id (R4 ``id``: ``[A-Za-z0-9\\-\\.]{1,64}``) is
not looked up: 404.

Observations include those of the stored vitals messages, built when read
(:mod:`iomt.vital_records`).

Patients: a stored Patient (from an admission message) is returned as stored.  A patient known
only as the subject of stored resources (vitals carrying a patient identifier, no admission) is
read (and included) with its id, ``active`` unknown and a ``meta.tag`` saying so: no name, gender or
birth date is invented, and the resource stays a valid R4 Patient (no element is required).  A
Patient search runs over the stored Patients.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from email.utils import format_datetime, parsedate_to_datetime

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from serving.fhir.audit_event import audit_event
from serving.fhir.capability import READ_ONLY_TYPES, capability_statement, search_parameter
from serving.fhir.include import Include, included
from serving.fhir.search import PARAMETERS, Search, SearchError, operation_outcome, parse_instant, parse_search, \
    searchset, strict_handling
from serving.http.context import current
from serving.store import with_meta

FHIR_JSON = "application/fhir+json"
REFERENCED_ONLY_TAG = {"system": "urn:medgate:patient-source", "code": "referenced-only",
                       "display": "Known only as the subject of stored resources; no demographics held"}
#: R4 ``id`` datatype (http://hl7.org/fhir/R4/datatypes.html#id).
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
#: Audit rows and referenced-only Patients never change: their one version.
FIRST_VERSION = "1"
router = APIRouter(prefix="/fhir")


def _fhir(body: dict, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON, headers=headers)


#: AuditEvent ids are ``audit-<seq>``; seq is an SQLite INTEGER (at most 2**63 - 1, 19 digits).
AUDIT_EVENT_ID = re.compile(r"^audit-([1-9][0-9]{0,17})$")


def base_url() -> str:
    """The FHIR base of links and fullUrls: ``http.public_base_url`` + ``/fhir``, never the Host header."""
    return current().link_base() + "/fhir"


def audit_seq(resource_id: str) -> int | None:
    """The audit row number an AuditEvent id names; None for any id this server never issues."""
    match = AUDIT_EVENT_ID.match(resource_id)
    return int(match.group(1)) if match else None


@router.get("/metadata")
def metadata(request: Request) -> JSONResponse:
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return _fhir(capability_statement(base_url(), "0.1.0", date=date))


def _audited(row: dict) -> dict:
    event = audit_event(row)
    return with_meta(event, FIRST_VERSION, parse_instant(event["recorded"]).timestamp())


def _patient(patient_id: str) -> dict | None:
    """The stored Patient, or one known only as a subject (:data:`REFERENCED_ONLY_TAG`), or None."""
    store = current().store()
    patient = store.resource("Patient", patient_id)
    if patient is not None:
        return patient
    written = store.subject_written(f"Patient/{patient_id}")
    if written is None:
        return None
    return with_meta({"resourceType": "Patient", "id": patient_id, "meta": {"tag": [REFERENCED_ONLY_TAG]}},
                     FIRST_VERSION, written)


def _read(resource_type: str, resource_id: str) -> dict | None:
    """One resource by type and id (None when unknown); blocking."""
    if not FHIR_ID.fullmatch(resource_id):
        return None
    if resource_type == "Patient":
        return _patient(resource_id)
    if resource_type == "AuditEvent":
        seq = audit_seq(resource_id)
        rows = current().audit().rows(since_seq=seq - 1, limit=1) if seq is not None else []
        return _audited(rows[0]) if rows and rows[0]["seq"] == seq else None
    return current().store().resource(resource_type, resource_id)


def _referencing(include: Include, references: list[str]) -> list[dict]:
    """Resources of ``include.source`` whose ``include.element`` holds one of ``references``."""
    store = current().store()
    if include.element == "subject":
        return [r for ref in references for r in store.resources(include.source, ref)]
    return store.referencing(include.source, include.element, references)


def _run(search: Search) -> tuple[list[dict], int, list[dict]]:
    """The page of ``search``, the number of matches and the resources included; blocking."""
    if search.resource_type == "AuditEvent":
        candidates = map(_audited, current().audit().rows(newest_first=True))
    else:
        candidates = current().store().resources(search.resource_type, search.subject)
    matched = search.order([r for r in candidates if search.matches(r)])
    page = matched[search.offset:search.offset + search.count]
    return page, len(matched), included(page, search.includes, search.revincludes, _read, _referencing)


@router.get("/{resource_type}")
async def search(resource_type: str, request: Request) -> JSONResponse:
    ctx = current()
    items = list(request.query_params.multi_items())
    try:
        parsed = parse_search(resource_type, items, strict=strict_handling(request.headers.get("prefer")))
    except SearchError as exc:
        status = 404 if resource_type not in PARAMETERS else 400
        return _fhir(operation_outcome(str(exc), "not-supported" if status == 404 else "invalid"), status)
    page, total, extra = await run_in_threadpool(_run, parsed)
    query = request.url.query or None
    subject = parsed.subject.split("/", 1)[1] if parsed.subject else None
    ctx.record(request, "search", resource_type=resource_type, query=query,
               detail=f"{len(page)} of {total} returned" + (f", {len(extra)} included" if extra else "")
               + (f" for Patient/{subject}" if subject else ""))
    return _fhir(searchset(parsed, page, base_url(), total, extra))


@router.get("/SearchParameter/{definition}")
def read_search_parameter(definition: str) -> JSONResponse:
    """A SearchParameter medgate defines (conformance, no patient data: not audited)."""
    found = search_parameter(definition, base_url())
    if found is None:
        return _fhir(operation_outcome(f"SearchParameter/{definition} is not known", "not-found"), 404)
    return _fhir(found)


def _not_modified(request: Request, etag: str, modified: datetime) -> bool:
    """Whether the client's copy is current: ``If-None-Match`` names ``etag`` (weak comparison,
    RFC 9110 13.1.2), or else ``If-Modified-Since`` is not before ``modified`` (13.1.3)."""
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
        return "*" in tags or etag.removeprefix("W/") in tags
    since = request.headers.get("if-modified-since")
    if since is None:
        return False
    try:
        return modified.replace(microsecond=0) <= parsedate_to_datetime(since)
    except (TypeError, ValueError):
        return False


@router.get("/{resource_type}/{resource_id}")
async def read(resource_type: str, resource_id: str, request: Request) -> Response:
    ctx = current()
    if resource_type not in PARAMETERS and resource_type not in READ_ONLY_TYPES:
        return _fhir(operation_outcome(f"resource type {resource_type!r} is not served", "not-supported"), 404)
    valid = FHIR_ID.fullmatch(resource_id) is not None
    resource = await run_in_threadpool(_read, resource_type, resource_id) if valid else None
    if resource is None:
        ctx.record(request, "read", "not-found", resource_type=resource_type,
                   resource_id=resource_id if valid else None, detail=None if valid else "not a FHIR id")
        message = f"{resource_type}/{resource_id[:80]} is not known" if valid else \
            f"{resource_id[:80]!r} is not a FHIR id ([A-Za-z0-9-.]{{1,64}})"
        return _fhir(operation_outcome(message, "not-found"), 404)
    ctx.record(request, "read", resource_type=resource_type, resource_id=resource_id)
    meta = resource["meta"]
    modified = parse_instant(meta["lastUpdated"])
    headers = {"ETag": f'W/"{meta["versionId"]}"', "Last-Modified": format_datetime(modified, usegmt=True)}
    if _not_modified(request, headers["ETag"], modified):
        return Response(status_code=304, headers=headers)
    return _fhir(resource, headers=headers)
