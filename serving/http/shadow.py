"""``GET /v1/models/{model}/shadow``: the shadow version against the current one on live traffic
(``GET /v1/models/shadows``: every model that runs one).

Agreement of their calls, each version's positive rate and the shadow's score differences over the
answering replica's shadow log (:meth:`serving.inference.deployments.ModelServer.shadow_report`,
:mod:`serving.inference.shadow`), as JSON for the monitoring page.  Every role may read it (under
``/v1/models``): scores and counts of no named patient, so the read is not audited.  An unknown
model is 404 naming the served ones; the name reaches no path, SQL or log.
"""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from serving.http.context import current

PATH = "/v1/models/{model}/shadow"
router = APIRouter()


@router.get(PATH)
async def shadow(model: str) -> JSONResponse:
    handles = current().models
    if model not in handles:
        return JSONResponse({"error": f"no model {model[:64]!r}; served: {sorted(handles)}"}, status_code=404)
    return JSONResponse(await handles[model].shadow_report.remote())


@router.get("/v1/models/shadows")
async def shadows() -> JSONResponse:
    """The figures of every model that runs a shadow version, for the monitoring page."""
    reports = []
    for name, handle in sorted(current().models.items()):
        try:
            report = await handle.shadow_report.remote()
        except Exception:  # noqa: BLE001 - a model that is down shows no shadow figures
            continue
        if report.get("shadow_version"):
            reports.append({"model": name, **report})
    return JSONResponse(reports)
