"""FHIR read API, bearer-token roles and the audit log, on the web routes without Ray."""
from __future__ import annotations

import sqlite3
import subprocess
import sys

import orjson
import pytest
import requests
import yaml

from iomt import vital_records
from iomt.compact import decode
from serving.fhir.report import device_resource
from serving.governance.audit import AuditLog
from serving.store import Store
from web_app import TOKENS, WebApp, auth

HR, NEWS2 = "8867-4", "1104051000000101"
DEVICE = device_resource("derm", "1.2.0")


def observation(oid: str, patient: str, code: str, when: str, value: int) -> dict:
    system = "http://snomed.info/sct" if code == NEWS2 else "http://loinc.org"
    body = {"resourceType": "Observation", "id": oid, "status": "final", "subject": {"reference": patient},
            "code": {"coding": [{"system": system, "code": code}]}, "effectiveDateTime": when}
    if code == NEWS2:
        body["valueInteger"] = value
    else:
        body["valueQuantity"] = {"value": value, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}
    return body


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    root = tmp_path_factory.mktemp("webapi")
    store = Store(root / "medgate.sqlite3")
    resources = [observation(f"hr-{i}", "Patient/p1", HR, f"2026-11-2{i}T08:00:00+07:00", 80 + i) for i in range(5)]
    resources += [observation("n2-1", "Patient/p1", NEWS2, "2026-11-24T08:00:00+07:00", 7),
                  observation("hr-p2", "Patient/p2", HR, "2026-11-22T09:00:00Z", 120),
                  {"resourceType": "Patient", "id": "p2", "identifier": [{"system": "urn:x", "value": "p2"}]},
                  {"resourceType": "DiagnosticReport", "id": "dr-1", "status": "final",
                   "code": {"coding": [{"system": "http://loinc.org", "code": "18748-4"}]},
                   "subject": {"type": "Patient", "identifier": {"system": "urn:cccd", "value": "079123"}},
                   "effectiveDateTime": "2026-11-22T10:00:00+07:00", "issued": "2026-11-22T10:01:00+07:00"},
                  {"resourceType": "RiskAssessment", "id": "ra-1", "status": "final",
                   "subject": {"reference": "Patient/p1"}, "occurrenceDateTime": "2026-11-24T08:00:00+07:00",
                   "prediction": [{"probabilityDecimal": 0.8}]},
                  {"resourceType": "Observation", "id": "derm-1", "status": "preliminary",
                   "code": {"coding": [{"system": "http://snomed.info/sct", "code": "372130007"}]},
                   "subject": {"reference": "Patient/p2"}, "issued": "2026-11-23T09:01:00Z",
                   "device": {"reference": f"Device/{DEVICE['id']}"}},
                  {"resourceType": "DiagnosticReport", "id": "dr-derm", "status": "preliminary",
                   "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "394582007"}]}],
                   "code": {"coding": [{"system": "http://loinc.org", "code": "34759-1"}]},
                   "subject": {"reference": "Patient/p2"}, "issued": "2026-11-23T09:01:00Z"},
                  DEVICE,
                  *({"resourceType": "Flag", "id": f"flag-{status}", "status": status,
                     "code": {"text": "NEWS2 7"}, "subject": {"reference": "Patient/p1"},
                     "period": {"start": "2026-11-24T08:00:00+07:00"}} for status in ("active", "inactive"))]
    store.put_resources(resources)
    vitals = decode(orjson.dumps({"d": "MON-9", "t": 1_795_000_000_000, "v": [[147842, 88], [150456, 96]]}))
    store.vitals.commit_batch([], [], vitals=[vital_records.record(vitals, "Patient/p3", "MON-9")])
    store.close()
    with WebApp(root) as app:
        yield {"url": app.url, "root": root}


def get(web, path: str, role: str | None = "clinician", headers: dict | None = None) -> requests.Response:
    return requests.get(web["url"] + path, headers=headers or (auth(role) if role else {}), timeout=30)


def audit_rows(web) -> int:
    log = AuditLog(web["root"] / "medgate.sqlite3")
    try:
        return log.count()
    finally:
        log.close()


@pytest.mark.parametrize("path", ["/fhir/Observation", "/fhir/Patient/p1", "/fhir/metadata", "/v1/ward",
                                  "/v1/worklist", "/v1/system", "/fhir/AuditEvent", "/v1/whoami"])
def test_no_token_is_401(web, path):
    response = get(web, path, role=None)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert get(web, path, role=None, headers={"Authorization": "Bearer wrong-token-000000000"}).status_code == 401


