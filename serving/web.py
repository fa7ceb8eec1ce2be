"""Everything the ingress serves besides its own methods: guard, dashboard, ward, worklist,
system page and the FHIR read API.  :func:`install_routes` adds them to a FastAPI app."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, JSONResponse, Response

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


def install_routes(app: FastAPI) -> FastAPI:
    """Add the guard middleware and every route module to ``app``."""
    from serving import fhir_api, system_api, ward, web_auth, worklist

    app.middleware("http")(web_auth.guard)
    for router in (dashboard, web_auth.router, ward.router, worklist.router, system_api.router,
                   fhir_api.router):
        app.include_router(router)
    return app
