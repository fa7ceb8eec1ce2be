"""The ward board reads vitals rows without building their Observations and finds recent patients
through the patient index, with the same sparklines the Observations give."""
from __future__ import annotations

import copy
import json
import time
from datetime import datetime, timedelta, timezone

import orjson

from iomt import vital_records
from iomt.compact import decode
from iomt.payload import parse_payload
from iomt.vital_index import VitalIndex
from serving.http.ward import POINTS, _series, polled_board, ward_board
from serving.store import Store

PATIENT = "Patient/079123456789"
FULL = {"patient": {"id": "079123456789"}, "device": "MON-3-12",
        "vitals": [{"code": "8867-4", "value": 92, "unit": "/min"},
                   {"code": "150456", "system": "urn:iso:std:iso:11073:10101", "value": 0.95, "unit": "1"},
                   {"code": "9279-1", "value": 22, "unit": "/min"},
                   {"code": "150021", "value": 118, "unit": "mm[Hg]"},
                   {"code": "150022", "value": 9.5, "unit": "kPa"},
                   {"code": "8310-5", "value": 100.4, "unit": "[degF]"}]}


def messages(start: datetime, n: int) -> list:
    """Full-form messages (BP, °F, kPa, SpO2 as a fraction, +07:00) every 10th, compact between."""
    out = []
    for k in range(n):
        at = start + timedelta(seconds=k)
        if k % 10 == 0:
            doc = copy.deepcopy(FULL)
            doc["time"] = at.astimezone(timezone(timedelta(hours=7))).isoformat()
            doc["vitals"][0]["value"] = 80 + k % 7
            out.append(parse_payload(json.dumps(doc).encode()))
        else:
            out.append(decode(orjson.dumps({"d": "MON-3-12", "t": int(at.timestamp() * 1000),
                                            "v": [[147842, 60 + k % 9], [150456, 95.5], [151562, 14]]})))
    return out


def test_rows_give_the_sparklines_of_their_observations():
    rows = [vital_records.record(m, PATIENT, "MON-3-12")
            for m in messages(datetime(2026, 12, 2, 3, tzinfo=timezone.utc), 3 * POINTS + 7)]
    newest_first = sorted(rows, key=lambda row: row[0], reverse=True)
    observations = sorted(vital_records.observations(rows),
                          key=lambda o: datetime.fromisoformat(o["effectiveDateTime"]))
    fast, _ = _series([], newest_first)
    assert fast == _series(observations, [])[0]  # the whole-resource path, as a store of 2026-12-01
    assert {name: len(points) for name, points in fast.items()} == \
        {"hr": POINTS, "rr": POINTS, "spo2": POINTS, "temp": 10, "sys": 10, "dia": 10}
    assert fast["temp"][-1][1] == 38 and round(fast["dia"][-1][1], 2) == 71.26  # °F, kPa normalised
    times = [datetime.fromisoformat(when) for when, _ in fast["hr"]]
    assert times == sorted(times) and times[-1] == datetime(2026, 12, 2, 3, 1, 36, tzinfo=timezone.utc)


def test_recent_patients_come_from_the_index_and_the_log(tmp_path):
    clock = [0.0]
    store = Store(tmp_path / "db.sqlite3", VitalIndex(lag_s=1.0, settle_s=2.5, clock=lambda: clock[0]))
    try:
        now = datetime.now(timezone.utc)
        old = [vital_records.record(m, "Patient/old", "d0") for m in messages(now - timedelta(hours=2), 3)]
        recent = [vital_records.record(m, f"Patient/p{k}", f"d{k}")
                  for k in range(4) for m in messages(now - timedelta(minutes=5 - k), 2)]
        store.vitals.commit_batch([], [], vitals=old + recent)
        clock[0] += 0.5  # half of the patients are indexed, half still in the log
        store.vitals.commit_batch([], [], vitals=[vital_records.record(messages(now, 1)[0], "Patient/new", "d9")])
        assert 0 < len(vital_records.subjects(store.vitals, now - timedelta(days=1))) and \
            store.database.rows("SELECT count(*) AS n FROM vital_unindexed")[0]["n"] > 0
        assert vital_records.subjects(store.vitals, now - timedelta(hours=1)) == \
            {f"Patient/p{k}" for k in range(4)} | {"Patient/new"}
        assert vital_records.subjects(store.vitals, now - timedelta(days=1)) == \
            {f"Patient/p{k}" for k in range(4)} | {"Patient/new", "Patient/old"}
        waiting = vital_records.waiting_rows(store.vitals)
        assert waiting and vital_records.waiting_rows(store.vitals, subjects=["Patient/new", "Patient/x"]) == \
            {p: rows for p, rows in waiting.items() if p == "Patient/new"}
        store.vitals.record_beds([("ward-a", "bed-1", "site", "Patient/p1", "d1", now.isoformat())])
        board = ward_board(store, time.time())
        tiles = {tile["patient"]: tile for tile in board["beds"]}
        assert set(tiles) == {f"Patient/p{k}" for k in range(4)} | {"Patient/new"}
        assert tiles["Patient/p1"]["bed"] == "bed-1" and tiles["Patient/p0"]["bed"] is None
        assert len(tiles["Patient/p2"]["vitals"]["hr"]) == 2 and tiles["Patient/p2"]["vitals"]["sys"]
    finally:
        store.close()


def test_open_streams_share_one_board_a_poll(tmp_path, monkeypatch):
    store = Store(tmp_path / "db.sqlite3")
    try:
        first = polled_board(store)
        assert polled_board(store) is first  # a second screen within POLL_S: the same board
        monkeypatch.setattr("serving.http.ward.POLL_S", 0.0)
        assert polled_board(store) is not first
    finally:
        store.close()


def test_a_wards_board_has_its_beds_alone(tmp_path):
    store = Store(tmp_path / "db.sqlite3")
    try:
        now = datetime.now(timezone.utc)
        store.vitals.commit_batch([], [], vitals=[vital_records.record(m, f"Patient/p{k}", f"d{k}")
                                           for k in range(4) for m in messages(now, 2)])
        store.vitals.record_beds([(ward, f"bed-{k}", "site", f"Patient/p{k}", f"d{k}", now.isoformat())
                           for k, ward in enumerate(("ward-a", "ward-b", "ward-a"))])
        whole = ward_board(store)
        assert whole["wards"] == ["ward-a", "ward-b"] and whole["ward"] is None
        assert [(t["ward"], t["patient"]) for t in whole["beds"]] == \
            [("ward-a", "Patient/p0"), ("ward-a", "Patient/p2"), ("ward-b", "Patient/p1"), (None, "Patient/p3")]
        board = ward_board(store, ward="ward-a")
        assert board["wards"] == ["ward-a", "ward-b"] and board["ward"] == "ward-a"
        assert [t["patient"] for t in board["beds"]] == ["Patient/p0", "Patient/p2"]  # no unassigned
        assert board["beds"] == whole["beds"][:2]  # the same tiles
        assert ward_board(store, ward="ward-z")["beds"] == []
        assert polled_board(store, "ward-a") is polled_board(store, "ward-a") is not polled_board(store)
    finally:
        store.close()