@pytest.mark.parametrize("role, path", [("engineer", "/fhir/Observation"), ("engineer", "/fhir/Patient/p1"),
                                        ("engineer", "/v1/ward"), ("engineer", "/v1/worklist"),
                                        ("clinician", "/v1/system"), ("clinician", "/fhir/AuditEvent")])
def test_wrong_role_is_403(web, role, path):
    response = get(web, path, role=role)
    assert response.status_code == 403, response.text
    assert role in response.json()["error"]


def test_role_matrix_allows(web):
    assert get(web, "/v1/system", "engineer").status_code == 200
    assert get(web, "/fhir/metadata", "engineer").status_code == 200
    assert get(web, "/fhir/AuditEvent", "admin").status_code == 200
    assert get(web, "/", None).status_code == 200  # the dashboard page itself holds no data


@pytest.mark.parametrize("path", ["/fhir/Observation?patient=p1", "/fhir/Patient/p1", "/fhir/Observation/hr-1",
                                  "/fhir/DiagnosticReport?patient:identifier=urn:cccd|079123",
                                  "/fhir/RiskAssessment?patient=Patient/p1", "/v1/ward", "/v1/worklist"])
def test_each_patient_read_is_one_audit_entry(web, path):
    before = audit_rows(web)
    assert get(web, path).status_code == 200
    assert audit_rows(web) == before + 1
    log = AuditLog(web["root"] / "medgate.sqlite3")
    row = log.rows(newest_first=True, limit=1)[0]
    log.close()
    assert row["who"] == "clinician user" and row["role"] == "clinician" and row["outcome"] == "success"
    assert row["client"] == "127.0.0.1"


def test_denied_patient_read_is_audited(web):
    before = audit_rows(web)
    assert get(web, "/fhir/Observation", "engineer").status_code == 403
    log = AuditLog(web["root"] / "medgate.sqlite3")
    row = log.rows(newest_first=True, limit=1)[0]
    log.close()
    assert audit_rows(web) == before + 1 and row["outcome"] == "denied" and row["who"] == "engineer user"


def test_observation_search_code_date_and_paging(web):
    bundle = get(web, f"/fhir/Observation?patient=p1&code=http://loinc.org|{HR}&date=ge2026-11-21&date=le2026-11-23"
                      "&_count=2").json()
    assert bundle["type"] == "searchset" and bundle["total"] == 3
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["hr-3", "hr-2"]  # newest first
    links = {link["relation"]: link["url"] for link in bundle["link"]}
    assert "next" in links and "previous" not in links
    page2 = requests.get(links["next"], headers=auth("clinician"), timeout=30).json()
    assert [e["resource"]["id"] for e in page2["entry"]] == ["hr-1"]
    assert "previous" in {link["relation"] for link in page2["link"]}
    assert get(web, f"/fhir/Observation?code={NEWS2}").json()["total"] == 1
    assert get(web, "/fhir/Observation?patient=p2&date=2026-11-22").json()["total"] == 1
    bad = get(web, "/fhir/Observation?date=yesterday")
    assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"
    ignored = get(web, "/fhir/Observation?colour=red")  # R4 3.1.1.2: ignored unless handling=strict
    assert ignored.status_code == 200 and ignored.json()["entry"][-1]["search"]["mode"] == "outcome"
    strict = get(web, "/fhir/Observation?colour=red", headers={**auth("clinician"), "Prefer": "handling=strict"})
    assert strict.status_code == 400 and "colour=red" in strict.json()["issue"][0]["diagnostics"]


def test_vitals_message_observations_are_searched_and_read_by_id(web):
    bundle = get(web, f"/fhir/Observation?patient=p3&code={HR}").json()
    assert bundle["total"] == 1
    heart = bundle["entry"][0]["resource"]
    assert heart["valueQuantity"]["value"] == 88 and heart["device"]["display"] == "MON-9"
    assert get(web, "/fhir/Observation?patient=p3").json()["total"] == 2
    assert get(web, f"/fhir/Observation/{heart['id']}").json() == heart
    missing = heart["id"][:-1] + ("0" if heart["id"][-1] != "0" else "1")
    assert get(web, f"/fhir/Observation/{missing}").status_code == 404
    assert get(web, "/fhir/Patient/p3").json()["meta"]["tag"][0]["code"] == "referenced-only"


def test_patient_read_never_invents_demographics(web):
    stored = get(web, "/fhir/Patient/p2").json()
    assert stored["identifier"][0]["value"] == "p2"
    referenced = get(web, "/fhir/Patient/p1").json()
    assert set(referenced) == {"resourceType", "id", "meta"}
    assert referenced["meta"]["tag"][0]["code"] == "referenced-only"
    assert get(web, "/fhir/Patient/nobody").status_code == 404


