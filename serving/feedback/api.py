"""HTTP endpoints of clinician feedback (each one audit row, refusals included).

- ``POST /v1/worklist/feedback``: a verdict on an imaging finding (:meth:`FeedbackService.on_finding`);
- ``GET /v1/worklist/feedback?study_uid=``: a study's verdicts, for the worklist;
- ``POST /v1/ward/alerts/{flag_id}/feedback``: a verdict on a ward alert (:meth:`FeedbackService.on_alert`).

They sit under the worklist's and the ward board's paths, so the guard's role matrix
(:mod:`serving.http.auth`) admits the clinical roles there; the service then checks the role the
verdict needs.  A refusal answers ``{"error": reason}`` with its status and stores nothing.

:func:`build_router` takes the web context's accessor (``serving.http.context.current``) so that
this package does not import the HTTP package that includes it.
"""
from __future__ import annotations

import json
import weakref
from typing import Any, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from dicom_gateway.uids import is_uid
from serving.feedback.service import BAD_REQUEST, FHIR_ID, FeedbackRefused, FeedbackService, Reviewer
from serving.feedback.store import FeedbackStore

#: Audit action of a verdict written (the audit log's actions: serving.governance.audit.ACTIONS).
WRITE_ACTION = "execute"
#: Largest feedback body read (bytes).
MAX_BODY = 64 * 1024
_services: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # server Store -> FeedbackService


def feedback_service(store) -> FeedbackService:
    """The service over ``store`` (one per store, its tables created once)."""
    service = _services.get(store)
    if service is None:
        service = _services[store] = FeedbackService(store, FeedbackStore(store.database))
    return service


async def read_json(request: Request) -> Any:
    """The request's JSON body; :class:`FeedbackRefused` (400) when it is not JSON or too large."""
    body = await request.body()
    if len(body) > MAX_BODY:
        raise FeedbackRefused(BAD_REQUEST, f"the body may be at most {MAX_BODY} bytes, {len(body)} are given")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FeedbackRefused(BAD_REQUEST, f"the body must be JSON: {exc}") from None


def _reviewer(request: Request) -> Reviewer:
    principal = getattr(request.state, "principal", None)
    return Reviewer(principal.name, principal.role) if principal else Reviewer("anonymous", None)


def build_router(context: Callable[[], Any]) -> APIRouter:
    """The feedback routes over the web context ``context()`` (store, audit)."""
    router = APIRouter()

    @router.post("/v1/worklist/feedback")
    async def finding_feedback(request: Request) -> JSONResponse:
        ctx, body = context(), None
        try:
            body = await read_json(request)
            item = await run_in_threadpool(feedback_service(ctx.store()).on_finding, _reviewer(request), body)
        except FeedbackRefused as exc:
            study = body.get("study_uid") if isinstance(body, dict) else None
            ctx.record(request, WRITE_ACTION, "denied" if exc.status == 403 else "error",
                       resource_type="Observation", study_uid=study if is_uid(study) else None,
                       query="finding feedback", detail=str(exc)[:300])
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        ctx.record(request, WRITE_ACTION, resource_type="Observation", resource_id=item.id,
                   study_uid=item.study_uid, query="finding feedback",
                   detail=f"{item.verdict} on {item.target} ({item.model} {item.model_version})")
        return JSONResponse(item.as_json(), status_code=201)

    @router.get("/v1/worklist/feedback")
    async def study_feedback(request: Request, study_uid: str = "") -> JSONResponse:
        ctx = context()
        try:
            items = await run_in_threadpool(feedback_service(ctx.store()).of_study, study_uid)
        except FeedbackRefused as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        ctx.record(request, "search", resource_type="Observation", study_uid=study_uid,
                   query="finding feedback", detail=f"{len(items)} verdicts")
        return JSONResponse({"study_uid": study_uid, "feedback": [f.as_json() for f in items]})

    @router.post("/v1/ward/alerts/{flag_id}/feedback")
    async def alert_feedback(flag_id: str, request: Request) -> JSONResponse:
        ctx = context()
        try:
            body = await read_json(request)
            item = await run_in_threadpool(feedback_service(ctx.store()).on_alert, _reviewer(request), flag_id, body)
        except FeedbackRefused as exc:
            ctx.record(request, WRITE_ACTION, "denied" if exc.status == 403 else "error", resource_type="Flag",
                       resource_id=flag_id if FHIR_ID.match(flag_id) else None, query="alert feedback",
                       detail=str(exc)[:300])
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        ctx.record(request, WRITE_ACTION, resource_type="Observation", resource_id=item.id,
                   query="alert feedback", detail=f"{item.verdict} on {item.target}")
        return JSONResponse(item.as_json(), status_code=201)

    return router
