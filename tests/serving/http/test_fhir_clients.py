"""The FHIR read API as real clients use it: fhirpy (SyncFHIRClient) and fhirclient (SMART on FHIR
models), against the web routes served by uvicorn (:mod:`web_app`), over an imaging report built
by :mod:`serving.fhir.report`, stored vitals messages and a NEWS2 score derived from them.

Covers R4 search.html: unknown parameters ignored unless ``Prefer: handling=strict``, ``_total``,
``_sort``, ``_lastUpdated``, ``_count`` paging, ``_include``/``_revinclude``; http.html: ETag,
Last-Modified, ``If-None-Match`` -> 304; ``meta.versionId``/``lastUpdated`` on every resource.
"""
from __future__ import annotations

import time
import warnings
from datetime import datetime, timedelta, timezone

import numpy as np
import orjson
import pytest
import requests
from fhirclient.models.diagnosticreport import DiagnosticReport as ClientReport
from fhirclient.models.observation import Observation as ClientObservation
from fhirclient.models.patient import Patient as ClientPatient
from fhirclient.server import FHIRServer
from fhirpy import SyncFHIRClient

from iomt import vital_records
from iomt.compact import decode
from iomt.news2 import score
from iomt.observations import news2_observation
from models.finding import Concept, Finding, SourceImage
from serving.config import load_config
from serving.fhir.report import build_report_resources, patient_identity
from serving.governance.audit import AuditLog
from serving.store import Store
from training.synthetic.dicom import make_dx_dataset
from web_app import TOKENS, WebApp, auth

CCCD = "http://fhir.hl7.org.vn/core/sid/cccd"
MRN = "urn:oid:1.2.3.4.5.6.7"
PATIENT_ID = "079123456789"
PATIENT = f"Patient/{PATIENT_ID}"
HR = "8867-4"
MESSAGES = 12
START = datetime(2026, 11, 30, 1, 0, tzinfo=timezone.utc)
TB = Concept("56717001", "SCT", "Tuberculosis")


def findings_for(ds) -> list[Finding]:
    image = SourceImage(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID,
                        int(ds.Rows), int(ds.Columns))
    return [Finding(model="tb", model_version="1.0.0", code=TB, probability=p, threshold=0.5, source=image)
            for p in (0.8, 0.2)]


def _vitals(minute: int):
    at = START + timedelta(minutes=10 * minute)
    return decode(orjson.dumps({"d": "MON-7", "t": int(at.timestamp() * 1000),
                                "v": [[147842, 80 + minute], [151562, 16], [150456, 96]]}))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("fhirclients")
    store = Store(root / "medgate.sqlite3")
    ds = make_dx_dataset(np.zeros((32, 32), np.uint16), patient_id=PATIENT_ID)
    report, *observations, device = build_report_resources(
        findings_for(ds), ds, patient_identity(load_config(None)), issued=START + timedelta(hours=3))
    assert report["subject"]["reference"] == PATIENT  # the id the admission feed writes
    patient = {"resourceType": "Patient", "id": PATIENT_ID, "active": True, "name": [{"family": "Nguyen"}],
               "identifier": [{"system": CCCD, "value": PATIENT_ID}, {"system": MRN, "value": "MRN-0042"}]}
    no_system = {"resourceType": "Patient", "id": "p-nosys", "identifier": [{"value": "MRN-0042"}]}
    referenced = {"resourceType": "RiskAssessment", "id": "ra-ref", "status": "final",
                  "subject": {"reference": "Patient/p-ref"}, "occurrenceDateTime": START.isoformat()}
    store.put_resources([patient, no_system, report, *observations, device, referenced])
    messages = [_vitals(i) for i in range(MESSAGES)]
    store.vitals.commit_batch([], [], vitals=[vital_records.record(m, PATIENT, "MON-7") for m in messages])
    news2 = news2_observation(score(messages[-1].news2_input()), messages[-1], PATIENT)
    store.put_resources([news2])
    store.close()
    with WebApp(root) as app:
        yield {"url": app.url, "root": root, "report": report, "observations": observations, "news2": news2,
               "device": device}


