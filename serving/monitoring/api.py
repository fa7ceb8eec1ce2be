"""``GET /v1/models/monitoring``: live model monitoring figures as JSON (docs/monitoring.md).

Under ``/v1/models`` every role may read it (clinicians, engineers, admins): the figures are counts
and shares per model version and site, no patient data, so the read is not audited.  ``?fresh=1``
skips the ``monitoring.cache_s`` reuse.

The ``monitoring`` configuration section reaches this module through :func:`configure`; until it
is called, the monitor reads it once from the configuration file (``$MEDGATE_CONFIG`` and the
environment, as every medgate process does).  :func:`build_router` takes the web context's
accessor so that this package does not import the HTTP package that includes it, and installs the
monitor ``/metrics`` reads (:func:`serving.monitoring.service.install`).
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from serving.config import MonitoringConfig, load_config
from serving.feedback.store import FeedbackStore
from serving.monitoring import service
from serving.monitoring.service import Monitor
from serving.monitoring.window import ResultWindow

PATH = "/v1/models/monitoring"
_lock = threading.Lock()
_section: MonitoringConfig | None = None
_monitors: dict[Any, Monitor] = {}


def configure(section: MonitoringConfig) -> None:
    """Use ``section`` (the ``monitoring`` configuration) from now on; figures and alerts start afresh."""
    global _section
    with _lock:
        _section = section
        _monitors.clear()


def monitor_of(store) -> Monitor:
    """This process's monitor over ``store`` (one per store)."""
    global _section
    with _lock:
        if _section is None:
            _section = load_config().monitoring
        monitor = _monitors.get(store)
        if monitor is None:
            monitor = _monitors[store] = Monitor(ResultWindow(store), store, FeedbackStore(store.database),
                                                 _section)
        return monitor


def build_router(context: Callable[[], Any]) -> APIRouter:
    """The monitoring route over the web context ``context()`` (its store)."""
    router = APIRouter()
    service.install(lambda: monitor_of(context().store()))

    @router.get(PATH)
    async def monitoring(fresh: str = "") -> JSONResponse:
        report = await run_in_threadpool(monitor_of(context().store()).report, fresh == "1")
        return JSONResponse(report.as_json())

    return router
