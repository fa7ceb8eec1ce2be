"""The patient index of the vitals messages (iomt.vital_index): a message is found by patient
from the commit that stored it; its key moves to the index a few patients per commit; a writer
that dies, a commit that fails and a store of the earlier layout lose nothing; on SQLite and on
PostgreSQL (``backend``)."""
from __future__ import annotations

import itertools
import sqlite3
from datetime import datetime, timezone

import orjson
import psycopg
import pytest

from iomt import vital_records
from iomt.compact import decode
from iomt.vital_index import VitalIndex
from serving.store import Store

T0_MS = 1_795_000_000_000


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def row(patient: int, k: int) -> tuple:
    msg = decode(orjson.dumps({"d": f"dev{patient}", "t": T0_MS + k * 1000 + patient,
                               "v": [[147842, 60 + k]]}))
    return vital_records.record(msg, f"Patient/P{patient}", f"dev{patient}")


def count(store: Store, table: str) -> int:
    return store.database.rows(f"SELECT count(*) AS n FROM {table}")[0]["n"]


def indexed(store: Store) -> set[str]:
    return {r["subject"] for r in store.database.rows("SELECT DISTINCT subject FROM vital_subjects")}


def found(store: Store, patient: int) -> list[int]:
    return [r.effective_us for r in vital_records.select(store.vitals, f"Patient/P{patient}")]


def expected(patient: int, ks) -> list[int]:
    return [(T0_MS + k * 1000 + patient) * 1000 for k in sorted(ks, reverse=True)]


@pytest.fixture
def clocks():
    return Clock(), Clock(1_800_000_000.0)  # monotonic, wall


def open_store(location, clocks) -> Store:
    mono, wall = clocks
    return Store(location, VitalIndex(lag_s=1.0, settle_s=2.5, clock=mono, wall=wall))


def test_found_from_the_commit_then_indexed_oldest_patients_first(database_location, clocks):
    mono, wall = clocks
    store = open_store(database_location, clocks)
    try:
        store.vitals.commit_batch([], [], vitals=[row(p, k) for k in range(2) for p in range(10)])
        assert count(store, "vital_subjects") == 0 and count(store, "vital_unindexed") == 20
        assert all(found(store, p) == expected(p, range(2)) for p in range(10))
        assert vital_records.has_subject(store.vitals, "Patient/P3")

        mono.now += 0.5  # half the lag: half of the patients waiting are indexed, oldest first
        store.vitals.commit_batch([], [], vitals=[row(10, 0), row(0, 2)])
        assert indexed(store) == {f"Patient/P{p}" for p in range(5)}
        assert found(store, 0) == expected(0, range(3))  # two keys indexed, one logged
        assert all(found(store, p) == expected(p, range(2)) for p in range(1, 10))
        since = datetime.fromtimestamp(T0_MS / 1000 + 0.5, timezone.utc)
        waiting = vital_records.waiting_rows(store.vitals, since)  # the log read once (ward board)
        for p, limit in itertools.product((0, 3, 10, 11), (None, 2)):
            one = vital_records.select(store.vitals, f"Patient/P{p}", since, limit)
            assert [tuple(r) for r in vital_records.select(
                store.vitals, f"Patient/P{p}", since, limit, waiting)] == [tuple(r) for r in one]

        mono.now += 1.0
        store.vitals.commit_batch([], [])
        assert indexed(store) == {f"Patient/P{p}" for p in range(11)}
        assert count(store, "vital_subjects") == 22
        assert count(store, "vital_unindexed") == 22  # indexed, not yet settled

        wall.now += 3.0  # past settle_s, but within every_s of the last commit that indexed
        store.vitals.commit_batch([], [])
        assert count(store, "vital_unindexed") == 22
        mono.now += 0.05  # the next commit that indexes deletes the log's start
        store.vitals.commit_batch([], [])
        assert count(store, "vital_unindexed") == 0
        assert found(store, 0) == expected(0, range(3)) and found(store, 10) == expected(10, [0])
        assert vital_records.has_subject(store.vitals, "Patient/P10")
        assert not vital_records.has_subject(store.vitals, "Patient/P11")
    finally:
        store.close()


def test_keys_a_dead_writer_left_are_read_and_settled_by_another(database_location, clocks):
    mono, wall = clocks
    dead = open_store(database_location, clocks)
    dead.vitals.commit_batch([], [], vitals=[row(p, 0) for p in range(4)])
    dead.vitals._vital_index.discard()  # as if the process was killed: nothing it waited for is indexed
    dead.close()
    other = open_store(database_location, clocks)
    try:
        assert count(other, "vital_subjects") == 0
        assert all(found(other, p) == expected(p, [0]) for p in range(4))  # from the log
        mono.now += 0.1  # the next commit that indexes (VitalIndex.every_s after the last)
        wall.now += 3.0
        other.vitals.commit_batch([], [], vitals=[row(7, 1)])
        assert indexed(other) == {f"Patient/P{p}" for p in range(4)}
        assert count(other, "vital_unindexed") == 1  # the new key waits for its lag
        assert all(found(other, p) == expected(p, [0]) for p in range(4))
    finally:
        other.close()


def test_a_failed_commit_leaves_nothing_behind(database_location, clocks):
    mono, wall = clocks
    store = open_store(database_location, clocks)
    try:
        store.vitals.commit_batch([], [], vitals=[row(1, 0)])
        with pytest.raises((sqlite3.Error, psycopg.Error)):  # a dead letter of the wrong shape fails it
            store.vitals.commit_batch([], [("mqtt:x",)], vitals=[row(2, 0), row(1, 1)])
        assert store.vitals._vital_index.waiting == 0
        assert found(store, 2) == [] and found(store, 1) == expected(1, [0])
        mono.now += 5.0
        wall.now += 5.0
        store.vitals.commit_batch([], [])
        assert indexed(store) == {"Patient/P1"} and count(store, "vital_unindexed") == 0
        assert found(store, 1) == expected(1, [0])
    finally:
        store.close()


def test_close_indexes_what_waits(database_location, clocks):
    store = open_store(database_location, clocks)
    store.vitals.commit_batch([], [], vitals=[row(p, 0) for p in range(3)])
    store.close()
    store = open_store(database_location, clocks)
    try:
        assert indexed(store) == {f"Patient/P{p}" for p in range(3)}
    finally:
        store.close()


def test_a_store_with_the_earlier_index_moves_it_to_the_table(tmp_path, clocks):
    store = open_store(tmp_path / "db.sqlite3", clocks)
    store.vitals.commit_batch([], [], vitals=[row(p, k) for k in range(3) for p in range(2)])
    store.vitals._vital_index.discard()
    store.database.rows("DELETE FROM vital_unindexed")  # the store of 2026-12-01 had neither table's rows
    store.database.rows("CREATE INDEX vital_signs_subject ON vital_signs(subject, effective_us)")
    store.close()
    store = open_store(tmp_path / "db.sqlite3", clocks)
    try:
        assert count(store, "vital_subjects") == 6
        assert not store.database.rows("SELECT 1 FROM sqlite_master WHERE name='vital_signs_subject'")
        assert found(store, 1) == expected(1, range(3))
    finally:
        store.close()


def test_lag_must_be_shorter_than_settling():
    with pytest.raises(ValueError, match="lag_s < settle_s"):
        VitalIndex(lag_s=3.0, settle_s=2.0)
