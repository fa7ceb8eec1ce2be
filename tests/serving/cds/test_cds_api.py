"""CDS Hooks 2.0 over HTTP: discovery, patient-view and encounter-discharge cards from the store,
the patient found through prefetch or the EHR's FHIR server (medgate's own FHIR API plays it) or
neither (a card says what could not be checked, never a 500), the EHR's JWT (401 for a bad one),
and feedback on cards (stored per model version, audited; an unknown card stores nothing)."""
from __future__ import annotations

import time
import uuid

import pytest
import requests

from cds_client import EHR_ISS, CdsApp, JwksServer, SigningKey
from clinical_data import CCCD, PATIENT_ID, fill
from peers import free_port
from serving.cds import api as cds_api
from serving.config import CdsConfig, CdsIssuer
from serving.feedback.store import FeedbackStore
from serving.governance.audit import AuditLog
from serving.store import Store
from web_app import TOKENS, WebApp

EHR_PATIENT = "ehr-77"  # the EHR's own Patient id; its identifier is the citizen ID medgate files data under
PATIENT = {"resourceType": "Patient", "id": EHR_PATIENT, "identifier": [{"system": CCCD, "value": PATIENT_ID}]}
SMART_APP = "https://viewer.hospital.example/launch"


@pytest.fixture(scope="module")
def keys():
    return {"es": SigningKey("ES384"), "rs": SigningKey("RS384"), "pem": SigningKey("ES384")}


@pytest.fixture(scope="module")
def cds(tmp_path_factory, keys):
    root = tmp_path_factory.mktemp("cds")
    store = Store(root / "medgate.sqlite3")
    data = fill(store)
    store.put_resources([PATIENT])
    store.close()
    jwks_file = root / "ehr.jwks.json"
    jwks_file.write_text('{"keys": [%s]}' % __import__("json").dumps(keys["es"].jwk()))
    pem = root / "ehr2.pem"
    pem.write_bytes(keys["pem"].public_pem())
    with JwksServer(keys["rs"]) as jwks, WebApp(root) as fhir, CdsApp(root) as app:
        cds_api.configure(CdsConfig(issuers=[
            CdsIssuer(iss=EHR_ISS, jwks_file=jwks_file), CdsIssuer(iss="https://ehr-rsa.example", jwks_url=jwks.url),
            CdsIssuer(iss="https://ehr-pem.example", public_key_file=pem)], smart_app_url=SMART_APP,
            fhir_timeout_s=2.0))
        yield app, fhir, data
        cds_api.configure(CdsConfig())


def hook(service="medgate-patient-view", hook_name="patient-view", **extra) -> dict:
    context = {"userId": "Practitioner/123", "patientId": EHR_PATIENT}
    if hook_name == "encounter-discharge":
        context["encounterId"] = "enc-1"
    return {"hook": hook_name, "hookInstance": str(uuid.uuid4()), "context": context, **extra}


def call(app, key, body, service="medgate-patient-view", **claims):
    token = key.token(app.service_url(service), **claims)
    return requests.post(app.service_url(service), json=body, headers={"Authorization": f"Bearer {token}"},
                         timeout=15)


