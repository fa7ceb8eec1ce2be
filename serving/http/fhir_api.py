"""The read-only FHIR R4 API under ``/fhir`` over the local store (JSON only).

``GET /fhir/metadata``; ``GET /fhir/{type}?...`` searches (:mod:`serving.fhir.search`) and
``GET /fhir/{type}/{id}`` reads of Observation, DiagnosticReport, RiskAssessment, Flag and
AuditEvent (admin only); reads of ``Patient`` and of ``Device`` (the algorithm an imaging
Observation names in ``device``); ``GET /fhir/SearchParameter/{id}`` for the search parameters
medgate defines (:mod:`serving.fhir.capability`).  Each request that returns patient data, and
each Device read, is one audit row (a search is one row however many resources it returns).

Observations include those of the stored vitals messages, built when read
(:mod:`iomt.vital_records`).

Patients: a stored Patient (from an admission message) is returned as stored.  A patient known
only as the subject of stored resources (vitals carrying a patient identifier, no admission) is
returned with its id, ``active`` unknown and a ``meta.tag`` saying so: no name, gender or birth
date is invented, and the resource stays a valid R4 Patient (no element is required).
"""
from __future__ import annotations

import re
from datetime import datetime, timezone

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from serving.fhir.audit_event import audit_event
from serving.fhir.capability import READ_ONLY_TYPES, capability_statement, search_parameter
from serving.fhir.search import PARAMETERS, SearchError, operation_outcome, parse_search, searchset, \
    sort_newest_first
from serving.http.context import current

FHIR_JSON = "application/fhir+json"
REFERENCED_ONLY_TAG = {"system": "urn:medgate:patient-source", "code": "referenced-only",
                       "display": "Known only as the subject of stored resources; no demographics held"}
router = APIRouter(prefix="/fhir")


def _fhir(body: dict, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON)


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


def _stored(resource_type: str, subject: str | None) -> list[dict]:
    return current().store().resources(resource_type, subject)


def _read(resource_type: str, resource_id: str) -> dict | None:
    return current().store().resource(resource_type, resource_id)


def _known_subject(ref: str) -> bool:
    return current().store().has_subject(ref)


def _audit_events(search) -> tuple[list[dict], int]:
    """AuditEvents for a search: filtered in Python (the table is the source of truth)."""
    rows = current().audit().rows(newest_first=True)
    events = [e for e in map(audit_event, rows) if search.matches(e)]
    return events, len(events)


@router.get("/Patient/{patient_id}")
async def read_patient(patient_id: str, request: Request) -> JSONResponse:
    ctx = current()
    patient = await run_in_threadpool(ctx.store().resource, "Patient", patient_id)
    if patient is None:
        ref = f"Patient/{patient_id}"
        if not await run_in_threadpool(_known_subject, ref):
            ctx.record(request, "read", "not-found", resource_type="Patient", resource_id=patient_id)
            return _fhir(operation_outcome(f"Patient/{patient_id} is not known", "not-found"), 404)
        patient = {"resourceType": "Patient", "id": patient_id, "meta": {"tag": [REFERENCED_ONLY_TAG]}}
    ctx.record(request, "read", resource_type="Patient", resource_id=patient_id)
    return _fhir(patient)


@router.get("/SearchParameter/{definition}")
def read_search_parameter(definition: str) -> JSONResponse:
    """A SearchParameter medgate defines (conformance, no patient data: not audited)."""
    found = search_parameter(definition, base_url())
    if found is None:
        return _fhir(operation_outcome(f"SearchParameter/{definition} is not known", "not-found"), 404)
    return _fhir(found)


@router.get("/{resource_type}")
async def search(resource_type: str, request: Request) -> JSONResponse:
    ctx = current()
    items = list(request.query_params.multi_items())
    try:
        parsed = parse_search(resource_type, items)
    except SearchError as exc:
        status = 404 if resource_type not in PARAMETERS else 400
        return _fhir(operation_outcome(str(exc), "not-supported" if status == 404 else "invalid"), status)
    if resource_type == "AuditEvent":
        matched, total = await run_in_threadpool(_audit_events, parsed)
    else:
        stored = await run_in_threadpool(_stored, resource_type, parsed.subject)
        matched = sort_newest_first([r for r in stored if parsed.matches(r)], resource_type)
        total = len(matched)
    page = matched[parsed.offset:parsed.offset + parsed.count]
    query = request.url.query or None
    subject = parsed.subject.split("/", 1)[1] if parsed.subject else None
    ctx.record(request, "search", resource_type=resource_type, query=query,
               detail=f"{len(page)} of {total} returned" + (f" for Patient/{subject}" if subject else ""))
    return _fhir(searchset(parsed, page, base_url(), total))


@router.get("/{resource_type}/{resource_id}")
async def read(resource_type: str, resource_id: str, request: Request) -> JSONResponse:
    ctx = current()
    if resource_type not in PARAMETERS and resource_type not in READ_ONLY_TYPES:
        return _fhir(operation_outcome(f"resource type {resource_type!r} is not served", "not-supported"), 404)
    if resource_type == "AuditEvent":
        seq = audit_seq(resource_id)
        rows = ctx.audit().rows(since_seq=seq - 1, limit=1) if seq is not None else []
        resource = audit_event(rows[0]) if rows and rows[0]["seq"] == seq else None
    else:
        resource = await run_in_threadpool(_read, resource_type, resource_id)
    if resource is None:
        ctx.record(request, "read", "not-found", resource_type=resource_type, resource_id=resource_id)
        return _fhir(operation_outcome(f"{resource_type}/{resource_id} is not known", "not-found"), 404)
    ctx.record(request, "read", resource_type=resource_type, resource_id=resource_id)
    return _fhir(resource)
