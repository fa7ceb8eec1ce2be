"""GET /v1/models/monitoring over the web routes (guard included, no Ray): every role reads the
figures (no patient data, so nothing is audited); no token gets 401."""
from __future__ import annotations

import pytest
import requests

from models.reference import ModelReference
from models.registry import ModelRegistry
from serving.config import MonitoringConfig
from serving.governance.audit import AuditLog
from serving.monitoring import api, service
from serving.store import Store
from served import add_results
from web_app import TOKENS, WebApp, auth

REFERENCE = ModelReference.read(ModelRegistry().get("tb", "1.1.0").folder)


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    root = tmp_path_factory.mktemp("monitoring")
    store = Store(root / "medgate.sqlite3")
    add_results(store, REFERENCE, "CXR_SHIFTED", 150, seed=2, score_bin=9, input_bin=9)
    store.close()
    api.configure(MonitoringConfig(cache_s=0))
    with WebApp(root) as app:
        yield app
    service.install(None)


@pytest.mark.parametrize("role", sorted(TOKENS))
def test_every_role_reads_the_figures(web, role):
    r = requests.get(f"{web.url}{api.PATH}", headers=auth(role), timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    group = body["groups"][0]
    assert (group["model"], group["version"], group["site"], group["n"]) == ("tb", "1.1.0", "CXR_SHIFTED", 150)
    assert group["score_psi"] > 0.25 and "score_psi" in group["alerts"]
    assert group["reference"]["n"] == REFERENCE.n and body["lines"]["score_psi"] == 0.25
    assert any(a["site"] == "CXR_SHIFTED" and a["kind"] == "score_psi" for a in body["alerts"])
    assert r.headers["content-security-policy"]  # the security headers as on every route


def test_no_token_is_refused(web):
    assert requests.get(f"{web.url}{api.PATH}", timeout=10).status_code == 401


def test_reads_are_not_audited(web):
    requests.get(f"{web.url}{api.PATH}", headers=auth("admin"), timeout=10)
    assert AuditLog(web.context.db_path).rows(where={"who": "admin user"}) == []