def summaries(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [c["summary"] for c in response.json()["cards"]]


def test_discovery_declares_both_hooks_and_the_patient_prefetch(cds):
    app, _, _ = cds
    services = requests.get(f"{app.url}/cds-services", timeout=10).json()["services"]
    assert {s["hook"] for s in services} == {"patient-view", "encounter-discharge"}
    assert all(s["prefetch"] == {"patient": "Patient/{{context.patientId}}"} for s in services)


def test_prefetched_patient_gets_news2_alerts_risk_and_imaging_cards(cds, keys):
    app, _, data = cds
    r = call(app, keys["es"], hook(prefetch={"patient": PATIENT}))
    cards = r.json()["cards"]
    assert summaries(r)[0] == "NEWS2 7: high clinical risk, rising from 4"
    assert cards[0]["indicator"] == "critical"
    assert "1 open NEWS2 alert(s): NEWS2 7: clinical risk high" in summaries(r)
    assert "Deterioration risk 62% (vitals model 1.1.0)" in summaries(r)
    imaging = next(c for c in cards if c["summary"].startswith("AI tb 1.0.0"))
    assert "positive (p=0.85)" in imaging["summary"] and imaging["indicator"] == "warning"
    links = {link["type"]: link for link in imaging["links"]}
    assert links["absolute"]["url"] == f"{app.url}/?study={data['study_uid']}#worklist"
    assert links["smart"] == {"label": "Open the imaging app", "url": SMART_APP, "type": "smart",
                              "appContext": data["study_uid"]}
    assert not any("could not check" in s for s in summaries(r))
    assert all(len(s) < 140 and c["source"]["label"] for s, c in zip(summaries(r), cards))


def test_without_prefetch_the_patient_is_read_from_the_ehr_fhir_server(cds, keys):
    app, fhir, _ = cds
    body = hook("medgate-encounter-discharge", "encounter-discharge", fhirServer=f"{fhir.url}/fhir",
                fhirAuthorization={"access_token": TOKENS["clinician"], "token_type": "Bearer",
                                   "expires_in": 300, "scope": "patient/Patient.read", "subject": "medgate"})
    r = call(app, keys["rs"], body, "medgate-encounter-discharge", iss="https://ehr-rsa.example")
    assert summaries(r)[0].startswith("NEWS2 7") and not any("could not check" in s for s in summaries(r))


@pytest.mark.parametrize("extra, why", [
    ({}, "the prefetch held no Patient and no fhirServer was given"),
    ({"prefetch": {"patient": None}, "fhirServer": "http://127.0.0.1:{port}/fhir",
      "fhirAuthorization": {"access_token": "x", "token_type": "Bearer"}}, "failed: ConnectionError"),
    ({"fhirServer": "{fhir}/fhir", "fhirAuthorization": {"access_token": "wrong-token-0123456789"}},
     "answered HTTP 401"),
    ({"fhirServer": "{fhir}/fhir"}, "fhirAuthorization carries no access_token"),
])
def test_missing_prefetch_and_no_fhir_access_give_cards_saying_what_was_not_checked(cds, keys, extra, why):
    app, fhir, _ = cds
    extra = {k: v.format(port=free_port(), fhir=fhir.url) if isinstance(v, str) else v for k, v in extra.items()}
    started = time.monotonic()
    r = call(app, keys["pem"], hook(**extra), iss="https://ehr-pem.example")
    assert time.monotonic() - started < 10
    cards = r.json()["cards"]
    unchecked = [c for c in cards if c["summary"] == "medgate could not check everything for this patient"]
    assert len(unchecked) == 1 and why in unchecked[0]["detail"], cards
    assert "medgate holds no vitals, alerts or AI imaging results for this patient" in summaries(r)


def test_a_bad_hook_request_is_a_400_naming_what_was_wrong(cds, keys):
    app, _, _ = cds
    r = call(app, keys["es"], {**hook(), "hook": "order-sign"})
    assert r.status_code == 400 and "answers hook 'patient-view', 'order-sign' is given" in r.json()["error"]
    bad_id = hook()
    bad_id["context"]["patientId"] = "../../etc/passwd"
    r = call(app, keys["es"], bad_id)
    assert r.status_code == 400 and "context.patientId must be a FHIR id" in r.json()["error"]


@pytest.mark.parametrize("case, reason", [
    ("missing", "a CDS Client JWT is required"),
    ("expired", "the JWT has expired"),
    ("audience", "the JWT's aud must be this service's URL"),
    ("issuer", "issuer 'https://evil.example' is not a trusted CDS Client"),
    ("hs256", "the JWT must be signed with one of ('ES384', 'RS384'), 'HS256' is given"),
    ("lifetime", "the JWT may live at most 300 s"),
    ("signature", "the JWT is not valid: Signature verification failed"),
    ("replay", "was already used (replay)"),
    ("no-jti", "the JWT is not valid: Token is missing the \"jti\" claim"),
])
def test_a_bad_or_expired_jwt_is_a_401_and_reads_nothing(cds, keys, case, reason):
    app, _, _ = cds
    url = app.service_url()
    es = keys["es"]
    if case == "missing":
        token = None
    elif case == "expired":
        token = es.token(url, issued_ago_s=400)
    elif case == "audience":
        token = es.token("https://other.example/cds-services/medgate-patient-view")
    elif case == "issuer":
        token = es.token(url, iss="https://evil.example")
    elif case == "hs256":
        import jwt
        token = jwt.encode({"iss": EHR_ISS, "aud": url, "exp": int(time.time()) + 60, "iat": int(time.time()),
                            "jti": "h"}, "a-shared-secret-of-32-bytes-or-more", algorithm="HS256")
    elif case == "lifetime":
        token = es.token(url, lifetime_s=3600)
    elif case == "signature":
        forger = SigningKey("ES384", kid=es.kid)
        token = forger.token(url)
    elif case == "no-jti":
        import jwt
        now = int(time.time())
        token = jwt.encode({"iss": EHR_ISS, "aud": url, "exp": now + 60, "iat": now}, es.private,
                           algorithm="ES384", headers={"kid": es.kid})
    else:
        token = es.token(url, jti="once")
        assert requests.post(url, json=hook(), headers={"Authorization": f"Bearer {token}"}, timeout=10).ok
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = requests.post(url, json=hook(prefetch={"patient": PATIENT}), headers=headers, timeout=10)
    assert r.status_code == 401 and reason in r.json()["error"], r.text
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert "cards" not in r.json()


def test_feedback_on_cards_is_stored_per_model_version_and_audited(cds, keys):
    app, _, _ = cds
    cards = call(app, keys["es"], hook(prefetch={"patient": PATIENT})).json()["cards"]
    news2 = next(c for c in cards if c["summary"].startswith("NEWS2"))
    imaging = next(c for c in cards if c["summary"].startswith("AI tb"))
    reason = news2["overrideReasons"][0]
    body = {"feedback": [
        {"card": news2["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-22T09:05:00Z",
         "overrideReason": {"reason": reason, "userComment": "patient already on the way to ICU"}},
        {"card": imaging["uuid"], "outcome": "accepted", "outcomeTimestamp": "2026-11-22T09:06:00+07:00",
         "acceptedSuggestions": []}]}
    url = f"{app.service_url()}/feedback"
    token = keys["es"].token(url)
    r = requests.post(url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200 and r.json() == {"recorded": 2}, r.text
    feedback = FeedbackStore(app.context.db_path)
    overridden = feedback.of_model("news2", "RCP-2017")[-1]
    assert (overridden.verdict, overridden.reason, overridden.comment, overridden.target) == \
        ("overridden", reason["code"], "patient already on the way to ICU", f"Card/{news2['uuid']}")
    assert feedback.of_model("tb", "1.0.0")[-1].verdict == "accepted"
    assert overridden.who == f"{EHR_ISS} (ehr-client-1)" and overridden.patient == f"Patient/{EHR_PATIENT}"
    rows = AuditLog(app.context.db_path).rows(where={"query": "cds feedback medgate-patient-view"})
    assert rows[-1]["who"] == f"{EHR_ISS} (ehr-client-1)" and rows[-1]["outcome"] == "success"


def test_feedback_on_an_unknown_card_or_without_a_jwt_stores_nothing(cds, keys):
    app, _, _ = cds
    url = f"{app.service_url()}/feedback"
    before = len(FeedbackStore(app.context.db_path).of_model("news2"))
    cards = call(app, keys["es"], hook(prefetch={"patient": PATIENT})).json()["cards"]
    body = {"feedback": [{"card": cards[0]["uuid"], "outcome": "accepted"},
                         {"card": str(uuid.uuid4()), "outcome": "accepted"}]}
    r = requests.post(url, json=body, headers={"Authorization": f"Bearer {keys['es'].token(url)}"}, timeout=10)
    assert r.status_code == 404 and "was not issued by service 'medgate-patient-view'" in r.json()["error"]
    assert requests.post(url, json=body, timeout=10).status_code == 401
    other_ehr = {"feedback": [{"card": cards[0]["uuid"], "outcome": "accepted"}]}
    token = keys["pem"].token(url, iss="https://ehr-pem.example")  # trusted, but the card is not its own
    r = requests.post(url, json=other_ehr, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 404 and "was not issued by service" in r.json()["error"]
    assert len(FeedbackStore(app.context.db_path).of_model("news2")) == before


def test_every_hook_call_is_audited_under_the_clients_issuer(cds, keys):
    app, _, _ = cds
    call(app, keys["es"], hook(prefetch={"patient": PATIENT}))
    row = AuditLog(app.context.db_path).rows(where={"query": "cds medgate-patient-view"})[-1]
    assert (row["who"], row["role"], row["resource_id"], row["outcome"]) == \
        (f"{EHR_ISS} (ehr-client-1)", "cds-client", EHR_PATIENT, "success")


def test_the_guard_lets_an_ehr_with_a_jwt_reach_the_service(cds, keys):
    app, fhir, _ = cds
    url = f"{fhir.url}/cds-services/medgate-patient-view"
    token = keys["es"].token(app.service_url())  # aud: public_base_url (the CDS app's) + path
    r = requests.post(url, json=hook(prefetch={"patient": PATIENT}), headers={"Authorization": f"Bearer {token}"},
                      timeout=10)
    assert r.status_code == 200 and r.json()["cards"]
    assert requests.get(f"{fhir.url}/cds-services", timeout=10).status_code == 200


def test_an_unknown_service_is_a_404_and_the_audit_names_no_made_up_service(cds, keys):
    app, _, _ = cds
    made_up = "no-such-service\n<b>"
    url = f"{app.url}/cds-services/{requests.utils.quote(made_up, safe='')}"
    token = keys["es"].token(f"{app.url}/cds-services/{made_up}")
    r = requests.post(url, json=hook(), headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 404 and "offered: ['medgate-encounter-discharge', 'medgate-patient-view']" \
        in r.json()["error"]
    row = AuditLog(app.context.db_path).rows(newest_first=True, limit=1)[0]
    assert (row["query"], row["outcome"]) == ("cds (unknown service)", "error")


def test_feedback_sent_again_is_accepted_and_stored_once(cds, keys):
    app, _, _ = cds
    cards = call(app, keys["es"], hook(prefetch={"patient": PATIENT})).json()["cards"]
    body = {"feedback": [{"card": cards[0]["uuid"], "outcome": "accepted", "outcomeTimestamp": "2026-11-22T10:00:00Z"}]}
    url = f"{app.service_url()}/feedback"
    for _ in range(2):  # an EHR retrying after a lost response
        r = requests.post(url, json=body, headers={"Authorization": f"Bearer {keys['es'].token(url)}"}, timeout=10)
        assert r.status_code == 200, r.text
    assert len(FeedbackStore(app.context.db_path).of_target(f"Card/{cards[0]['uuid']}")) == 1
