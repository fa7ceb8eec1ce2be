"""Security headers on every HTTP response (middleware, so ingress routes get them too).

* ``Content-Security-Policy`` (CSP Level 3): scripts, styles, images and connections from this
  origin only, no inline script or style, no plugins, no framing, no ``<base>``; the dashboard
  keeps its script and style in files (``serving/http/dashboard``) so it runs under it.
* ``X-Content-Type-Options: nosniff`` (Fetch Standard): a result file is never run as script.
* ``X-Frame-Options: DENY`` (RFC 7034) beside ``frame-ancestors 'none'`` for older browsers.
* ``Referrer-Policy: no-referrer`` (W3C Referrer Policy): no URL of ours travels to another site.
* ``Cache-Control: no-store`` (RFC 9111 5.2.2.5) on every response that needed a credential
  (patient data and everything else behind the guard): no copy in browser or proxy caches.

An unhandled exception never reaches the middleware (Starlette answers it outside every middleware,
in ``ServerErrorMiddleware``): :func:`server_error` is installed as its handler and sets the same
headers itself on a JSON 500 that names no internals (the traceback goes to the log).
"""
from __future__ import annotations

import logging

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders

from serving.http.asgi import HttpMiddleware
from serving.http.auth import is_patient_data, required_roles

CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                           "connect-src 'self'; object-src 'none'; frame-ancestors 'none'; "
                           "base-uri 'none'; form-action 'self'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
NO_STORE = "no-store"
#: RFC 9110 15.6.1.
INTERNAL_SERVER_ERROR = 500
log = logging.getLogger("medgate.http")


def private(path: str) -> bool:
    """True for responses no cache may keep: patient data and every path behind the guard."""
    return is_patient_data(path) or bool(required_roles(path))


class SecurityHeaders(HttpMiddleware):
    """ASGI middleware: add :data:`SECURITY_HEADERS`, and ``Cache-Control: no-store`` on private paths,
    to the start of every HTTP response."""

    async def handle(self, scope, receive, send) -> None:
        no_store = private(Request(scope).url.path)

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                if no_store:
                    headers["Cache-Control"] = NO_STORE
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def server_error(request: Request, exc: Exception) -> JSONResponse:
    """Exception handler of last resort: a JSON 500 with every security header and ``no-store``
    whatever the path (an error may be about patient data); the exception is logged, not sent."""
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path[:200],
              exc_info=(type(exc), exc, exc.__traceback__))
    return JSONResponse({"error": "internal server error; the server log has the details"},
                        status_code=INTERNAL_SERVER_ERROR, headers={**SECURITY_HEADERS, "Cache-Control": NO_STORE})
