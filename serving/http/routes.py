"""Everything the ingress serves besides its own methods: guard, security headers, dashboard,
ward, worklist, system page, the FHIR read API, DICOMweb's QIDO-RS and WADO-RS (STOW-RS is the
ingress's own), clinician feedback (:mod:`serving.feedback.api`), CDS Hooks (:mod:`serving.cds.api`), model
monitoring (:mod:`serving.monitoring.api`) and the shadow version's comparison (:mod:`serving.http.shadow`).
:func:`install_routes` adds them to a FastAPI app.

The interactive API pages (``/docs``, ``/redoc``) are removed: FastAPI's Swagger UI and ReDoc load
their script from a CDN (unreachable on an offline hospital network) and run inline script, which
the Content-Security-Policy forbids.  ``/openapi.json`` stays (engineers and admins); any OpenAPI
viewer opens the downloaded file.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, JSONResponse, Response

from serving.cds import api as cds_api
from serving.feedback import api as feedback_api
from serving.monitoring import api as monitoring_api
from serving.http import fhir_api, guard, headers, qido, shadow, system, wado, ward, worklist
from serving.http.context import current

DASHBOARD_DIR = Path(__file__).parent / "dashboard"
_MEDIA = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
dashboard = APIRouter()


@dashboard.get("/", include_in_schema=False)
def index() -> Response:
    return FileResponse(DASHBOARD_DIR / "index.html", media_type=_MEDIA[".html"],
                        headers={"Cache-Control": "no-cache"})


@dashboard.get("/dashboard/{name}", include_in_schema=False)
def asset(name: str) -> Response:
    path = DASHBOARD_DIR / name
    if "/" in name or name.startswith(".") or path.suffix not in _MEDIA or not path.is_file():
        return JSONResponse({"error": "no such file"}, status_code=404)
    return FileResponse(path, media_type=_MEDIA[path.suffix], headers={"Cache-Control": "no-cache"})


#: FastAPI's CDN-backed documentation pages, removed by :func:`install_routes`.
CDN_DOC_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc")


def _remove_cdn_docs(app: FastAPI) -> None:
    app.docs_url = app.redoc_url = app.swagger_ui_oauth2_redirect_url = None
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in CDN_DOC_PATHS]


def install_routes(app: FastAPI) -> FastAPI:
    """Add the guard and security-header middleware and every route module to ``app``.

    Starlette's trailing-slash redirect is turned off: it builds its ``Location`` from the request's
    Host header (``/healthz/`` answered ``Location: http://evil.example/healthz``); a path with a
    stray slash is a 404 like any other unknown path.  An unhandled exception is answered by
    :func:`serving.http.headers.server_error` (JSON, security headers, no internals)."""
    _remove_cdn_docs(app)
    app.router.redirect_slashes = False
    app.add_exception_handler(Exception, headers.server_error)
    app.add_middleware(guard.Guard)
    app.add_middleware(headers.SecurityHeaders)  # added last = outermost: 401/403 get them too
    for router in (dashboard, guard.router, ward.router, worklist.router, system.router, shadow.router,
                   fhir_api.router, qido.router, wado.router, feedback_api.build_router(current),
                   cds_api.build_router(current), monitoring_api.build_router(current)):
        app.include_router(router)
    return app
