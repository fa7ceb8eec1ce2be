"""Clinician feedback over HTTP (the web routes, guard included, without Ray): verdicts on findings
and alerts are stored per model version with who and when, served as FHIR Observations, audited;
an unknown finding or alert, or a role not allowed, gets a 4xx with the reason and stores nothing."""
from __future__ import annotations

import pytest
import requests

from clinical_data import FLAG_ID, fill
from serving.feedback.store import FeedbackStore
from serving.governance.audit import AuditLog
from serving.store import Store
from web_app import TOKENS, WebApp, auth


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    root = tmp_path_factory.mktemp("feedback")
    store = Store(root / "medgate.sqlite3")
    data = fill(store)
    store.close()
    with WebApp(root) as app:
        yield app, data


def stored(app) -> int:
    return len(FeedbackStore(app.context.db_path).of_model("tb")) + len(FeedbackStore(app.context.db_path)
                                                                       .of_model("news2"))


def test_a_disagreement_is_stored_served_as_fhir_and_audited(web):
    app, data = web
    body = {"study_uid": data["study_uid"], "model": "tb", "version": "1.0.0", "finding": 1,
            "verdict": "disagree", "reason": "false-positive", "comment": "old scarring"}
    r = requests.post(f"{app.url}/v1/worklist/feedback", json=body, headers=auth("clinician"), timeout=10)
    assert r.status_code == 201, r.text
    item = r.json()
    assert (item["who"], item["role"], item["version"], item["reason"]) == \
        ("clinician user", "clinician", "1.0.0", "false-positive")
    finding = data["observations"][0]
    assert item["target"] == f"Observation/{finding['id']}"  # the id the FHIR report gave the finding
    fhir = requests.get(f"{app.url}/fhir/Observation/{item['id']}", headers=auth("clinician"), timeout=10).json()
    assert fhir["derivedFrom"] == [{"reference": f"Observation/{finding['id']}"}]
    assert fhir["subject"]["reference"] == finding["subject"]["reference"]
    assert fhir["device"]["reference"] == f"Device/{data['device']['id']}"
    rows = AuditLog(app.context.db_path).rows(where={"query": "finding feedback", "outcome": "success"})
    assert rows[-1]["resource_id"] == item["id"] and rows[-1]["who"] == "clinician user"


def test_a_missed_finding_with_its_point_is_listed_for_the_study(web):
    app, data = web
    body = {"study_uid": data["study_uid"], "model": "tb", "version": "1.0.0", "finding": None,
            "verdict": "disagree", "reason": "missed-finding", "point_fraction": [0.3, 0.6]}
    r = requests.post(f"{app.url}/v1/worklist/feedback", json=body, headers=auth("clinician"), timeout=10)
    assert r.status_code == 201, r.text
    assert r.json()["target"] == f"DiagnosticReport/{data['report']['id']}"
    listed = requests.get(f"{app.url}/v1/worklist/feedback", params={"study_uid": data["study_uid"]},
                          headers=auth("clinician"), timeout=10).json()["feedback"]
    assert [0.3, 0.6] in [f["point_fraction"] for f in listed]


@pytest.mark.parametrize("role, change, status, reason", [
    ("clinician", {"finding": 5}, 404, "has 2 finding(s) on study"),
    ("clinician", {"version": "9.9.9"}, 404, "has no result of tb 9.9.9"),
    ("clinician", {"study_uid": "1.2.3.999"}, 404, "study 1.2.3.999 has no result of tb 1.0.0"),
    ("clinician", {"study_uid": "../etc"}, 400, "study_uid must be a UID"),
    ("clinician", {"verdict": "maybe"}, 422, "'maybe' is not a valid Verdict"),
    ("clinician", {"reason": None}, 422, "a disagreement needs a reason"),
    ("admin", {}, 403, "role 'admin' may not judge findings"),
    ("engineer", {}, 403, "role 'engineer' may not call /v1/worklist/feedback"),
])
def test_bad_finding_feedback_is_refused_with_its_reason_and_nothing_stored(web, role, change, status, reason):
    app, data = web
    before = stored(app)
    body = {"study_uid": data["study_uid"], "model": "tb", "version": "1.0.0", "finding": 2,
            "verdict": "disagree", "reason": "wrong-location", **change}
    r = requests.post(f"{app.url}/v1/worklist/feedback", json=body, headers=auth(role), timeout=10)
    assert r.status_code == status and reason in r.json()["error"], r.text
    assert stored(app) == before


