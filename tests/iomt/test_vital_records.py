"""A vitals message stored as one row gives, when read, exactly the Observations the message
itself gives: same ids, same elements, valid R4; redelivery replaces, look-up by id works."""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone

import orjson
import pytest
from fhir.resources.R4B.observation import Observation

from iomt import vital_records
from iomt.compact import decode
from iomt.identity import device_reference, patient_reference
from iomt.observations import vital_observations
from iomt.payload import parse_payload
from models import clinical_codes as codes
from serving.store import Store
from test_observations import FULL, PATIENT, message

T0_MS = 1_795_000_000_000
OUT_OF_RANGE_RR = {"code": "9279-1", "value": 61, "unit": "/min"}  # noted, not dropped


def full(**changes):
    return message(**{"time": "2026-11-22T10:15:00.250+07:00",
                      "vitals": [*FULL["vitals"], OUT_OF_RANGE_RR], **changes})


MESSAGES = [
    (full(), "MON-3-12"),
    (full(vitals=[{"code": "150022", "value": 9.5, "unit": "kPa"}]), "MON-3-12"),  # diastolic only
    (full(time="2026-11-22T03:15:00.000250Z"), "MON-3-12"),  # UTC: the row keeps no ISO text
    (decode(orjson.dumps({"d": "dev 7", "t": T0_MS, "v": [[147842, 60], [150456, 95],
                                                          [147842, 61]]})), "dev 7"),
    (parse_payload(json.dumps({k: v for k, v in FULL.items() if k != "device"}).encode()), None),
]


def unversioned(resources: list[dict]) -> list[dict]:
    """``resources`` as written: a stored resource is read with its version and write time (FHIR
    ``meta.versionId``, ``meta.lastUpdated``), which are checked and then left out."""
    for resource in resources:
        assert resource["meta"].keys() >= {"versionId", "lastUpdated"}
    return [{**r, "meta": {k: v for k, v in r["meta"].items() if k not in ("versionId", "lastUpdated")}}
            for r in resources]


@pytest.mark.parametrize("msg, device", MESSAGES)
def test_stored_row_gives_the_message_observations(tmp_path, msg, device):
    direct = vital_observations(msg, PATIENT, device_reference(device) if device else None,
                                effective=msg.time.isoformat())
    row = vital_records.record(msg, PATIENT, device)
    assert (row[4] is None) == (msg.time.utcoffset().total_seconds() == 0)
    assert vital_records.observations([row]) == direct
    store = Store(tmp_path / "db.sqlite3")
    try:
        store.vitals.commit_batch([], [], vitals=[row])
        read = store.resources("Observation", PATIENT)
        bare = unversioned(read)
        assert bare == json.loads(orjson.dumps(direct))  # through the table, as JSON
        for resource, plain in zip(read, bare):
            Observation.model_validate(resource)
            assert vital_records.find(store.vitals, resource["id"]) == plain
            assert store.resource("Observation", resource["id"]) == resource  # a read by id: with meta
    finally:
        store.close()


def test_redelivery_replaces_and_other_codes_at_one_instant_stay(tmp_path):
    def row(pairs, device="dev1"):
        msg = decode(orjson.dumps({"d": device, "t": T0_MS, "v": pairs}))
        return vital_records.record(msg, PATIENT, device)

    store = Store(tmp_path / "db.sqlite3")
    try:
        store.vitals.commit_batch([], [], vitals=[row([[147842, 60], [150456, 95]])])
        store.vitals.commit_batch([], [], vitals=[row([[147842, 60], [150456, 95]])])  # sent again
        assert store.database.rows("SELECT count(*) AS n FROM vital_signs")[0]["n"] == 1
        store.vitals.commit_batch([], [], vitals=[row([[150021, 120]], "cuff1")])  # BP at the same instant
        assert store.database.rows("SELECT count(*) AS n FROM vital_signs")[0]["n"] == 2
        store.vitals.commit_batch([], [], vitals=[row([[147842, 64]])])  # HR alone, same instant, later
        by_code = {r["code"]["coding"][0]["code"]: r for r in store.resources("Observation")}
        assert len(store.resources("Observation")) == 3  # HR, SpO2, BP panel: one HR id
        assert by_code[codes.HEART_RATE]["valueQuantity"]["value"] == 64  # the later write
        assert vital_records.find(store.vitals, by_code[codes.HEART_RATE]["id"])["valueQuantity"]["value"] == 64
        assert vital_records.count(store.vitals, codes.HEART_RATE) == 2  # messages with a heart rate
    finally:
        store.close()


def test_unknown_ids_are_not_found(tmp_path):
    store = Store(tmp_path / "db.sqlite3")
    try:
        msg, device = MESSAGES[0]
        store.vitals.commit_batch([], [], vitals=[vital_records.record(msg, PATIENT, device)])
        some_id = store.resources("Observation")[0]["id"]
        assert vital_records.find(store.vitals, some_id[:-1] + ("0" if some_id[-1] != "0" else "1")) is None
        assert vital_records.find(store.vitals, "hr-1") is None
        assert vital_records.find(store.vitals, "zz" + some_id[2:]) is None
        assert vital_records.has_subject(store.vitals, PATIENT) and not vital_records.has_subject(store.vitals, "Patient/x")
    finally:
        store.close()


def test_select_by_subject_and_time(tmp_path):
    store = Store(tmp_path / "db.sqlite3")
    try:
        rows = []
        for k in range(5):
            msg = decode(orjson.dumps({"d": "dev1", "t": T0_MS + k * 1000, "v": [[147842, 60 + k]]}))
            rows.append(vital_records.record(msg, f"Patient/P{k % 2}", "dev1"))
        store.vitals.commit_batch([], [], vitals=rows)
        since = datetime.fromtimestamp(T0_MS / 1000 + 1.5, timezone.utc)
        newest_first = vital_records.select(store.vitals, "Patient/P0", since)
        assert [r.effective_us for r in newest_first] == [(T0_MS + 4000) * 1000, (T0_MS + 2000) * 1000]
        assert len(vital_records.select(store.vitals, limit=3)) == 3
        assert vital_records.subjects(store.vitals, since) == {"Patient/P0", "Patient/P1"}
    finally:
        store.close()


