"""ADT over MLLP: visits and beds; a bed binds the monitors at it, so MQTT and HL7 vitals reach its patient."""
from __future__ import annotations

import json

import hl7
from hl7.client import MLLPClient

from iomt.identity import DISCHARGED
from hl7_fixtures import message

T0_MS = 1_796_259_600_000  # 2026-12-03T01:00:00Z, after the admission
BED_B3, BED_B1, BED_T2 = "medgate/BVDK_HN/ICU/B3/MON-7/vitals", "medgate/BVDK_HN/ICU/B1/MON-9/vitals", \
    "medgate/BVDK_HN/ED/T2/MON-5/vitals"


def compact(device: str, k: int = 0) -> bytes:
    return json.dumps({"d": device, "t": T0_MS + k * 1000, "v": [[147842, 80 + k], [150456, 96]]}).encode()


def send(port: int, name: str, raw: bytes | None = None) -> str:
    with MLLPClient("127.0.0.1", port) as client:
        reply = hl7.parse(client.send_message(raw or message(name)).strip(b"\x0b\x1c\r"))
    return str(reply.segment("MSA")[1])


def associations(store) -> dict[str, tuple[str, str | None]]:
    return {a.device: (a.patient_id, a.bed) for a in store.vitals.associations()}


def heart_rates(store, patient: str) -> list[float]:
    return sorted(o["valueQuantity"]["value"] for o in store.resources("Observation", f"Patient/{patient}")
                  if o["code"]["coding"][0]["code"] == "8867-4")


def test_admission_binds_the_monitor_at_the_bed_and_replays_what_it_sent_before(hl7_server):
    listener, bridge, store = hl7_server
    bridge.handle(BED_B3, compact("MON-7"))  # a monitor at ICU/B3 nobody has named yet: parked
    assert [d["reason"] for d in store.vitals.dead_letters()] == ["unknown device"]
    assert send(listener.port, "adt_a01_admit.hl7") == "AA"
    assert associations(store) == {"MON-7": ("MRN0012345", "B3")}
    assert all(d["replayed_at"] for d in store.vitals.dead_letters())
    bridge.handle(BED_B3, compact("MON-7", 1))  # MQTT vitals from then on reach the patient
    assert heart_rates(store, "MRN0012345") == [80, 81]
    device = store.resources("Device")[0]
    assert device["patient"]["reference"] == "Patient/MRN0012345"
    patient = store.resources("Patient")[0]
    assert len(patient["identifier"]) == 3  # the HIS's Patient, not the device registry's one identifier


def test_a_gateway_without_pid3_is_resolved_by_the_bed(hl7_server):
    listener, _, store = hl7_server
    assert send(listener.port, "pcd01_bed_only.hl7") == "AE"  # nobody at ICU/B3 yet
    assert send(listener.port, "adt_a01_admit.hl7") == "AA"
    assert send(listener.port, "pcd01_bed_only.hl7") == "AA"
    observations = store.resources("Observation", "Patient/MRN0012345")
    values = {o["code"]["coding"][0]["code"]: o.get("valueQuantity", {}).get("value") for o in observations}
    assert values["2708-6"] == 97 and values["8867-4"] == 80 and values["9279-1"] == 17
    spo2 = next(o for o in observations if o["code"]["coding"][0]["code"] == "2708-6")
    assert spo2["effectiveDateTime"].startswith("2026-12-03T08:30:00+07:00")  # hl7.timezone: no offset sent
    assert "00A0370098006640" in store.vitals.devices_at_bed("ICU", "B3")


