"""``GET /v1/models/{model}/shadow`` over HTTP: a deployment's shadow figures for the monitoring page.

The model handle is the deployment's core (:class:`ModelServer`) called in-process where Ray Serve
would forward the call to a replica.
"""
from __future__ import annotations

import numpy as np
import pytest
import requests

from models.registry import ModelRegistry
from serving.inference.deployments import ModelServer
from web_app import WebApp, auth


class _Remote:
    def __init__(self, function) -> None:
        self.function = function

    async def remote(self):
        return self.function()


class LocalHandle:
    """What the route calls on a Ray deployment handle, answered by ``server``."""

    def __init__(self, server: ModelServer) -> None:
        self.shadow_report = _Remote(server.shadow_report)


def test_the_shadow_figures_are_served_to_every_role_and_an_unknown_model_is_404(tmp_path):
    versions = ModelRegistry().versions("tb")
    if len(versions) < 2:
        pytest.skip(reason=f"one registered tb version ({versions}); a shadow needs two")
    server = ModelServer("tb", {"max_batch_size": 4})
    server.reconfigure({"version": versions[0], "shadow_version": versions[-1]})
    size = server.active.manifest.input_size_px
    server.run_batch(list(np.random.default_rng(0).random((3, 1, size, size), dtype=np.float32)))
    with WebApp(tmp_path, models={"tb": LocalHandle(server)}) as web:
        url = f"{web.url}/v1/models/tb/shadow"
        assert requests.get(url, timeout=10).status_code == 401
        for role in ("clinician", "engineer"):
            reply = requests.get(url, headers=auth(role), timeout=10)
            assert reply.status_code == 200
        figures = reply.json()
        assert (figures["version"], figures["shadow_version"], figures["items"]) == (versions[0], versions[-1], 3)
        assert 0.0 <= figures["agreement"] <= 1.0 and set(figures["score_difference"]) == {"mean", "mean_abs", "max_abs"}
        missing = requests.get(f"{web.url}/v1/models/nodule-x/shadow", headers=auth("clinician"), timeout=10)
        assert missing.status_code == 404 and "served: ['tb']" in missing.json()["error"]
        listed = requests.get(f"{web.url}/v1/models/shadows", headers=auth("engineer"), timeout=10).json()
        assert [r["model"] for r in listed] == ["tb"] and listed[0]["items"] == 3  # what the monitoring page shows
