"""iomt.store: the bridge's tables, and a batch's resources and outbox rows written through its port;
on SQLite and on PostgreSQL (``backend``)."""
from __future__ import annotations

import pickle
import sqlite3
import time

import pytest

from iomt.store import BedRow, DeadLetterCounts, StoredAssociation, StoredDeadLetter, VitalsStore
from kernel.database import Database, open_database

VITALS_TABLES = ("vital_signs", "vital_identifier_systems", "vital_subjects", "vital_unindexed", "bed_census",
                 "dead_letters", "device_associations", "hl7_messages", "hl7_encounters", "bed_devices",
                 "news2_context", "partition_fences")


class Recorded:
    """A :class:`iomt.store.ResourceTables` that writes into tables of its own (the test's)."""

    SCHEMA = "CREATE TABLE IF NOT EXISTS r (id TEXT); CREATE TABLE IF NOT EXISTS o (key TEXT UNIQUE);"

    def write_resources(self, db, resources, now):
        db.executemany("INSERT INTO r VALUES (?)", [(r["id"],) for r in resources])

    def write_outbox(self, db, rows, now):
        db.executemany("INSERT INTO o VALUES (?)", [(row[0],) for row in rows])


def integrity_error(database) -> type[Exception]:
    """The backend's error for a violated UNIQUE constraint."""
    if database.dialect == "postgresql":
        import psycopg

        return psycopg.errors.UniqueViolation
    return sqlite3.IntegrityError


@pytest.fixture
def vitals(database_location):
    database = open_database(database_location)
    database.create(Recorded.SCHEMA)
    yield VitalsStore(database, Recorded())
    database.close()


def test_the_bridge_creates_only_its_own_tables(tmp_path):
    database = Database(tmp_path / "db.sqlite3")
    try:
        VitalsStore(database, Recorded())
        names = {r[0] for r in database.rows("SELECT name FROM sqlite_master WHERE type='table'")}
        assert names - {"sqlite_sequence", "schema_versions"} == set(VITALS_TABLES)
    finally:
        database.close()


def test_a_batch_is_one_transaction_with_the_resources_and_outbox_rows(vitals):
    vitals.commit_batch([{"id": "a"}], [("mqtt:t", "bad", b"x", "MON-1", None, 1)], [("k1", "mqtt", "t", "{}")],
                        beds=[("w", "b1", "s", "Patient/p", "MON-1", "2026-01-01T00:00:00+00:00")])
    assert vitals.database.rows("SELECT id FROM r")[0][0] == "a" and vitals.database.rows("SELECT key FROM o")
    with pytest.raises(integrity_error(vitals.database)):  # the outbox key again: the batch is rolled back
        vitals.commit_batch([{"id": "b"}], [], [("k1", "mqtt", "t", "{}")])
    assert [r[0] for r in vitals.database.rows("SELECT id FROM r")] == ["a"]
    (letter,) = vitals.dead_letters()
    assert isinstance(letter, StoredDeadLetter) and (letter.device, letter.payload) == ("MON-1", b"x")
    assert vitals.parked("MON-1") == [letter] and vitals.dead_letter_counts() == DeadLetterCounts(1, 1)
    vitals.mark_replayed([letter.id])
    assert vitals.parked("MON-1") == [] and vitals.dead_letter_counts() == DeadLetterCounts(1, 0)
    (bed,) = vitals.beds(0.0)
    assert isinstance(bed, BedRow) and bed.patient_ref == "Patient/p"
    assert vitals.beds(0.0, ward="other") == [] and vitals.beds(time.time() + 1) == []


def test_device_associations_round_trip(vitals):
    row = StoredAssociation("MON-1", "P1", "urn:x", 1, "site", "w", "b1", "2026-01-01T00:00:00+00:00", 1.0)
    vitals.put_association(row)
    vitals.put_association(row)  # replaced, not added
    assert vitals.associations() == [row]


def test_a_worker_process_builds_the_same_store_from_the_class_of_its_port(vitals):
    reopened = VitalsStore.open(vitals.database.location, pickle.loads(pickle.dumps(vitals.tables)))
    try:
        reopened.add_dead_letter("mqtt:t", "bad", None)
        assert len(vitals.dead_letters()) == 1
    finally:
        reopened.close()


def test_the_database_must_be_a_kernel_database(tmp_path):
    with pytest.raises(TypeError, match="kernel.database.Database, PosixPath is given"):
        VitalsStore(tmp_path / "db.sqlite3", Recorded())
