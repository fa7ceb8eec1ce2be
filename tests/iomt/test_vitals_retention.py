"""The local store keeps the bridge's vitals messages and resources for ``iomt.retention_hours``, and only those;
on SQLite and on PostgreSQL (``backend``)."""
from __future__ import annotations

import time

import orjson

from iomt import vital_records
from iomt.compact import decode
from iomt.retention import VitalsRetention
from models import clinical_codes as codes
from serving.store import Store


def _observation(rid: str, category: str) -> dict:
    return {"resourceType": "Observation", "id": rid, "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": category}]}],
            "code": {"text": rid}, "subject": {"reference": "Patient/p1"}}


def _put(store: Store, resources: list[dict], at: float) -> None:
    store.put_resources(resources)
    with store.database.transaction() as db:
        db.executemany("UPDATE fhir_resources SET updated_at=? WHERE resource_type=? AND id=?",
                       [(at, r["resourceType"], r["id"]) for r in resources])


def _ids(store: Store) -> set[str]:
    return {row["id"] for row in store.database.rows("SELECT id FROM fhir_resources")}


def test_old_vitals_go_and_everything_else_stays(database_location):
    store = Store(database_location)
    now = time.time()
    try:
        old = now - 73 * 3600
        _put(store, [_observation("hr-old", "vital-signs"), _observation("news2-old", "survey"),
                     {"resourceType": "RiskAssessment", "id": "risk-old", "status": "final"},
                     _observation("cxr-old", "imaging"),
                     {"resourceType": "Flag", "id": "alert-old", "status": "active"},
                     {"resourceType": "Patient", "id": "p1"}], old)
        _put(store, [_observation("hr-new", "vital-signs"), _observation("news2-new", "survey"),
                     {"resourceType": "RiskAssessment", "id": "risk-new", "status": "final"}], now - 3600)
        retention = VitalsRetention(store.vitals, retention_hours=72, resources=store)
        assert retention.tick(now) == 3
        assert _ids(store) == {"cxr-old", "alert-old", "p1", "hr-new", "news2-new", "risk-new"}
        assert retention.tick(now) == 0
        assert retention.tick(now + 72 * 3600) == 3  # an hour past the cutoff, the rest follow
        assert _ids(store) == {"cxr-old", "alert-old", "p1"}
    finally:
        store.close()


def test_a_large_backlog_goes_in_batches(database_location, monkeypatch):
    monkeypatch.setattr("iomt.retention.BATCH_ROWS", 7)
    store = Store(database_location)
    now = time.time()
    try:
        _put(store, [_observation(f"hr-{i}", "vital-signs") for i in range(50)], now - 100 * 3600)
        _put(store, [_observation("cxr", "imaging")], now - 100 * 3600)
        _put(store, [_observation(f"new-{i}", "vital-signs") for i in range(5)], now)
        assert VitalsRetention(store.vitals, retention_hours=72, resources=store).tick(now) == 50
        assert _ids(store) == {"cxr", *(f"new-{i}" for i in range(5))}
    finally:
        store.close()


def test_vitals_messages_go_by_measurement_time_in_batches(database_location, monkeypatch):
    monkeypatch.setattr("iomt.retention.BATCH_ROWS", 7)
    store = Store(database_location)
    now = time.time()
    try:
        rows = []
        for k, age_h in enumerate([100] * 20 + [72.5] + [71.5] * 3):
            msg = decode(orjson.dumps({"d": "dev1", "t": int((now - age_h * 3600) * 1000) + k,
                                       "v": [[147842, 60]]}))
            rows.append(vital_records.record(msg, "Patient/p1", "dev1"))
        store.vitals.commit_batch([], [], vitals=rows)
        store.close()  # its keys go to the patient index (iomt.vital_index)
        store = Store(database_location)
        assert store.database.rows("SELECT count(*) FROM vital_subjects")[0][0] == 24
        assert VitalsRetention(store.vitals, retention_hours=72, resources=store).tick(now) == 21
        assert vital_records.count(store.vitals, codes.HEART_RATE) == 3
        assert store.database.rows("SELECT count(*) FROM vital_subjects")[0][0] == 3  # and their keys
        assert len(vital_records.select(store.vitals, "Patient/p1")) == 3
    finally:
        store.close()