@pytest.fixture
def fhirpy(server) -> SyncFHIRClient:
    return SyncFHIRClient(server["url"] + "/fhir", authorization=f"Bearer {TOKENS['clinician']}")


@pytest.fixture
def smart(server) -> FHIRServer:
    fhir = FHIRServer(None, base_uri=server["url"] + "/fhir/")
    fhir.session.headers["Authorization"] = f"Bearer {TOKENS['clinician']}"
    return fhir


def get(server, path: str, **headers: str) -> requests.Response:
    return requests.get(server["url"] + "/fhir/" + path, headers={**auth("clinician"), **headers}, timeout=30)


def audit_count(server) -> int:
    log = AuditLog(server["root"] / "medgate.sqlite3")
    try:
        return log.count()
    finally:
        log.close()


# -- fhirpy ---------------------------------------------------------------------------------------

def test_fhirpy_count_uses_count_0_and_an_unknown_total_method(fhirpy):
    # fhirpy sends _count=0&_totalMethod=count: the unknown parameter is ignored (R4 3.1.1.2)
    assert fhirpy.resources("Observation").search(patient=PATIENT_ID, code=HR).count() == MESSAGES
    assert fhirpy.resources("Observation").search(patient=PATIENT_ID).count() == MESSAGES * 3 + 1 + 2


def test_fhirpy_sort_by_date_both_ways(fhirpy):
    newest = fhirpy.resources("Observation").search(patient=PATIENT_ID, code=HR).sort("-date").limit(3).fetch()
    assert [o["valueQuantity"]["value"] for o in newest] == [91, 90, 89]
    oldest = fhirpy.resources("Observation").search(patient=PATIENT_ID, code=HR).sort("date").limit(3).fetch()
    assert [o["valueQuantity"]["value"] for o in oldest] == [80, 81, 82]
    by_updated = fhirpy.resources("Observation").search(patient=PATIENT_ID).sort("-_lastUpdated", "_id").fetch()
    stamps = [o["meta"]["lastUpdated"] for o in by_updated]
    assert stamps == sorted(stamps, reverse=True)


def test_fhirpy_fetch_all_pages_through_next_links(fhirpy):
    pages = fhirpy.resources("Observation").search(patient=PATIENT_ID, code=HR).sort("-date").limit(5)
    values = [o["valueQuantity"]["value"] for o in pages.fetch_all()]
    assert values == list(range(80 + MESSAGES - 1, 79, -1))  # 3 pages, in order, none twice


def test_fhirpy_include_report_results_and_subject(fhirpy, server):
    search = fhirpy.resources("DiagnosticReport").search(patient=PATIENT_ID).include("DiagnosticReport", "result")
    bundle = search.include("DiagnosticReport", "subject").fetch_raw()
    modes = {(e["resource"]["resourceType"], e["search"]["mode"]) for e in bundle["entry"]}
    assert modes == {("DiagnosticReport", "match"), ("Observation", "include"), ("Patient", "include")}
    included = {e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "include"}
    assert included == {o["id"] for o in server["observations"]} | {PATIENT_ID}
    assert [r["id"] for r in search.fetch()] == [server["report"]["id"]]  # matches alone
    assert bundle["total"] == 1