def test_resources_validate_as_r4(web):
    from fhir.resources.R4B.auditevent import AuditEvent
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.capabilitystatement import CapabilityStatement
    from fhir.resources.R4B.patient import Patient

    CapabilityStatement.model_validate(get(web, "/fhir/metadata").json())
    for search in ("Observation?patient=p1", "DiagnosticReport", "RiskAssessment", "Flag"):
        Bundle.model_validate(get(web, f"/fhir/{search}").json())
    Patient.model_validate(get(web, "/fhir/Patient/p1").json())
    events = get(web, "/fhir/AuditEvent?_count=500", "admin").json()
    assert events["total"] >= 5
    for entry in events["entry"]:
        AuditEvent.model_validate(entry["resource"])
    one = events["entry"][-1]["resource"]
    assert get(web, f"/fhir/AuditEvent/{one['id']}", "admin").json()["id"] == one["id"]


def test_device_of_an_observation_is_read_and_audited(web):
    from fhir.resources.R4B.device import Device

    observation = get(web, "/fhir/Observation/derm-1").json()
    path = "/fhir/" + observation["device"]["reference"]
    before = audit_rows(web)
    response = get(web, path)
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/fhir+json")
    served = response.json()
    assert {k: v for k, v in served.items() if k != "meta"} == DEVICE and served["meta"]["versionId"] == "1"
    Device.model_validate(served)
    log = AuditLog(web["root"] / "medgate.sqlite3")
    row = log.rows(newest_first=True, limit=1)[0]
    log.close()
    assert audit_rows(web) == before + 1
    assert (row["action"], row["resource_type"], row["resource_id"], row["outcome"]) == \
        ("read", "Device", DEVICE["id"], "success")
    assert get(web, path, "admin").status_code == 200
    assert get(web, path, "engineer").status_code == 403
    missing = get(web, "/fhir/Device/" + "0" * 36)
    assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"
    assert get(web, "/fhir/Device").status_code == 404  # read only: no search-type


def test_search_parameters_the_capability_statement_names_are_served(web):
    from fhir.resources.R4B.searchparameter import SearchParameter

    capability = get(web, "/fhir/metadata", "engineer").json()
    flag = next(r for r in capability["rest"][0]["resource"] if r["type"] == "Flag")
    status = next(p for p in flag["searchParam"] if p["name"] == "status")
    assert status["definition"] == web["url"] + "/fhir/SearchParameter/Flag-status"
    served = requests.get(status["definition"], headers=auth("clinician"), timeout=30).json()
    SearchParameter.model_validate(served)
    assert served["url"] == status["definition"] and served["expression"] == "Flag.status"
    assert get(web, "/fhir/SearchParameter/Observation-status").status_code == 404
    active = get(web, "/fhir/Flag?patient=p1&status=active").json()
    assert [e["resource"]["id"] for e in active["entry"]] == ["flag-active"]
    assert get(web, "/fhir/Flag?patient=p1").json()["total"] == 2


def test_modifiers_and_categories_on_searches(web):
    assert get(web, "/fhir/DiagnosticReport?category=http://snomed.info/sct|394582007").json()["total"] == 1
    assert get(web, "/fhir/DiagnosticReport?subject:identifier=urn:cccd|079123").json()["total"] == 1
    refused = get(web, "/fhir/Observation?code:text=heart")
    assert refused.status_code == 400 and "modifier ':text'" in refused.json()["issue"][0]["diagnostics"]
    assert get(web, "/fhir/Observation?patient:missing=true").status_code == 400


@pytest.mark.parametrize("path", ["/fhir/AuditEvent/audit-99999999999999999999999", "/fhir/AuditEvent/audit-%C2%B2",
                                  "/fhir/AuditEvent/audit-0", "/fhir/AuditEvent/audit-", "/fhir/AuditEvent/audit--1",
                                  "/fhir/AuditEvent/audit-1e3", "/fhir/AuditEvent/%00", "/fhir/AuditEvent/audit-٣"])
def test_audit_event_ids_never_issued_are_404(web, path):
    response = get(web, path, "admin")
    assert response.status_code == 404, response.text
    assert response.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("path", ["/fhir/Observation/%C2%B2", "/fhir/Observation/" + "9" * 400, "/fhir/Flag/%00",
                                  "/fhir/Observation/ffffffff-ffff-4fff-8fff-ffffffffffff", "/fhir/Patient/%C2%B2",
                                  "/fhir/RiskAssessment/" + "%F0%9F%98%80" * 10, "/fhir/Basic/1"])
