"""The HTTP ingress (Ray Serve + FastAPI): health, readiness and model listing.

``/healthz`` answers as long as the HTTP path works; ``/readyz`` answers 200 only when every model
deployment responds and the server's other components (DICOM SCP, MQTT bridge) report ready
through the status file the server process keeps under ``state_dir``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

#: The status file is stale (its writer is gone) after this long without a heartbeat.
STATUS_STALE_S = 15.0
STATUS_FILE = "components.json"

api = FastAPI(title="medgate", version="0.1.0",
              description="AI clinical decision support server. Not for clinical use.")


def read_components(state_dir: Path) -> dict:
    try:
        return json.loads((state_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}


@serve.deployment(name="ingress", ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Ingress:
    def __init__(self, models: dict[str, DeploymentHandle], state_dir: str) -> None:
        self.models = models
        self.state_dir = Path(state_dir)

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        checks: dict[str, str] = {}
        for name, handle in self.models.items():
            try:
                await handle.info.remote()
                checks[f"model:{name}"] = "ok"
            except Exception as exc:  # noqa: BLE001 - report, don't raise
                checks[f"model:{name}"] = f"error: {exc}"
        status = read_components(self.state_dir)
        fresh = time.time() - status.get("heartbeat", 0) < STATUS_STALE_S
        for name, state in status.get("components", {}).items():
            checks[name] = state if fresh else "stale"
        if not status:
            checks["server"] = "not started"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @api.get("/v1/models")
    async def list_models(self) -> list[dict]:
        return [await h.info.remote() for h in self.models.values()]
