"""``GET /v1/system``: the dashboard's system page (engineers and admins).

Models (name, version, engine, device), the server's components, heartbeat and uptime, outbox items
by status (the local SQLite outbox), dead letters (total and still parked) and the number of
audit rows.  No patient data.
"""
from __future__ import annotations

import time

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from serving.components import read_components
from serving.http.context import current
from serving.store import Store

router = APIRouter()


def _counts(store: Store) -> dict:
    dead = store.vitals.dead_letter_counts()
    return {"outbox": store.outbox.status_counts(), "dead_letters": {"total": dead.total, "parked": dead.parked}}


@router.get("/v1/system")
async def system() -> dict:
    ctx = current()
    models = []
    for name, handle in ctx.models.items():
        try:
            models.append({**(await handle.info.remote()), "status": "ok"})
        except Exception as exc:  # noqa: BLE001 - show the model as down
            models.append({"name": name, "status": f"error: {type(exc).__name__}"})
    counts = await run_in_threadpool(_counts, ctx.store())
    status = read_components(ctx.state_dir)
    audit_rows = await run_in_threadpool(ctx.audit().count)
    return {"models": models, "components": status.get("components", {}),
            "heartbeat_age_s": round(time.time() - status["heartbeat"], 1) if status.get("heartbeat") else None,
            "uptime_s": round(time.time() - status["started_at"]) if status.get("started_at") else None,
            **counts, "audit_rows": audit_rows}
