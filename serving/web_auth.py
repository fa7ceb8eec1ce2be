"""The HTTP guard (authentication + role check on every request) and the dashboard session.

Credentials: ``Authorization: Bearer <token>`` on any request; for GET/HEAD only, the HttpOnly
``medgate_session`` cookie that ``POST /v1/session`` sets (the browser's EventSource and ``<img>``
cannot send headers; see docs/security.md for why a cookie rather than a query parameter).
401 carries ``WWW-Authenticate: Bearer``; 403 names the roles allowed.  Refusals on patient-data
paths are audited.  Neither the token nor the cookie value is ever logged.
"""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from serving.auth import SESSION_COOKIE, bearer, is_patient_data, required_roles
from serving.web_context import current

SAFE_METHODS = ("GET", "HEAD")
router = APIRouter()


def _credential(request: Request) -> str | None:
    token = bearer(request.headers.get("authorization"))
    if token is None and request.method in SAFE_METHODS:
        token = request.cookies.get(SESSION_COOKIE) or None
    return token


async def guard(request: Request, call_next):
    """Middleware: 401 without a valid credential, 403 for a role the path does not allow."""
    path = request.url.path
    roles = required_roles(path)
    if not roles:
        return await call_next(request)
    ctx = current()
    token = _credential(request)
    principal = ctx.authenticator.authenticate(token) if token else None
    if principal is None:
        if is_patient_data(path):
            ctx.record(request, "read", "denied", query=path, detail="no valid token")
        return JSONResponse({"error": "a valid bearer token is required"}, status_code=401,
                            headers={"WWW-Authenticate": 'Bearer realm="medgate"'})
    request.state.principal = principal
    if principal.role not in roles:
        if is_patient_data(path):
            ctx.record(request, "read", "denied", query=path, detail=f"role {principal.role} not allowed")
        return JSONResponse({"error": f"role {principal.role!r} may not call {path}; "
                                      f"allowed: {sorted(roles)}"}, status_code=403)
    return await call_next(request)


@router.get("/v1/whoami")
def whoami(request: Request) -> dict:
    principal = request.state.principal
    return {"name": principal.name, "role": principal.role}


@router.post("/v1/session")
def open_session(request: Request) -> Response:
    """Set the session cookie from the bearer token of this request (the dashboard's log-in)."""
    token = bearer(request.headers.get("authorization"))
    if token is None:
        return JSONResponse({"error": "send the token as Authorization: Bearer"}, status_code=400)
    principal = request.state.principal
    response = JSONResponse({"name": principal.name, "role": principal.role})
    response.set_cookie(SESSION_COOKIE, token, max_age=current().cookie_max_age_s, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https", path="/")
    return response


@router.delete("/v1/session")
def close_session() -> Response:
    response = JSONResponse({"closed": True})
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
