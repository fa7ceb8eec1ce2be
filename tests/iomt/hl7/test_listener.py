"""The MLLP listener against python-hl7's MLLP client (``mllp_send`` and ``MLLPClient``): the ACKs,
and what lands in the store."""
from __future__ import annotations

import socket
import subprocess
import threading
import sys
from pathlib import Path

import hl7
import pytest
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from hl7.client import MLLPClient

from iomt.hl7.intake import Intake
from iomt.hl7.listener import MllpListener
from iomt.hl7.wiring import build_listener
from serving.store import Store
from hl7_fixtures import Settings, message

MLLP_SEND = Path(sys.executable).with_name("mllp_send")
HEART_RATE, NEWS2_TOTAL = "8867-4", "1104051000000101"


def send(port: int, raw: bytes) -> hl7.Message:
    with MLLPClient("127.0.0.1", port) as client:
        return hl7.parse(client.send_message(raw).strip(b"\x0b\x1c\r"))


def ack_of(reply: hl7.Message) -> tuple[str, str, str, str]:
    """(MSA-1, MSA-2, ERR-2, ERR-3.1)."""
    err = reply.segments("ERR")[0] if any(s[0][0] == "ERR" for s in reply) else None
    return (str(reply.segment("MSA")[1]), str(reply.segment("MSA")[2]),
            str(err[2]) if err else "", str(err[3][0][0]) if err else "")


