"""The vitals bridge against a real Mosquitto broker, fed by `mosquitto_pub`."""
from __future__ import annotations

import json
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from fhir.resources.R4B.observation import Observation

from iomt.bridge import VitalsBridge
from peers import require_peer, wait_until
from serving.delivery.outbox import Outbox
from serving.store import Store
from training.synthetic.vitals import vitals_course


@pytest.fixture
def bridge(tmp_path, mosquitto):
    store = Store(tmp_path / "db.sqlite3")
    bridges: list[VitalsBridge] = []
    outbox = Outbox(store, {"mqtt": lambda topic, payload: bridges[0].publish(topic, payload)},
                    backoff_base_s=0.1)
    b = VitalsBridge("127.0.0.1", mosquitto, topic_prefix="medgate", store=store.vitals, outbox=outbox,
                     client_id="test-bridge")
    bridges.append(b)
    b.start()
    outbox.start()
    assert b.connected.wait(10)
    try:
        yield b, store, mosquitto
    finally:
        outbox.stop()
        b.stop()
        store.close()


def pub(port: int, topic: str, message: str) -> None:
    binary = require_peer("mosquitto_pub", "mosquitto-clients")
    subprocess.run([binary, "-p", str(port), "-q", "1", "-t", topic, "-m", message], check=True, timeout=30)


def listen(port: int, topic: str) -> tuple[mqtt.Client, list[dict]]:
    got: list[dict] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"listener-{topic.replace('/', '-')}")
    client.on_message = lambda c, u, m: got.append(json.loads(m.payload))
    client.connect("127.0.0.1", port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    return client, got


def test_mosquitto_pub_to_valid_fhir_observations(bridge):
    b, store, port = bridge
    payload = vitals_course(1, patient_id="079123456789", deteriorating=False, seed=2)[0]
    pub(port, "medgate/ward-3/bed-12/vitals", json.dumps(payload))
    wait_until(lambda: b.processed >= 1, timeout_s=15)
    observations = store.resources("Observation", "Patient/079123456789")
    # HR, RR, SpO2, BP panel, temperature, NEWS2
    assert len(observations) == 6
    for resource in observations:
        Observation.model_validate(resource)
    codes = {o["code"]["coding"][0]["code"] for o in observations}
    assert {"8867-4", "9279-1", "85354-9", "8310-5"} <= codes


def test_resend_updates_instead_of_duplicating(bridge):
    b, store, port = bridge
    payload = json.dumps(vitals_course(1, patient_id="P1", deteriorating=False)[0])
    pub(port, "medgate/w/b/vitals", payload)
    pub(port, "medgate/w/b/vitals", payload)
    wait_until(lambda: b.processed >= 2, timeout_s=15)
    assert len(store.resources("Observation", "Patient/P1")) == 6


def test_deteriorating_patient_raises_an_alert(bridge):
    b, store, port = bridge
    client, alerts = listen(port, "medgate/alerts/#")
    try:
        last = vitals_course(30, patient_id="P2", deteriorating=True, seed=4)[-1]
        pub(port, "medgate/ward-1/bed-2/vitals", json.dumps(last))
        wait_until(lambda: alerts, timeout_s=15)
    finally:
        client.loop_stop()
    assert alerts[0]["band"] in ("medium", "high") and alerts[0]["patient"] == "P2"
    assert alerts[0]["ward"] == "ward-1" and alerts[0]["bed"] == "bed-2"


@pytest.mark.parametrize("message, reason", [
    ("not json at all", "JSON"),
    ('{"time": "2026-11-22T10:00:00+07:00", "vitals": []}', "patient"),
])
def test_bad_payload_goes_to_dead_letter_topic(bridge, message, reason):
    b, store, port = bridge
    client, letters = listen(port, "medgate/deadletter")
    try:
        pub(port, "medgate/w/b/vitals", message)
        wait_until(lambda: letters, timeout_s=15)
    finally:
        client.loop_stop()
    assert reason.lower() in letters[0]["reason"].lower()
    assert store.vitals.dead_letters()[0]["reason"] == letters[0]["reason"]
    assert b.connected.is_set()


def test_alert_only_when_the_band_changes(bridge):
    b, store, port = bridge
    course = vitals_course(30, patient_id="P3", deteriorating=True, seed=5)
    client, alerts = listen(port, "medgate/alerts/#")
    try:
        for payload in (course[-3], course[-2], course[-1]):  # all three in the same (high) band
            b.handle("medgate/w/b/vitals", json.dumps(payload).encode())
        wait_until(lambda: alerts, timeout_s=15)
        b.outbox.deliver_due()
    finally:
        client.loop_stop()
    assert len(alerts) == 1 and alerts[0]["band"] == "high"


def test_acknowledged_only_after_the_log_is_on_the_disk(bridge, monkeypatch):
    """The worker commits without waiting for the disk; the PUBACK waits for the fsync."""
    b, store, port = bridge
    events: list[str] = []
    gate = threading.Event()
    sync_log, ack_many = store.vitals.sync_log, b.client.ack_many

    def gated_sync() -> None:
        events.append("fsync started")
        assert gate.wait(30)
        sync_log()
        events.append("fsync done")

    def recorded_ack(mids) -> None:
        events.append(f"ack {len(mids)}")
        ack_many(mids)

    monkeypatch.setattr(store.vitals, "sync_log", gated_sync)
    monkeypatch.setattr(b.client, "ack_many", recorded_ack)
    pub(port, "medgate/w/b/vitals", json.dumps(vitals_course(1, patient_id="P9", deteriorating=False)[0]))
    wait_until(lambda: "fsync started" in events, timeout_s=15)
    assert len(store.resources("Observation", "Patient/P9")) == 6  # committed meanwhile
    assert b.processed == 0 and not any(e.startswith("ack") for e in events)
    gate.set()
    wait_until(lambda: b.processed >= 1, timeout_s=15)
    assert events[:3] == ["fsync started", "fsync done", "ack 1"]


def test_a_failed_flush_acknowledges_nothing(bridge, monkeypatch):
    """Linux may report the flush after a failed one a success with the pages gone: the bridge
    stops acknowledging instead, and the broker keeps the messages for the next start."""
    b, store, port = bridge

    def failing_sync() -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(store.vitals, "sync_log", failing_sync)
    pub(port, "medgate/w/b/vitals", json.dumps(vitals_course(1, patient_id="P8",
                                                             deteriorating=False)[0]))
    wait_until(lambda: b.sync_failed is not None, timeout_s=15)
    pub(port, "medgate/w/b/vitals", json.dumps(vitals_course(2, patient_id="P8",
                                                             deteriorating=False)[1]))
    time.sleep(1.0)
    assert b.processed == 0 and b.sync_failed.errno == 5
