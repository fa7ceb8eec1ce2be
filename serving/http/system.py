"""``GET /v1/system``: the dashboard's system page (engineers and admins).

Models (name, version, engine, device), the server's components (its nodes where several run some
roles each: :meth:`serving.http.context.WebContext.server_status`), heartbeat and uptime, outbox items
by status (the configured outbox backend, as ``/metrics``), dead letters (total and still parked) and the number of
audit rows.  No patient data.
"""
from __future__ import annotations

import time

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from serving.http.context import current

router = APIRouter()


def _counts(ctx) -> dict:
    """Outbox items by status from the configured backend (what ``/metrics`` counts too), and the
    dead letters of the local store."""
    dead = ctx.store().vitals.dead_letter_counts()
    try:
        outbox = ctx.outbox_db().status_counts()
    except Exception as exc:  # noqa: BLE001 - the page still shows the rest
        ctx.forget_outbox_db()
        outbox = {"error": f"{type(exc).__name__}: the outbox backend cannot be read"}
    return {"outbox": outbox, "dead_letters": {"total": dead.total, "parked": dead.parked}}


@router.get("/v1/system")
async def system() -> dict:
    ctx = current()
    models = []
    for name, handle in ctx.models.items():
        try:
            models.append({**(await handle.info.remote()), "status": "ok"})
        except Exception as exc:  # noqa: BLE001 - show the model as down
            models.append({"name": name, "status": f"error: {type(exc).__name__}"})
    counts = await run_in_threadpool(_counts, ctx)
    status = await run_in_threadpool(ctx.server_status)
    audit_rows = await run_in_threadpool(ctx.audit().count)
    return {"models": models, "components": status["components"],
            "heartbeat_age_s": round(time.time() - status["heartbeat"], 1) if status.get("heartbeat") else None,
            "uptime_s": round(time.time() - status["started_at"]) if status.get("started_at") else None,
            **counts, "audit_rows": audit_rows}