def test_mllp_send_delivers_a_his_admission_and_a_monitor_gateway_pcd01(hl7_server, tmp_path):
    listener, bridge, store = hl7_server
    batch = tmp_path / "feed.hl7"  # mllp_send --loose: one message per MSH, \r or \n ended segments
    batch.write_bytes(message("adt_a01_admit.hl7") + b"\n" + message("pcd01_intellivue.hl7"))
    run = subprocess.run([str(MLLP_SEND), "--loose", "--file", str(batch), "--port", str(listener.port),
                          "127.0.0.1"], capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr
    acks = [hl7.parse(a.strip(b"\x0b\x1c\r\n")) for a in run.stdout.split(b"\x1c") if b"MSA" in a]
    assert [ack_of(a)[:2] for a in acks] == [("AA", "ADT0001"), ("AA", "PHL0001")]
    assert str(acks[0].segment("MSH")[9]) == "ACK^A01^ACK"
    patient = store.resources("Patient")[0]
    assert patient["id"] == "MRN0012345"
    assert {(i.get("system"), i["value"], i["type"]["coding"][0]["code"], i["assigner"]["display"])
            for i in patient["identifier"]} == {
        ("urn:medgate:hospital-mrn", "MRN0012345", "MR", "BVDK_HN"),
        ("http://fhir.hl7.org.vn/core/sid/cccd", "079123456789", "NI", "CCCD"),
        ("http://fhir.hl7.org.vn/core/sid/bhyt", "GD4797912345678", "HC", "BHYT")}
    Patient.model_validate(patient)
    encounter = store.resources("Encounter")[0]
    Encounter.model_validate(encounter)
    assert encounter["class"]["code"] == "IMP"
    assert encounter["location"][0]["period"]["start"].startswith("2026-12-03T07:55")  # EVN-6
    assert encounter["status"] == "in-progress" and encounter["identifier"][0]["value"] == "VN20261203001"
    assert encounter["location"][0]["location"]["display"] == "BVDK_HN/ICU/05/B3"
    observations = store.resources("Observation", "Patient/MRN0012345")
    heart = [o for o in observations if o["code"]["coding"][0]["code"] == HEART_RATE]
    assert len(heart) == 1 and heart[0]["valueQuantity"]["value"] == 118  # the ECG rate, not the pleth pulse
    Observation.model_validate(heart[0])
    assert heart[0]["category"][0]["coding"][0]["code"] == "vital-signs"
    assert heart[0]["effectiveDateTime"].startswith("2026-12-03T08:14:55+07:00")
    news2 = [o for o in observations if o["code"]["coding"][0]["code"] == NEWS2_TOTAL]
    # RR 24 (2) + SpO2 91 (3) + systolic 98 (2) + pulse 118 (2) + 38.6 Cel (1); air/oxygen and ACVPU not sent
    assert [n["valueInteger"] for n in news2] == [10]
    assert store.resources("Flag")  # an alert at the bed, through the outbox like an MQTT one
    assert [i.destination for i in store.outbox.items() if i.kind == "mqtt"] == ["medgate/alerts/ICU/B3"]
    assert store.vitals.devices_at_bed("ICU", "B3") == ["0018FFFF00000001"]


def test_a_resent_message_is_acknowledged_again_and_not_applied_twice(hl7_server):
    listener, _, store = hl7_server
    assert ack_of(send(listener.port, message("adt_a01_admit.hl7")))[0] == "AA"
    first = store.vitals.hl7_receipt("BVDK_HN", "HIS", "ADT0001")
    assert ack_of(send(listener.port, message("pcd01_intellivue.hl7")))[0] == "AA"
    rows = store.vitals.vital_rows()
    assert ack_of(send(listener.port, message("pcd01_intellivue.hl7")))[:2] == ("AA", "PHL0001")
    assert store.vitals.vital_rows() == rows and listener.intake.duplicates == 1
    assert store.vitals.hl7_receipt("BVDK_HN", "HIS", "ADT0001") == first
    other = message("adt_a02_transfer.hl7").replace(b"ADT0002", b"ADT0001")  # same MSH-10, another message
    assert ack_of(send(listener.port, other)) == ("AR", "ADT0001", "MSH^1^10", "205")


BAD = [  # fixture, MSA-1, ERR-2, ERR-3 (HL7 table 0357)
    ("bad_msh_no_control_id.hl7", "AR", "MSH^1^10", "101"),
    ("bad_encoding_characters.hl7", "AR", "MSH^1^2", "102"),
    ("bad_unknown_trigger.hl7", "AR", "MSH^1^9^1^2", "201"),
    ("bad_missing_pid3.hl7", "AE", "PID^1^3", "101"),
    ("bad_obx5_not_numeric.hl7", "AE", "OBX^2^5", "102"),
    ("bad_unknown_mdc_code.hl7", "AE", "OBX^3^3", "103"),
]


@pytest.mark.parametrize("name, ack, location, code", BAD)
def test_bad_input_is_refused_naming_the_field_and_dead_lettered(hl7_server, name, ack, location, code):
    listener, _, store = hl7_server
    assert ack_of(send(listener.port, message("adt_a01_admit.hl7")))[0] == "AA"
    before = store.vitals.vital_rows()
    reply = send(listener.port, message(name))
    assert ack_of(reply)[0] == ack and ack_of(reply)[2:] == (location, code)
    assert str(reply.segment("ERR")[4]) == "E" and str(reply.segment("ERR")[8])
    letters = store.vitals.dead_letters()
    assert len(letters) == 1 and letters[0]["source"].startswith("hl7:")
    assert letters[0]["reason"].startswith(f"{ack} {location} {code}: ")
    assert letters[0]["payload_sha256"] and letters[0]["payload_bytes"] == len(message(name))
    # the listener stays up and nothing accepted before is lost
    assert store.vitals.vital_rows() == before and store.resources("Patient")
    assert ack_of(send(listener.port, message("pcd01_intellivue.hl7")))[0] == "AA"


def test_an_oversized_message_is_refused_and_its_connection_closed(tmp_path, hl7_server):
    listener, _, store = hl7_server
    listener.max_message_bytes = 2048
    big = message("pcd01_intellivue.hl7").replace(b"NGUYEN^VAN A", b"N" * 4096)
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as conn:
        conn.sendall(b"\x0b" + big + b"\x1c\r")
        reply = b""
        while chunk := conn.recv(4096):  # the listener closes the connection after the AR
            reply += chunk
    ack = hl7.parse(reply.strip(b"\x0b\x1c\r"))
    assert ack_of(ack)[:3] == ("AR", "PHL0001", "MSH^1")
    assert "max_message_bytes" in str(ack.segment("ERR")[8])
    assert store.vitals.dead_letters()[0]["payload_bytes"] <= 4096
    assert ack_of(send(listener.port, message("adt_a01_admit.hl7")))[0] == "AA"


def test_a_facility_not_allowed_is_refused(tmp_path):
    store = Store(tmp_path / "db.sqlite3")
    listener = build_listener(Settings(allowed_facilities=["BVDK_HN"]), store.vitals)
    listener.start()
    try:
        assert ack_of(send(listener.port, message("adt_a01_admit.hl7")))[0] == "AA"
        assert ack_of(send(listener.port, message("pcd01_intellivue.hl7")))[:4] == ("AR", "PHL0001", "MSH^1^4", "103")
    finally:
        listener.stop()
        store.close()


def test_a_source_not_allowed_is_disconnected(tmp_path):
    listener = MllpListener(Intake.__new__(Intake), "127.0.0.1", 0, allowed_sources=["10.0.0.0/8"])
    listener.start()
    try:
        with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as conn:
            try:
                conn.sendall(b"\x0b" + message("adt_a01_admit.hl7") + b"\x1c\r")
                reply = conn.recv(4096)
            except ConnectionResetError:  # closed before or while the message was sent
                reply = b""
            assert reply == b""  # no ACK: the connection is closed unread
    finally:
        listener.stop()


def test_pcd01_readings_reach_the_vitals_model_s_windows(tmp_path):
    class Windows:  # the bridge's risk scorer, as the server hands it over
        def __init__(self):
            self.samples = []

        def add(self, patient_ref, time_s, samples):
            self.samples.append((patient_ref, time_s, dict(samples)))

    store, windows = Store(tmp_path / "db.sqlite3"), Windows()
    listener = build_listener(Settings(), store.vitals, risk=windows)
    try:
        assert b"MSA|AA|PHL0001" in listener.intake.handle(message("pcd01_intellivue.hl7"))
    finally:
        store.close()
    (patient, _, samples), = windows.samples
    assert patient == "Patient/MRN0012345" and samples["8867-4"] == 118 and samples["2708-6"] == 91


def test_two_gateways_at_once_each_get_every_ack(hl7_server):
    listener, _, store = hl7_server
    raw = message("pcd01_intellivue.hl7")
    acks: dict[str, list[bytes]] = {}

    def gateway(name: str) -> None:
        with MLLPClient("127.0.0.1", listener.port) as client:
            acks[name] = [client.send_message(raw.replace(b"PHL0001", f"{name}{i:03d}".encode())
                                              .replace(b"ICU_GW", name.encode())
                                              .replace(b"081455", f"0815{i:02d}".encode()))
                          for i in range(20)]

    threads = [threading.Thread(target=gateway, args=(name,)) for name in ("GW_A", "GW_B")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(b"MSA|AA|" in ack for name in ("GW_A", "GW_B") for ack in acks[name])
    assert len(store.vitals.vital_rows()) == 20  # the same 20 readings from both: stored once each
    assert listener.intake.accepted == 40


DOCS = Path(__file__).resolve().parents[3] / "docs" / "hl7.md"


def test_the_exchanges_in_the_docs_are_what_the_listener_answers(hl7_server):
    """docs/hl7.md, "Exercised against the real MLLP peer": each row's ACK, in order, on one connection."""
    listener, _, store = hl7_server
    text = DOCS.read_text(encoding="utf-8").split("## Exercised against the real MLLP peer", 1)[1]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.split("\n## ", 1)[0].splitlines()
            if line.startswith("| ") and ".hl7" in line]
    assert len(rows) == 18
    with MLLPClient("127.0.0.1", listener.port) as client:
        for fixture, _, ack, location, code in rows:
            reply = hl7.parse(client.send_message(message(fixture)).strip(b"\x0b\x1c\r"))
            msa, _, err_location, err_code = ack_of(reply)
            assert (fixture, msa, err_location, err_code) == (fixture, ack, location, code)
    assert listener.intake.duplicates == 1 and len(store.vitals.dead_letters()) == 6
