"""The CDS Hooks 2.0 HTTP endpoints (https://cds-hooks.hl7.org/2.0/).

- ``GET /cds-services``: discovery (no patient data; no JWT needed);
- ``POST /cds-services/{id}``: a hook call; the cards of :class:`serving.cds.service.CdsHooks`;
- ``POST /cds-services/{id}/feedback``: the EHR's feedback on cards (accepted / overridden).

A hook call or feedback without a valid client JWT (:mod:`serving.cds.trust`; ``aud`` is
``http.public_base_url`` + the path) gets 401 with ``WWW-Authenticate: Bearer`` and the reason; a
malformed request 400 and an unknown service or card 404, each with ``{"error": reason}``.  Every
call and every refusal is one audit row, the client's ``iss`` as who.

The ``cds`` configuration section reaches this module through :func:`configure`; until it is
called, it is read once from :data:`CDS_SECTION_ENV` (``medgate serve`` sets it before Ray starts
the ingress), else from the configuration file (``$MEDGATE_CONFIG`` and the environment).  :func:`build_router` takes the web context's
accessor so that this package does not import the HTTP package that includes it.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from serving.cds.discovery import SERVICES, discovery
from serving.cds.service import BAD_REQUEST, CdsHooks, HookRefused
from serving.cds.trust import ClientTrust, UntrustedClient
from serving.config import CdsConfig, load_config
from serving.feedback.api import feedback_service
from serving.feedback.service import CDS_CLIENT_ROLE, FeedbackRefused

PREFIX = "/cds-services"
#: Largest hook request read (bytes): a prefetch of a few resources.
MAX_BODY = 4 * 1024 * 1024
#: Audit action of recorded feedback (serving.governance.audit.ACTIONS has no create).
WRITE_ACTION = "execute"
UNAUTHORIZED = 401
#: The ``cds`` section as JSON, set by ``medgate serve`` for the ingress in Ray's workers
#: (serving.server; a name outside the ``MEDGATE_<KEY>`` settings).
CDS_SECTION_ENV = "MEDGATE_CDS_SECTION"

_lock = threading.Lock()
_section: CdsConfig | None = None
_trust: ClientTrust | None = None


@dataclass(frozen=True)
class _Caller:
    """The audit log's view of a CDS Client (``request.state.principal``: name and role)."""

    name: str
    role: str = CDS_CLIENT_ROLE


def configure(section: CdsConfig) -> None:
    """Use ``section`` (the ``cds`` configuration) from now on; the client trust starts afresh."""
    global _section, _trust
    with _lock:
        _section, _trust = section, ClientTrust.of(section)


def configured_section() -> CdsConfig:
    """The ``cds`` section the process that started this one passed in :data:`CDS_SECTION_ENV`
    (``medgate serve`` does, for Ray's workers), else the configuration file's."""
    passed = os.environ.get(CDS_SECTION_ENV)
    return CdsConfig.model_validate_json(passed) if passed else load_config().cds


def _configured() -> tuple[CdsConfig, ClientTrust]:
    global _section, _trust
    with _lock:
        if _section is None:
            _section = configured_section()
        if _trust is None:
            _trust = ClientTrust.of(_section)
        return _section, _trust


async def _body(request: Request) -> Any:
    data = await request.body()
    if len(data) > MAX_BODY:
        raise HookRefused(413, f"the request may be at most {MAX_BODY} bytes, {len(data)} are given")
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HookRefused(BAD_REQUEST, f"the body must be JSON: {exc}") from None


def _named(service_id: str) -> str:
    """The service as the audit log names it: one of ours, never what a request made up."""
    return service_id if service_id in SERVICES else "(unknown service)"


def _error(status: int, reason: str) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="medgate cds-services"'} if status == UNAUTHORIZED else None
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


def build_router(context: Callable[[], Any]) -> APIRouter:
    """The CDS Hooks routes over the web context ``context()`` (store, audit, link base)."""
    router = APIRouter(prefix=PREFIX)

    def hooks(ctx) -> CdsHooks:
        section, _ = _configured()
        return CdsHooks(ctx.store(), feedback_service(ctx.store()), ctx.link_base(),
                        smart_app_url=section.smart_app_url, fhir_timeout_s=section.fhir_timeout_s)

    def authenticate(request: Request, ctx, *paths: str):
        _, trust = _configured()
        if not ctx.link_base():
            raise UntrustedClient("http.public_base_url is not configured: the JWT's aud (this service's URL) "
                                  "cannot be checked")
        client = trust.verify(request.headers.get("authorization"), [ctx.link_base() + p for p in paths])
        request.state.principal = _Caller(client.iss if client.subject is None else f"{client.iss} ({client.subject})")
        return client

    @router.get("")
    def services() -> JSONResponse:
        return JSONResponse(discovery())

    @router.post("/{service_id}")
    async def call(service_id: str, request: Request) -> JSONResponse:
        ctx = context()
        try:
            client = await run_in_threadpool(authenticate, request, ctx, f"{PREFIX}/{service_id}")
            body = await _body(request)
            answer = await run_in_threadpool(hooks(ctx).call, service_id, body, client)
        except UntrustedClient as exc:
            ctx.record(request, "read", "denied", resource_type="Patient", query=f"cds {_named(service_id)}",
                       detail=str(exc)[:300])
            return _error(UNAUTHORIZED, str(exc))
        except HookRefused as exc:
            ctx.record(request, "read", "error", resource_type="Patient", query=f"cds {_named(service_id)}",
                       detail=str(exc)[:300])
            return _error(exc.status, str(exc))
        ctx.record(request, "read", resource_type="Patient", resource_id=body["context"]["patientId"],
                   query=f"cds {service_id}", detail=f"{len(answer['cards'])} cards for {client.iss[:120]}")
        return JSONResponse(answer)

    @router.post("/{service_id}/feedback")
    async def feedback(service_id: str, request: Request) -> JSONResponse:
        ctx = context()
        try:
            client = await run_in_threadpool(authenticate, request, ctx, f"{PREFIX}/{service_id}",
                                             f"{PREFIX}/{service_id}/feedback")
            body = await _body(request)
            items = await run_in_threadpool(hooks(ctx).record_feedback, service_id, body, client)
        except UntrustedClient as exc:
            ctx.record(request, WRITE_ACTION, "denied", query=f"cds feedback {_named(service_id)}", detail=str(exc)[:300])
            return _error(UNAUTHORIZED, str(exc))
        except (HookRefused, FeedbackRefused) as exc:
            ctx.record(request, WRITE_ACTION, "error", query=f"cds feedback {_named(service_id)}", detail=str(exc)[:300])
            return _error(exc.status, str(exc))
        ctx.record(request, WRITE_ACTION, resource_type="Observation", query=f"cds feedback {service_id}",
                   detail=", ".join(f"{f.verdict} {f.target}" for f in items)[:300])
        return JSONResponse({"recorded": len(items)})

    return router
