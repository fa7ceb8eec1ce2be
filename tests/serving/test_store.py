"""serving.store: the server's tables (results, FHIR resources, the SQLite outbox) and the wiring of the
three owner stores on one database; on SQLite and on PostgreSQL (``backend``)."""
from __future__ import annotations

import sqlite3
import time

import pytest

from dicom_gateway.store import GatewayStore
from iomt.store import VitalsStore
from kernel.database import Database
from serving.store import OutboxDepth, OutboxItem, Result, Store

SERVING_TABLES = {"results", "fhir_resources", "outbox"}


@pytest.fixture
def store(database_location):
    store = Store(database_location)
    yield store
    store.close()


def observation(n: int, subject: str = "Patient/p1", category: str = "vital-signs") -> dict:
    return {"resourceType": "Observation", "id": f"o{n}", "subject": {"reference": subject},
            "category": [{"coding": [{"code": category}]}]}


def test_one_database_three_owner_stores(store):
    assert isinstance(store.gateway, GatewayStore) and isinstance(store.vitals, VitalsStore)
    assert store.gateway.database is store.vitals.database is store.database
    assert all(store.database.has_table(t) for t in (*SERVING_TABLES, "instances", "vital_signs"))
    assert not hasattr(store, "query")  # callers use typed methods


def test_results_are_typed(store):
    store.add_result("1.2.3", "sr", "/r/1.2.3/SR-1.dcm", {"model": "tb"})
    (result,) = store.results_of("1.2.3")
    assert isinstance(result, Result) and result.summary == {"model": "tb"} and result["kind"] == "sr"
    assert str(store.result_path("1.2.3", "SR-1.dcm")) == "/r/1.2.3/SR-1.dcm"
    assert store.result_path("1.2.3", "SR-2.dcm") is None


def test_a_result_written_again_replaces_its_row(store):
    """A study processed again (a restart, or another node taking over its dispatch) writes the same
    objects at the same paths: one row each, holding the newest summary."""
    store.add_result("1.2.3", "sr", "/r/1.2.3/SR-1.dcm", {"model": "tb", "run": 1})
    store.add_result("1.2.3", "sc", "/r/1.2.3/SC-1.dcm", {"model": "tb"})
    store.add_result("1.2.3", "sr", "/r/1.2.3/SR-1.dcm", {"model": "tb", "run": 2})
    rows = store.results_of("1.2.3")
    assert sorted(r.kind for r in rows) == ["sc", "sr"]
    assert next(r for r in rows if r.kind == "sr").summary["run"] == 2


def test_fhir_reads_the_routes_use(store):
    store.put_resources([observation(1), observation(2, "Patient/p2"),
                         {"resourceType": "Flag", "id": "f1", "subject": {"reference": "Patient/p1"}}])
    assert store.resource("Observation", "o1")["id"] == "o1" and store.resource("Observation", "nope") is None
    assert store.has_subject("Patient/p2") and not store.has_subject("Patient/p3")
    assert [r["id"] for r in store.latest_resources("Observation", "Patient/p1", 5)] == ["o1"]
    assert store.latest_resources("Flag", "Patient/p1", 5, updated_after=time.time() + 1) == []
    assert store.resource_subjects("Observation", 0.0) == {"Patient/p1", "Patient/p2"}


def test_retention_reads_ages_and_deletes_only_what_is_still_old(store):
    store.put_resources([observation(1), observation(2, category="laboratory")])
    cutoff = time.time() + 1
    ages = store.resource_ages(0, cutoff, 10)
    assert [(a.resource_type, a.category) for a in ages] == [("Observation", "vital-signs"),
                                                            ("Observation", "laboratory")]
    store.put_resources([observation(1)])  # written again meanwhile (a new rowid): not deleted
    store.delete_resources([ages[0].rowid, ages[1].rowid], cutoff)
    assert [r["id"] for r in store.resources("Observation")] == ["o1"]