def test_fhirpy_revinclude_report_of_an_observation_and_news2_of_vitals(fhirpy, server):
    imaging = fhirpy.resources("Observation").search(_id=server["observations"][0]["id"])
    bundle = imaging.revinclude("DiagnosticReport", "result").fetch_raw()
    assert [(e["resource"]["resourceType"], e["search"]["mode"]) for e in bundle["entry"]] == \
        [("Observation", "match"), ("DiagnosticReport", "include")]
    derived = server["news2"]["derivedFrom"][0]["reference"].split("/")[1]
    vitals = fhirpy.resources("Observation").search(_id=derived).revinclude("Observation", "derived-from")
    entries = vitals.fetch_raw()["entry"]
    assert [e["resource"]["id"] for e in entries] == [derived, server["news2"]["id"]]
    forward = fhirpy.resources("Observation").search(_id=server["news2"]["id"]).include("Observation", "derived-from")
    assert len(forward.fetch_raw()["entry"]) == 1 + len(server["news2"]["derivedFrom"])


def test_fhirpy_patient_by_identifier_token(fhirpy):
    def ids(**query):
        return sorted(p["id"] for p in fhirpy.resources("Patient").search(**query).fetch())

    assert ids(identifier=f"{CCCD}|{PATIENT_ID}") == [PATIENT_ID]
    assert ids(identifier=PATIENT_ID) == [PATIENT_ID]
    assert ids(identifier="MRN-0042") == [PATIENT_ID, "p-nosys"]  # any system
    assert ids(identifier=f"{MRN}|MRN-0042") == [PATIENT_ID]
    assert ids(identifier="|MRN-0042") == ["p-nosys"]  # no system (R4 token |code)
    assert ids(identifier=f"{CCCD}|") == [PATIENT_ID]  # any value of the system
    assert ids(identifier=f"{MRN}|{PATIENT_ID}") == []


# -- fhirclient -----------------------------------------------------------------------------------

def test_fhirclient_where_perform_resources(smart, server):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # perform_resources: still the documented call
        found = ClientObservation.where({"patient": PATIENT_ID, "code": HR, "_count": "4"}).perform_resources(smart)
        reports = ClientReport.where({"patient": PATIENT_ID}).include("result").perform_resources(smart)
        patients = ClientPatient.where({"identifier": f"{CCCD}|{PATIENT_ID}"}).perform_resources(smart)
        imaging = ClientObservation.where({"_id": server["observations"][0]["id"]}) \
            .include("result", ClientReport, reverse=True).perform_resources(smart)
    assert len(found) == MESSAGES and {o.code.coding[0].code for o in found} == {HR}  # every page followed
    assert sorted(r.resource_type for r in reports) == ["DiagnosticReport"] + ["Observation"] * 2
    assert [(r.resource_type, r.id) for r in imaging] == [("Observation", server["observations"][0]["id"]),
                                                          ("DiagnosticReport", server["report"]["id"])]
    assert [p.id for p in patients] == [PATIENT_ID]


def test_fhirclient_read_with_etag_and_304(smart, server):
    oid = server["observations"][0]["id"]
    observation = ClientObservation.read(oid, smart)
    assert observation.meta.versionId == "1" and observation.meta.lastUpdated is not None
    first = smart._get(f"Observation/{oid}")
    etag = first.headers["ETag"]
    assert etag == 'W/"1"' and first.headers["Last-Modified"].endswith("GMT")
    before = audit_count(server)
    assert smart.request_data(f"Observation/{oid}", headers={"If-None-Match": etag}) == b""
    assert smart.session.get(smart.base_uri + f"Observation/{oid}", headers={"If-None-Match": etag}).status_code == 304
    assert audit_count(server) == before + 2  # a conditional read is still a read
    changed = smart.session.get(smart.base_uri + f"Observation/{oid}", headers={"If-None-Match": 'W/"0"'})
    assert changed.status_code == 200 and changed.json()["id"] == oid
    since = smart.session.get(smart.base_uri + f"Observation/{oid}",
                              headers={"If-Modified-Since": first.headers["Last-Modified"]})
    assert since.status_code == 304


# -- the wire, as R4 search.html and http.html word it ----------------------------------------------

