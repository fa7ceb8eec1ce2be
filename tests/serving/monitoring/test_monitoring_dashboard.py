"""The model monitoring page in headless Chromium (Playwright), on the web routes without Ray: generated
results of tb 1.1.0 from a steady site and a shifted one (and derm uploads), clinicians' verdicts;
the shifted site's card is flagged with its alert, the score chart is drawn against the reference,
and the page runs under the strict Content-Security-Policy.  The screenshot goes to the test's tmp
folder (and to docs/monitoring.png with ``MEDGATE_UPDATE_SCREENSHOTS=1``)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from models.reference import ModelReference
from models.registry import ModelRegistry
from serving.config import MonitoringConfig
from serving.feedback.store import FeedbackStore
from serving.monitoring import api, service
from serving.store import Store
from served import add_results, add_verdicts
from web_app import CHROMIUM, CHROMIUM_ARGS, WebApp, require_browser, sign_in

DOCS = Path(__file__).resolve().parents[3] / "docs"


def reference(name: str, version: str) -> ModelReference:
    return ModelReference.read(ModelRegistry().get(name, version).folder)


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    require_browser()
    root = tmp_path_factory.mktemp("monitoring-dashboard")
    store = Store(root / "medgate.sqlite3")
    tb = reference("tb", "1.1.0")
    steady = add_results(store, tb, "CXR_ROOM_1", 240, seed=1)
    shifted = add_results(store, tb, "CXR_WARD_B", 160, seed=2, score_bin=9, input_bin=9)
    add_results(store, reference("derm", "1.0.0"), None, 60, seed=3)
    feedback = FeedbackStore(store.database)
    add_verdicts(feedback, store, [s for s in steady if store.results_of(s)[0].summary["findings"][0]["positive"]][:20],
                 "tb", "1.1.0", agree=18, site="CXR_ROOM_1")
    add_verdicts(feedback, store, shifted[:20], "tb", "1.1.0", agree=9, site="CXR_WARD_B")
    store.close()
    api.configure(MonitoringConfig(cache_s=0))
    with WebApp(root) as app:
        yield app
    service.install(None)


def test_the_monitoring_page_shows_figures_charts_and_the_alert(web, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1180, "height": 900}, locale="en-GB")
        page = context.new_page()
        refused = []
        page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
        sign_in(page, web.url, "engineer")
        page.click('#tabs a[data-tab="monitoring"]')
        shifted = page.wait_for_selector('.mon-card.alerted[data-group="tb/1.1.0/CXR_WARD_B"]', timeout=30_000)
        assert "Score PSI" in shifted.inner_text() and "45.0% (20 verdicts)" in shifted.inner_text()
        steady = page.query_selector('.mon-card[data-group="tb/1.1.0/CXR_ROOM_1"]')
        assert "alerted" not in steady.get_attribute("class") and "90.0% (20 verdicts)" in steady.inner_text()
        assert steady.query_selector("svg.mon-chart rect.served") and steady.query_selector("svg.mon-chart rect.reference")
        assert page.query_selector('.mon-card[data-group="derm/1.0.0/upload"]') is not None
        alerts = page.inner_text("#mon-alerts")
        assert "tb 1.1.0 at site CXR_WARD_B: score PSI" in alerts and "agreement with clinicians 0.450" in alerts
        path = tmp_path / "monitoring.png"
        page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        if os.environ.get("MEDGATE_UPDATE_SCREENSHOTS") == "1":
            shutil.copy(path, DOCS / "monitoring.png")
        browser.close()
    assert refused == []


def test_the_monitoring_page_compares_a_shadow_version_with_the_served_one(tmp_path):
    """A tb candidate deployed as a shadow: its card shows the items compared, the agreement and
    both positive rates (GET /v1/models/shadows over the deployment's shadow log)."""
    import numpy as np
    from playwright.sync_api import sync_playwright

    from serving.inference.deployments import ModelServer
    from test_shadow_route import LocalHandle

    versions = ModelRegistry().versions("tb")
    if len(versions) < 2 or not Path(CHROMIUM).exists():
        pytest.skip(reason=f"needs two tb versions ({versions}) and {CHROMIUM}")
    server = ModelServer("tb", {"max_batch_size": 4})
    server.reconfigure({"version": versions[0], "shadow_version": versions[-1]})
    size = server.active.manifest.input_size_px
    server.run_batch(list(np.random.default_rng(0).random((4, 1, size, size), dtype=np.float32)))
    with WebApp(tmp_path, models={"tb": LocalHandle(server)}) as app, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(locale="en-GB")
        sign_in(page, app.url, "engineer")
        page.click('#tabs a[data-tab="monitoring"]')
        card = page.wait_for_selector('.mon-card[data-shadow="tb"]', timeout=30_000)
        text = card.inner_text()
        assert f"tb {versions[0]}" in text and f"shadow {versions[-1]}" in text and "Items compared" in text
        assert "%" in text and "Score difference" in text
        browser.close()