def test_read_of_any_id_is_404_never_500(web, path):
    response = get(web, path)
    assert response.status_code == 404, response.text


@pytest.mark.parametrize("query", ["date=9999-12", "date=9999-12-31", "date=9999", "date=ge9999-12-31T23:59:59Z",
                                   "date=0000-01-01", "date=%C2%B2%C2%B2%C2%B2%C2%B2", "date=2026-13", "date=ge",
                                   "_count=%C2%B2", "_count=99999999999999999999999", "_offset=-1",
                                   "_offset=99999999999999999999999", "code=%00", "patient=%C2%B2&code=a|b|c",
                                   "_id=" + "x" * 5000, "patient:identifier=%7C"])
@pytest.mark.parametrize("resource_type", ["Observation", "AuditEvent"])
def test_search_parameters_are_answered_400_or_200_never_500(web, resource_type, query):
    if resource_type == "AuditEvent" and not query.startswith(("date", "_")):
        query = "outcome=%C2%B2"
    response = get(web, f"/fhir/{resource_type}?{query}", "admin")
    assert response.status_code in (200, 400), response.text
    assert response.json()["resourceType"] in ("Bundle", "OperationOutcome")


def test_bundle_links_never_reflect_the_host_header(web):
    forged = {**auth("clinician"), "Host": "evil.example:666", "X-Forwarded-Host": "evil.example"}
    bundle = get(web, "/fhir/Observation?patient=p1&_count=2", headers=forged).json()
    urls = [link["url"] for link in bundle["link"]] + [e["fullUrl"] for e in bundle["entry"]]
    assert urls and all(u.startswith(web["url"] + "/fhir/") for u in urls), urls
    capability = get(web, "/fhir/metadata", headers=forged).json()
    assert capability["implementation"]["url"] == web["url"] + "/fhir"


def test_session_cookie_only_for_reads(web):
    session = requests.Session()
    assert session.post(web["url"] + "/v1/session", headers=auth("clinician"), timeout=30).status_code == 200
    cookie = session.cookies.get("medgate_session")
    assert cookie and cookie != TOKENS["clinician"]  # a session id, not the token (tests/serving/http/test_sessions.py)
    assert session.get(web["url"] + "/v1/ward", timeout=30).status_code == 200
    assert session.delete(web["url"] + "/v1/session", timeout=30).status_code == 401  # cookie alone: no write


def test_audit_verify_detects_an_edited_row(web, tmp_path):
    for path in ("/fhir/Patient/p1", "/fhir/Observation?patient=p1", "/fhir/Patient/p2"):
        assert get(web, path).status_code == 200  # at least three rows, whichever tests ran before
    db = web["root"] / "medgate.sqlite3"
    config = tmp_path / "medgate.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(web["root"])}))
    verify = [sys.executable, "-m", "serving.cli", "--config", str(config), "audit", "verify"]
    ok = subprocess.run(verify, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "intact" in ok.stdout
    print(ok.stdout.strip())
    raw = sqlite3.connect(db)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        raw.execute("UPDATE audit_log SET who='nobody' WHERE seq=2")
    raw.execute("DROP TRIGGER audit_log_no_update")  # someone with write access to the file
    raw.execute("UPDATE audit_log SET who='nobody' WHERE seq=2")
    raw.commit()
    raw.close()
    bad = subprocess.run(verify, capture_output=True, text=True, timeout=120)
    print(bad.stdout.strip())
    assert bad.returncode == 1
    assert "first bad row seq 2" in bad.stdout and "edited" in bad.stdout


def test_audit_chain_detects_deleted_and_reordered_rows(tmp_path):
    from serving.governance.audit import verify_rows

    log = AuditLog(tmp_path / "audit.sqlite3")
    for i in range(5):
        log.record(who=f"user {i}", role="clinician", action="read", resource_type="Patient", resource_id=str(i))
    rows = log.rows()
    log.close()
    assert verify_rows(rows).ok and verify_rows(rows).head_seq == 5
    deleted = verify_rows(rows[:2] + rows[3:])
    assert deleted.bad_seq == 4 and "missing" in deleted.reason
    swapped = [dict(r) for r in rows]
    swapped[1], swapped[2] = {**swapped[2], "seq": 2}, {**swapped[1], "seq": 3}  # renumbered to hide it
    assert verify_rows(swapped).bad_seq == 2