def test_unknown_parameters_ignored_and_reported_unless_strict(server):
    bundle = get(server, f"Observation?patient={PATIENT_ID}&code={HR}&_totalMethod=count&colour=red").json()
    assert bundle["total"] == MESSAGES
    outcome = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert len(outcome) == 1 and outcome[0]["resource"]["resourceType"] == "OperationOutcome"
    text = outcome[0]["resource"]["issue"][0]["diagnostics"]
    assert "_totalMethod=count" in text and "colour=red" in text
    self_link = next(link["url"] for link in bundle["link"] if link["relation"] == "self")
    assert "colour" not in self_link and "_totalMethod" not in self_link and f"code={HR}" in self_link
    strict = get(server, "Observation?colour=red&_totalMethod=count&_sort=colour", Prefer="handling=strict")
    assert strict.status_code == 400
    diagnostics = strict.json()["issue"][0]["diagnostics"]
    assert "colour=red" in diagnostics and "_totalMethod=count" in diagnostics and "_sort=colour" in diagnostics
    assert get(server, "Observation?_include=Observation:colour", Prefer="return=minimal, handling=strict") \
        .status_code == 400
    assert get(server, "Observation?code:text=heart").status_code == 400  # unsupported modifier: always refused


@pytest.mark.parametrize("mode, has_total", [("none", False), ("estimate", True), ("accurate", True)])
def test_total_modes(server, mode, has_total):
    bundle = get(server, f"Observation?patient={PATIENT_ID}&code={HR}&_total={mode}&_count=2").json()
    assert ("total" in bundle) is has_total and len(bundle["entry"]) == 2
    assert (bundle.get("total") == MESSAGES) is has_total
    assert get(server, "Observation?_total=maybe").status_code == 400


def test_summary_count_and_count_0(server):
    for query in ("_summary=count", "_count=0"):
        bundle = get(server, f"Observation?patient={PATIENT_ID}&code={HR}&{query}").json()
        assert bundle["total"] == MESSAGES and bundle["entry"] == []
        assert [link["relation"] for link in bundle["link"]] == ["self"]  # no next link to loop on


def test_next_and_previous_links_keep_the_parameters(server):
    query = f"Observation?patient={PATIENT_ID}&code={HR}&_sort=-date&_total=accurate&_count=5"
    bundle = get(server, query).json()
    nxt = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
    for kept in (f"patient={PATIENT_ID}", f"code={HR}", "_sort=-date", "_total=accurate", "_count=5"):
        assert kept in nxt
    page2 = requests.get(nxt, headers=auth("clinician"), timeout=30).json()
    previous = next(link["url"] for link in page2["link"] if link["relation"] == "previous")
    back = requests.get(previous, headers=auth("clinician"), timeout=30).json()
    assert [e["resource"]["id"] for e in back["entry"]] == [e["resource"]["id"] for e in bundle["entry"]]


def test_last_updated_prefixes(server):
    every = get(server, f"Observation?patient={PATIENT_ID}&_count=500").json()["entry"]
    stamps = sorted({e["resource"]["meta"]["lastUpdated"] for e in every})
    newest = stamps[-1]
    assert get(server, f"Observation?patient={PATIENT_ID}&_lastUpdated=gt{newest}").json()["total"] == 0
    assert get(server, f"Observation?patient={PATIENT_ID}&_lastUpdated=le{newest}").json()["total"] == len(every)
    assert get(server, f"Observation?patient={PATIENT_ID}&_lastUpdated=lt2000-01-01").json()["total"] == 0
    assert get(server, f"Observation?patient={PATIENT_ID}&_lastUpdated=ge2000").json()["total"] == len(every)
    year = newest[:4]
    assert get(server, f"Observation?patient={PATIENT_ID}&_lastUpdated=eq{year}").json()["total"] == len(every)
    assert get(server, "Observation?_lastUpdated=soon").status_code == 400