CITIZEN = "http://fhir.hl7.org.vn/core/sid/cccd"
MRN = "urn:oid:1.2.3.4.5"  # a hospital's medical record numbers


def test_stored_rows_give_the_patient_identifier_beside_the_reference(tmp_path):
    hashed = patient_reference("MRN 42/7", MRN)  # not a FHIR id: the reference is a uuid5
    cases = [(PATIENT, (CITIZEN, PATIENT.removeprefix("Patient/"))), (hashed, (MRN, "MRN 42/7"))]
    store = Store(tmp_path / "db.sqlite3")
    try:
        for subject, (system, value) in cases:
            msg, device = MESSAGES[0]
            direct = vital_observations(msg, subject, device_reference(device),
                                        patient_identifier={"system": system, "value": value})
            row = vital_records.record(msg, subject, device, (system, value))
            assert vital_records.observations([row]) == direct
            store.vitals.commit_batch([], [], vitals=[row])
            read = store.resources("Observation", subject)
            assert unversioned(read) == json.loads(orjson.dumps(direct))
            plain = vital_observations(msg, subject, device_reference(device))
            assert [r["id"] for r in read] == [r["id"] for r in plain], "ids do not depend on it"
            for resource, without in zip(unversioned(read), plain):
                assert resource["subject"] == {"reference": subject,
                                               "identifier": {"system": system, "value": value}}
                assert {**resource, "subject": without["subject"]} == json.loads(orjson.dumps(without))
                Observation.model_validate(resource)
                assert vital_records.find(store.vitals, resource["id"]) == resource
        # the system as a small integer code per row; the value only where the reference hides it
        stored = {r["subject"]: (r["identifier_system"], r["identifier_value"]) for r in store.database.rows(
            "SELECT subject, identifier_system, identifier_value FROM vital_signs")}
        systems = dict(tuple(r) for r in store.database.rows("SELECT system, code FROM vital_identifier_systems"))
        assert stored == {PATIENT: (systems[CITIZEN], None), hashed: (systems[MRN], "MRN 42/7")}
        assert sorted(systems.values()) == [1, 2]
    finally:
        store.close()


def test_a_system_code_of_a_rolled_back_commit_is_not_kept(tmp_path):
    """Two connections: the first assigns a code in a commit that fails; the second assigns that
    code to another system; the first must not write rows under the other system's code."""
    msg, device = MESSAGES[3]
    first, second = Store(tmp_path / "db.sqlite3"), Store(tmp_path / "db.sqlite3")
    try:
        with pytest.raises(sqlite3.Error):  # a dead letter of too many values fails the batch
            first.vitals.commit_batch([], [("mqtt:x", "bad", b"", None, None, None, None)],
                               vitals=[vital_records.record(msg, "Patient/A", device, (MRN, "A"))])
        second.vitals.commit_batch([], [], vitals=[vital_records.record(msg, "Patient/B", device, (CITIZEN, "B"))])
        first.vitals.commit_batch([], [], vitals=[vital_records.record(msg, "Patient/A", device, (MRN, "A"))])
        for store in (first, second):
            subjects = {r["subject"]["reference"]: r["subject"]["identifier"]
                        for r in store.resources("Observation")}
            assert subjects == {"Patient/A": {"system": MRN, "value": "A"},
                                "Patient/B": {"system": CITIZEN, "value": "B"}}
    finally:
        first.close()
        second.close()


def test_a_store_of_the_earlier_layout_is_migrated_and_its_rows_keep_the_reference_alone(tmp_path):
    path = tmp_path / "db.sqlite3"
    msg, device = MESSAGES[0]
    old_row = vital_records.record(msg, PATIENT, device)[:6]
    with sqlite3.connect(path) as db:  # vital_signs as released before the identifier columns
        db.execute("CREATE TABLE vital_signs (effective_us INTEGER NOT NULL, subject TEXT NOT NULL,"
                   " codes TEXT NOT NULL, device TEXT, effective TEXT, vitals TEXT NOT NULL,"
                   " updated_at REAL NOT NULL, PRIMARY KEY (effective_us, subject, codes)) WITHOUT ROWID")
        db.execute("INSERT INTO vital_signs VALUES (?,?,?,?,?,?,?)", (*old_row, 1.0))
        db.execute("CREATE TABLE vital_unindexed (subject TEXT NOT NULL, effective_us INTEGER NOT NULL,"
                   " codes TEXT NOT NULL, at REAL NOT NULL)")
        db.execute("INSERT INTO vital_unindexed VALUES (?,?,?,?)", (PATIENT, old_row[0], old_row[2], 1.0))
    store = Store(path)
    try:
        plain = json.loads(orjson.dumps(vital_observations(msg, PATIENT, device_reference(device))))
        assert unversioned(store.resources("Observation", PATIENT)) == plain  # no system is guessed
        later, _ = MESSAGES[2]
        identified = vital_records.record(later, PATIENT, device, (CITIZEN, "079123456789"))
        store.vitals.commit_batch([], [], vitals=[identified])
        identified = [r for r in store.resources("Observation", PATIENT) if "identifier" in r["subject"]]
        assert identified and len(identified) == len(vital_observations(later, PATIENT))
    finally:
        store.close()
    store = Store(path)  # opened again: nothing to migrate twice
    store.close()