def test_transfer_moves_the_patient_to_the_new_beds_monitor_and_discharge_releases_it(hl7_server):
    listener, bridge, store = hl7_server
    bridge.handle(BED_B3, compact("MON-7"))
    bridge.handle(BED_B1, compact("MON-9"))
    assert send(listener.port, "adt_a01_admit.hl7") == "AA"
    assert associations(store)["MON-7"] == ("MRN0012345", "B3")
    assert "MON-9" not in associations(store)
    assert send(listener.port, "adt_a02_transfer.hl7") == "AA"
    assert associations(store) == {"MON-7": (DISCHARGED, None), "MON-9": ("MRN0012345", "B1")}
    encounter = store.resources("Encounter")[0]
    assert encounter["location"][0]["location"]["display"] == "BVDK_HN/ICU/06/B1"
    visit = store.vitals.hl7_encounter("BVDK_HN", "VN20261203001")
    assert (visit.ward, visit.bed, visit.status) == ("ICU", "B1", "in-progress")
    assert store.vitals.hl7_encounter_at_bed("ICU", "B3") is None
    assert send(listener.port, "adt_a03_discharge.hl7") == "AA"
    assert associations(store)["MON-9"] == (DISCHARGED, None)
    assert store.resources("Encounter")[0]["status"] == "finished"
    assert store.vitals.hl7_encounter_at_bed("ICU", "B1") is None
    bridge.handle(BED_B1, compact("MON-9", 2))  # after the discharge: parked again
    assert store.vitals.dead_letters()[-1]["reason"] == "unknown device"


def test_merge_moves_the_prior_patients_visits_and_monitors(hl7_server):
    listener, bridge, store = hl7_server
    bridge.handle(BED_T2, compact("MON-5"))
    assert send(listener.port, "adt_a04_register.hl7") == "AA"
    assert associations(store)["MON-5"] == ("MRN0099999", "T2")
    assert send(listener.port, "adt_a40_merge.hl7") == "AA"
    assert associations(store)["MON-5"] == ("MRN0012345", "T2")
    patients = {p["id"]: p for p in store.resources("Patient")}
    assert patients["MRN0099999"]["active"] is False
    assert patients["MRN0099999"]["link"] == [{"other": {"reference": "Patient/MRN0012345"}, "type": "replaced-by"}]
    assert patients["MRN0012345"]["link"][0]["type"] == "replaces"
    assert store.vitals.hl7_encounter("BVDK_HN", "VN20261203000").patient_id == "MRN0012345"
    bridge.handle(BED_T2, compact("MON-5", 1))
    assert 81 in heart_rates(store, "MRN0012345")


def test_cancel_admit_releases_the_monitor_and_cancels_the_visit(hl7_server):
    listener, bridge, store = hl7_server
    bridge.handle(BED_B3, compact("MON-7"))
    assert send(listener.port, "adt_a01_admit.hl7") == "AA"
    assert send(listener.port, "adt_a11_cancel_admit.hl7") == "AA"
    assert associations(store)["MON-7"] == (DISCHARGED, None)
    assert store.resources("Encounter")[0]["status"] == "cancelled"
    assert store.vitals.hl7_encounter_at_bed("ICU", "B3") is None


def test_cancel_transfer_goes_back_to_the_first_bed_and_cancel_discharge_binds_again(hl7_server):
    listener, bridge, store = hl7_server
    bridge.handle(BED_B3, compact("MON-7"))
    bridge.handle(BED_B1, compact("MON-9"))
    for name in ("adt_a01_admit.hl7", "adt_a02_transfer.hl7", "adt_a12_cancel_transfer.hl7"):
        assert send(listener.port, name) == "AA"
    assert associations(store) == {"MON-7": ("MRN0012345", "B3"), "MON-9": (DISCHARGED, None)}
    assert send(listener.port, "adt_a03_discharge.hl7") == "AA"  # PV1-3 ICU/B1: the stored B3 is released too
    assert associations(store)["MON-7"] == (DISCHARGED, None)
    assert send(listener.port, "adt_a13_cancel_discharge.hl7") == "AA"  # still in ICU/B1
    assert associations(store)["MON-9"] == ("MRN0012345", "B1")
    assert store.vitals.hl7_encounter_at_bed("ICU", "B1").visit_number == "VN20261203001"


def test_an_update_rewrites_the_patient_and_keeps_the_visit(hl7_server):
    listener, _, store = hl7_server
    assert send(listener.port, "adt_a01_admit.hl7") == "AA"
    assert send(listener.port, "adt_a08_update.hl7") == "AA"
    patient = store.resources("Patient")[0]
    assert "GD4797912399999" in {i["value"] for i in patient["identifier"]}
    assert store.vitals.hl7_encounter("BVDK_HN", "VN20261203001").status == "in-progress"
