"""Security headers on every HTTP response (middleware, so ingress routes get them too).

* ``Content-Security-Policy`` (CSP Level 3): scripts, styles, images and connections from this
  origin only, no inline script or style, no plugins, no framing, no ``<base>``; the dashboard
  keeps its script and style in files (``serving/dashboard``) so it runs under it.
* ``X-Content-Type-Options: nosniff`` (Fetch Standard): a result file is never run as script.
* ``X-Frame-Options: DENY`` (RFC 7034) beside ``frame-ancestors 'none'`` for older browsers.
* ``Referrer-Policy: no-referrer`` (W3C Referrer Policy): no URL of ours travels to another site.
* ``Cache-Control: no-store`` (RFC 9111 5.2.2.5) on every response that needed a credential
  (patient data and everything else behind the guard): no copy in browser or proxy caches.
"""
from __future__ import annotations

from fastapi import Request

from serving.auth import is_patient_data, required_roles

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


def private(path: str) -> bool:
    """True for responses no cache may keep: patient data and every path behind the guard."""
    return is_patient_data(path) or bool(required_roles(path))


async def security_headers(request: Request, call_next):
    """Middleware: add :data:`SECURITY_HEADERS`, and ``Cache-Control: no-store`` on private paths."""
    response = await call_next(request)
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    if private(request.url.path):
        response.headers["Cache-Control"] = NO_STORE
    return response
