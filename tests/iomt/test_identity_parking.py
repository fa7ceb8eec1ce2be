"""ADT messages associate devices with patients; unknown devices are parked, then replayed."""
from __future__ import annotations

import json

import pytest
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.patient import Patient

from iomt.bridge import VitalsBridge
from iomt.identity import parse_adt
from iomt.payload import PayloadError
from serving.store import Store

T0_MS = 1_795_000_000_000
VITALS = "medgate/h1/w1/b1/MON-7/vitals"


def adt(event="admit", **extra) -> bytes:
    doc = {"event": event, "device": "MON-7", "time": "2026-11-22T08:00:00+07:00", **extra}
    if event != "discharge":
        doc.setdefault("patient", {"id": "079123456789"})
    return json.dumps(doc).encode()


def compact(k=0) -> bytes:
    return json.dumps({"d": "MON-7", "t": T0_MS + k * 1000, "v": [[147842, 80], [150456, 96]]}).encode()


@pytest.fixture
def bridge(tmp_path):
    store = Store(tmp_path / "db.sqlite3")
    yield VitalsBridge("127.0.0.1", 1, topic_prefix="medgate", store=store.vitals), store
    store.close()


def test_unknown_device_is_parked_then_replayed_on_admission(bridge):
    b, store = bridge
    assert b.handle(VITALS, compact(0)) == []
    assert b.handle(VITALS, compact(1)) == []
    parked = store.vitals.dead_letters()
    assert [r["reason"] for r in parked] == ["unknown device"] * 2 and parked[0]["device"] == "MON-7"
    b.handle("medgate/adt", adt(insurance={"id": "GD4797912345678"}))
    assert all(r["replayed_at"] for r in store.vitals.dead_letters())
    observations = store.resources("Observation", "Patient/079123456789")
    assert len([o for o in observations if o["code"]["coding"][0]["code"] == "8867-4"]) == 2
    patient = Patient.model_validate(store.resources("Patient")[0])
    systems = {i.system for i in patient.identifier}
    assert systems == {"http://fhir.hl7.org.vn/core/sid/cccd", "http://fhir.hl7.org.vn/core/sid/bhyt"}
    device = Device.model_validate(store.resources("Device")[0])
    assert device.patient.reference == "Patient/079123456789"


def test_parked_and_admitted_in_the_same_batch(bridge):
    b, store = bridge
    out = b.pipeline.run([(VITALS, compact(0)), ("medgate/adt", adt())])
    assert out.dead_letters == [] and out.processed == 2


def test_discharge_parks_again_and_a_stale_transfer_changes_nothing(bridge):
    b, store = bridge
    b.handle("medgate/adt", adt())
    b.handle("medgate/adt", adt("discharge", time="2026-11-22T09:00:00+07:00"))
    assert b.handle(VITALS, compact(0)) == []
    b.handle("medgate/adt", adt("transfer", time="2026-11-22T07:00:00+07:00",
                                patient={"id": "OTHER"}))
    assert b.registry.lookup("MON-7") is None


def test_payload_with_a_patient_needs_no_association(bridge):
    b, store = bridge
    doc = {"patient": {"id": "P9"}, "device": "MON-9", "time": "2026-11-22T10:00:00Z",
           "vitals": [{"code": "8867-4", "value": 80, "unit": "/min"}]}
    assert b.handle("medgate/w1/b1/vitals", json.dumps(doc).encode())


def test_spo2_scale_2_from_the_admission(bridge):
    b, store = bridge
    b.handle("medgate/adt", adt(spo2_scale=2))
    resources = b.handle(VITALS, json.dumps({"d": "MON-7", "t": T0_MS, "v": [[150456, 89]]}).encode())
    news2 = [r for r in resources if r.get("valueInteger") is not None][0]
    spo2 = [c for c in news2["component"] if "scale 2" in c["code"]["coding"][0]["display"]]
    assert spo2 and spo2[0]["valueInteger"] == 0  # 88-92 on scale 2 scores 0 (scale 1: 3)


@pytest.mark.parametrize("doc, reason", [
    (b"nope", "not JSON"),
    (json.dumps({"event": "admit", "device": "d", "time": "2026-11-22T08:00:00Z"}).encode(), "/patient"),
    (json.dumps({"event": "move", "device": "d", "time": "2026-11-22T08:00:00Z"}).encode(), "/event"),
    (json.dumps({"event": "discharge", "device": "d", "time": "2026-11-22T08:00:00"}).encode(), "/time"),
])
def test_bad_adt(doc, reason):
    with pytest.raises(PayloadError, match=reason):
        parse_adt(doc)