def test_ward_staff_judge_an_alert_and_an_unknown_alert_is_refused(web):
    app, _ = web
    url = f"{app.url}/v1/ward/alerts/{FLAG_ID}/feedback"
    r = requests.post(url, json={"verdict": "not-helpful", "comment": "sensor off"}, headers=auth("clinician"),
                      timeout=10)
    assert r.status_code == 201, r.text
    assert (r.json()["model"], r.json()["target"]) == ("news2", f"Flag/{FLAG_ID}")
    fhir = requests.get(f"{app.url}/fhir/Observation/{r.json()['id']}", headers=auth("clinician"), timeout=10)
    assert fhir.json()["focus"] == [{"reference": f"Flag/{FLAG_ID}"}]
    before = stored(app)
    missing = requests.post(f"{app.url}/v1/ward/alerts/flag-none/feedback", json={"verdict": "helpful"},
                            headers=auth("clinician"), timeout=10)
    assert missing.status_code == 404 and "Flag/flag-none is not a known alert" in missing.json()["error"]
    admin = requests.post(url, json={"verdict": "helpful"}, headers=auth("admin"), timeout=10)
    assert admin.status_code == 403 and "may not judge alerts" in admin.json()["error"]
    assert stored(app) == before
    assert AuditLog(app.context.db_path).count({"query": "alert feedback", "outcome": "denied"}) == 1


def test_the_worklist_numbers_findings_and_shows_their_verdicts(web):
    app, data = web
    body = {"study_uid": data["study_uid"], "model": "tb", "version": "1.0.0", "finding": 2, "verdict": "agree"}
    assert requests.post(f"{app.url}/v1/worklist/feedback", json=body, headers=auth("clinician"),
                         timeout=10).status_code == 201
    studies = requests.get(f"{app.url}/v1/worklist", headers=auth("clinician"), timeout=10).json()["studies"]
    study = next(s for s in studies if s["study_uid"] == data["study_uid"])
    [result] = study["results"]
    assert [f["n"] for f in result["findings"]] == [1, 2]
    second = f"Observation/{data['observations'][1]['id']}"
    assert result["findings"][1]["target"] == second
    assert any(f["target"] == second and f["verdict"] == "agree" for f in study["feedback"])
    assert all(f["site"] == "CXR_ROOM_1" for f in study["feedback"])


def test_an_ehr_client_finds_the_verdicts_with_fhirpy(web):
    """fhirpy, an EHR-side FHIR client, searches the verdicts on the patient's findings by their code."""
    from fhirpy import SyncFHIRClient

    app, data = web
    body = {"study_uid": data["study_uid"], "model": "tb", "version": "1.0.0", "finding": 1, "verdict": "agree"}
    posted = requests.post(f"{app.url}/v1/worklist/feedback", json=body, headers=auth("clinician"), timeout=10)
    assert posted.status_code == 201, posted.text
    client = SyncFHIRClient(f"{app.url}/fhir", authorization=f"Bearer {TOKENS['clinician']}")
    search = client.resources("Observation").search(code="urn:medgate:feedback|ai-output-review",
                                                     subject=data["observations"][0]["subject"]["reference"])
    found = search.fetch_all()
    assert posted.json()["id"] in {o.id for o in found}
    assert all(o["derivedFrom"][0]["reference"].startswith("Observation/") for o in found
               if o["focus"][0]["reference"].startswith("Observation/"))


def test_an_alert_id_outside_the_fhir_grammar_is_a_400_and_not_written_to_the_audit(web):
    app, _ = web
    r = requests.post(f"{app.url}/v1/ward/alerts/bad%0Aid/feedback", json={"verdict": "helpful"},
                      headers=auth("clinician"), timeout=10)
    assert r.status_code == 400 and "the alert must be a Flag id" in r.json()["error"]
    row = AuditLog(app.context.db_path).rows(newest_first=True, limit=1)[0]
    assert (row["query"], row["resource_id"]) == ("alert feedback", None)
