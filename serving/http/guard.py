"""The HTTP guard (authentication + role check on every request) and the dashboard session.

Credentials: ``Authorization: Bearer <token>`` on any request; for GET/HEAD only, the HttpOnly
``medgate_session`` cookie that ``POST /v1/session`` sets (the browser's EventSource and ``<img>``
cannot send headers; see docs/security.md for why a cookie rather than a query parameter).  The
cookie holds a server-side session's random id (:mod:`serving.http.sessions`), never the token: it
expires after ``auth.cookie_max_age_s`` and ``DELETE /v1/session`` revokes it.
401 carries ``WWW-Authenticate: Bearer``; 403 names the roles allowed.  Refusals on patient-data
paths are audited.  Neither the token nor the cookie value is ever logged.
"""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from serving.http.asgi import HttpMiddleware
from serving.http.auth import SESSION_COOKIE, Principal, bearer, is_patient_data, required_roles
from serving.http.context import current

SAFE_METHODS = ("GET", "HEAD")
router = APIRouter()


def _principal(request: Request, ctx) -> Principal | None:
    """The bearer token's principal; for GET/HEAD without one, the session cookie's."""
    token = bearer(request.headers.get("authorization"))
    if token is not None:
        return ctx.authenticator.authenticate(token)
    session_id = request.cookies.get(SESSION_COOKIE) if request.method in SAFE_METHODS else None
    request.state.session_id = session_id  # long responses re-check it (WebContext.still_signed_in)
    return ctx.sessions().principal(session_id) if session_id else None


class Guard(HttpMiddleware):
    """ASGI middleware: 401 without a valid credential, 403 for a role the path does not allow; the
    principal of an allowed request is ``request.state.principal`` for the route."""

    async def handle(self, scope, receive, send) -> None:
        request = Request(scope)
        refusal = _refusal(request)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _refusal(request: Request) -> JSONResponse | None:
    """The 401 or 403 for ``request``, or None when it may go on (its principal then in its state)."""
    path = request.url.path
    roles = required_roles(path)
    if not roles:
        return None
    ctx = current()
    principal = _principal(request, ctx)
    if principal is None:
        if is_patient_data(path):
            ctx.record(request, "read", "denied", query=path, detail="no valid token")
        return JSONResponse({"error": "a valid bearer token is required"}, status_code=401,
                            headers={"WWW-Authenticate": 'Bearer realm="medgate"'})
    request.state.principal = principal  # the scope's state: the route's Request sees it
    if principal.role not in roles:
        if is_patient_data(path):
            ctx.record(request, "read", "denied", query=path, detail=f"role {principal.role} not allowed")
        return JSONResponse({"error": f"role {principal.role!r} may not call {path}; "
                                      f"allowed: {sorted(roles)}"}, status_code=403)
    return None


@router.get("/v1/whoami")
def whoami(request: Request) -> dict:
    principal = request.state.principal
    return {"name": principal.name, "role": principal.role}


@router.post("/v1/session")
def open_session(request: Request) -> Response:
    """Open a server-side session for the bearer token's principal and set its id as the cookie."""
    if bearer(request.headers.get("authorization")) is None:
        return JSONResponse({"error": "send the token as Authorization: Bearer"}, status_code=400)
    ctx = current()
    principal = request.state.principal
    session_id = ctx.sessions().open(principal, ctx.cookie_max_age_s)
    response = JSONResponse({"name": principal.name, "role": principal.role})
    response.set_cookie(SESSION_COOKIE, session_id, max_age=ctx.cookie_max_age_s, httponly=True,
                        samesite="strict", secure=_secure(request, ctx), path="/")
    return response


@router.delete("/v1/session")
def close_session(request: Request) -> Response:
    """Sign out: revoke the cookie's session (its id stops working everywhere) and clear the cookie."""
    ctx = current()
    revoked = ctx.sessions().revoke(request.cookies.get(SESSION_COOKIE) or "")
    response = JSONResponse({"closed": True, "revoked": revoked})
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                           secure=_secure(request, ctx))
    return response


def _secure(request: Request, ctx) -> bool:
    """Secure cookies when the client uses HTTPS (directly, via a trusted proxy, or as configured)."""
    return ctx.scheme(request) == "https" or ctx.link_base().startswith("https://")