def test_the_sqlite_outbox_interface(store):
    box = store.outbox
    assert box.insert("k1", "dicom", "pacs", "{}", "1.2.3") and not box.insert("k1", "dicom", "pacs", "{}")
    (item,) = box.claim_due(time.time())
    assert isinstance(item, OutboxItem) and (item.key, item.correlation_id) == ("k1", "1.2.3")
    box.mark_failed(item.id, "dead", 1, time.time(), "refused")
    assert box.item("k1").status == "dead" and box.item("nope") is None
    assert box.status_counts() == {"dead": 1} and box.counts() == {("dicom", "dead"): 1}
    assert box.depth() == [OutboxDepth("pacs", "dicom", "dead", 1, item.created_at)]
    assert box.retry(["k1"]) == 1
    if store.database.dialect == "postgresql":  # the shared outbox itself: nothing to relay from it
        assert box.pending(10) == []
        return
    assert box.pending(10)[0].key == "k1"
    box.mark_relayed([item.id])
    assert box.items("relayed")[0].id == item.id


def test_a_read_only_store_reads_and_creates_nothing(tmp_path):
    path = tmp_path / "db.sqlite3"
    Database(path).close()  # an empty database: no table yet
    store = Store(Database(path, read_only=True))
    try:
        with pytest.raises(sqlite3.OperationalError):
            store.gateway.status_counts()
    finally:
        store.close()


def test_each_write_of_a_resource_is_its_next_version(store):
    store.put_resources([observation(1)])
    first = store.resource("Observation", "o1")["meta"]
    assert first["versionId"] == "1" and first["lastUpdated"].endswith("Z")
    profile = {"profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]}
    store.put_resources([{**observation(1), "meta": profile}])
    with store.database.transaction() as db:  # the vitals batch path (ServingTables) counts the same
        store.vitals.tables.write_resources(db, [observation(1)], time.time())
    again = store.resource("Observation", "o1")["meta"]
    assert again["versionId"] == "3" and again["lastUpdated"] >= first["lastUpdated"]
    assert [r["meta"]["versionId"] for r in store.resources("Observation")] == ["3"]


def test_version_column_is_added_to_a_table_written_before_it(tmp_path):
    raw = sqlite3.connect(tmp_path / "old.sqlite3")
    raw.execute("CREATE TABLE fhir_resources (resource_type TEXT NOT NULL, id TEXT NOT NULL, subject TEXT,"
                " body TEXT NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (resource_type, id))")
    raw.execute("INSERT INTO fhir_resources VALUES ('Flag', 'f1', NULL, ?, 1.5)",
                ('{"resourceType": "Flag", "id": "f1"}',))
    raw.commit()
    raw.close()
    store = Store(tmp_path / "old.sqlite3")
    try:
        assert store.resource("Flag", "f1")["meta"] == {"versionId": "1", "lastUpdated": "1970-01-01T00:00:01.500Z"}
        store.put_resources([{"resourceType": "Flag", "id": "f1"}])
        assert store.resource("Flag", "f1")["meta"]["versionId"] == "2"
    finally:
        store.close()


def test_resources_referencing_follow_result_and_derived_from(store):
    report = {"resourceType": "DiagnosticReport", "id": "r1", "result": [{"reference": "Observation/o1"}]}
    score = {"resourceType": "Observation", "id": "n1", "derivedFrom": [{"reference": "Observation/o2"}]}
    store.put_resources([report, score, observation(1)])
    assert [r["id"] for r in store.referencing("DiagnosticReport", "result", ["Observation/o1"])] == ["r1"]
    assert [r["id"] for r in store.referencing("Observation", "derivedFrom", ["Observation/o2", "x/y"])] == ["n1"]
    assert store.referencing("Observation", "derivedFrom", []) == []
    with pytest.raises(ValueError, match="'subject; DROP' is given"):
        store.referencing("Observation", "subject; DROP", ["Observation/o1"])
