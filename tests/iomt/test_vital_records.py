"""A vitals message stored as one row gives, when read, exactly the Observations the message
itself gives: same ids, same elements, valid R4; redelivery replaces, look-up by id works."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import orjson
import pytest
from fhir.resources.R4B.observation import Observation

from iomt import codes, vital_records
from iomt.compact import decode
from iomt.identity import device_reference
from iomt.observations import vital_observations
from iomt.payload import parse_payload
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


@pytest.mark.parametrize("msg, device", MESSAGES)
def test_stored_row_gives_the_message_observations(tmp_path, msg, device):
    direct = vital_observations(msg, PATIENT, device_reference(device) if device else None,
                                effective=msg.time.isoformat())
    row = vital_records.record(msg, PATIENT, device)
    assert (row[4] is None) == (msg.time.utcoffset().total_seconds() == 0)
    assert vital_records.observations([row]) == direct
    store = Store(tmp_path / "db.sqlite3")
    try:
        store.commit_batch([], [], vitals=[row])
        read = store.resources("Observation", PATIENT)
        assert read == json.loads(orjson.dumps(direct))  # through the table, as JSON
        for resource in read:
            Observation.model_validate(resource)
            assert vital_records.find(store, resource["id"]) == resource
    finally:
        store.close()


def test_redelivery_replaces_and_other_codes_at_one_instant_stay(tmp_path):
    def row(pairs, device="dev1"):
        msg = decode(orjson.dumps({"d": device, "t": T0_MS, "v": pairs}))
        return vital_records.record(msg, PATIENT, device)

    store = Store(tmp_path / "db.sqlite3")
    try:
        store.commit_batch([], [], vitals=[row([[147842, 60], [150456, 95]])])
        store.commit_batch([], [], vitals=[row([[147842, 60], [150456, 95]])])  # sent again
        assert store.query("SELECT count(*) AS n FROM vital_signs")[0]["n"] == 1
        store.commit_batch([], [], vitals=[row([[150021, 120]], "cuff1")])  # BP at the same instant
        assert store.query("SELECT count(*) AS n FROM vital_signs")[0]["n"] == 2
        store.commit_batch([], [], vitals=[row([[147842, 64]])])  # HR alone, same instant, later
        by_code = {r["code"]["coding"][0]["code"]: r for r in store.resources("Observation")}
        assert len(store.resources("Observation")) == 3  # HR, SpO2, BP panel: one HR id
        assert by_code[codes.HEART_RATE]["valueQuantity"]["value"] == 64  # the later write
        assert vital_records.find(store, by_code[codes.HEART_RATE]["id"])["valueQuantity"]["value"] == 64
        assert vital_records.count(store, codes.HEART_RATE) == 2  # messages with a heart rate
    finally:
        store.close()


def test_unknown_ids_are_not_found(tmp_path):
    store = Store(tmp_path / "db.sqlite3")
    try:
        msg, device = MESSAGES[0]
        store.commit_batch([], [], vitals=[vital_records.record(msg, PATIENT, device)])
        some_id = store.resources("Observation")[0]["id"]
        assert vital_records.find(store, some_id[:-1] + ("0" if some_id[-1] != "0" else "1")) is None
        assert vital_records.find(store, "hr-1") is None
        assert vital_records.find(store, "zz" + some_id[2:]) is None
        assert vital_records.has_subject(store, PATIENT) and not vital_records.has_subject(store, "Patient/x")
    finally:
        store.close()


def test_select_by_subject_and_time(tmp_path):
    store = Store(tmp_path / "db.sqlite3")
    try:
        rows = []
        for k in range(5):
            msg = decode(orjson.dumps({"d": "dev1", "t": T0_MS + k * 1000, "v": [[147842, 60 + k]]}))
            rows.append(vital_records.record(msg, f"Patient/P{k % 2}", "dev1"))
        store.commit_batch([], [], vitals=rows)
        since = datetime.fromtimestamp(T0_MS / 1000 + 1.5, timezone.utc)
        newest_first = vital_records.select(store, "Patient/P0", since)
        assert [r["effective_us"] for r in newest_first] == [(T0_MS + 4000) * 1000, (T0_MS + 2000) * 1000]
        assert len(vital_records.select(store, limit=3)) == 3
        assert vital_records.subjects(store, since) == {"Patient/P0", "Patient/P1"}
    finally:
        store.close()