def test_every_resource_has_meta_version_and_last_updated(server):
    for query in (f"Observation?patient={PATIENT_ID}&_count=500", "DiagnosticReport?_include=DiagnosticReport:result",
                  "Patient", f"Patient?_id={PATIENT_ID}&_revinclude=Observation:subject"):
        for entry in get(server, query).json()["entry"]:
            resource = entry["resource"]
            if entry["search"]["mode"] != "outcome":
                assert resource["meta"]["versionId"] and resource["meta"]["lastUpdated"].endswith("Z"), resource
    events = requests.get(server["url"] + "/fhir/AuditEvent?_count=3", headers=auth("admin"), timeout=30).json()
    assert all(e["resource"]["meta"]["versionId"] == "1" for e in events["entry"])


def test_a_rewrite_is_a_new_version_and_changes_the_etag(server):
    oid = server["observations"][1]["id"]
    first = get(server, f"Observation/{oid}")
    assert first.headers["ETag"] == f'W/"{first.json()["meta"]["versionId"]}"'
    time.sleep(0.01)
    store = Store(server["root"] / "medgate.sqlite3")
    try:
        store.put_resources([{**server["observations"][1], "status": "final"}])
    finally:
        store.close()
    second = get(server, f"Observation/{oid}")
    version = int(first.json()["meta"]["versionId"]) + 1
    assert second.json()["meta"]["versionId"] == str(version) and second.headers["ETag"] == f'W/"{version}"'
    assert second.json()["meta"]["lastUpdated"] > first.json()["meta"]["lastUpdated"]
    assert get(server, f"Observation/{oid}", **{"If-None-Match": first.headers["ETag"]}).status_code == 200
    assert get(server, f"Observation/{oid}", **{"If-None-Match": second.headers["ETag"]}).status_code == 304


def test_vital_sign_observation_read_has_a_stable_version(server):
    vital = get(server, f"Observation?patient={PATIENT_ID}&code={HR}&_count=1").json()["entry"][0]["resource"]
    read = get(server, f"Observation/{vital['id']}")
    assert read.json() == vital and read.headers["ETag"] == f'W/"{vital["meta"]["versionId"]}"'
    assert get(server, f"Observation/{vital['id']}", **{"If-None-Match": read.headers["ETag"]}).status_code == 304


def test_search_with_includes_is_one_audit_row(server):
    before = audit_count(server)
    bundle = get(server, f"DiagnosticReport?patient={PATIENT_ID}&_include=DiagnosticReport:result"
                         "&_include=DiagnosticReport:subject").json()
    assert len(bundle["entry"]) == 4
    assert audit_count(server) == before + 1
    log = AuditLog(server["root"] / "medgate.sqlite3")
    row = log.rows(newest_first=True, limit=1)[0]
    log.close()
    assert row["action"] == "search" and "3 included" in row["detail"]


def test_referenced_only_patient_is_read_and_included_with_meta(server):
    stub = get(server, "Patient/p-ref")
    assert stub.json()["meta"]["tag"][0]["code"] == "referenced-only"
    assert stub.json()["meta"]["versionId"] == "1" and stub.headers["ETag"] == 'W/"1"'
    bundle = get(server, "RiskAssessment?patient=p-ref&_include=RiskAssessment:subject").json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["ra-ref", "p-ref"]
    assert bundle["entry"][1]["resource"] == stub.json()
    assert get(server, "Patient/nobody").status_code == 404
    assert get(server, "Patient/not%20an%20id").status_code == 404
    assert get(server, "Patient?_id=p-ref").json()["total"] == 0  # a search runs over admitted patients


def test_bundles_validate_as_r4(server):
    from fhir.resources.R4B.bundle import Bundle

    for query in (f"DiagnosticReport?_include=DiagnosticReport:result&_include=DiagnosticReport:subject&colour=1",
                  f"Observation?patient={PATIENT_ID}&_revinclude=DiagnosticReport:result&_total=none",
                  f"Patient?identifier={CCCD}|{PATIENT_ID}&_revinclude=DiagnosticReport:patient"):
        Bundle.model_validate(get(server, query).json())
