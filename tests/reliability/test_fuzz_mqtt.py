"""Fuzzing the MQTT vitals bridge: >= 1,000 bad payloads (:func:`fuzz_inputs.bad_vitals_payloads`,
all bad by construction) through a real Mosquitto to the real bridge.

Every one must be dead-lettered with a reason naming the problem (dead-letter table and topic),
none may become a FHIR resource, no thread may die, and a good message is processed afterwards.
Counts are printed and, with MEDGATE_FUZZ_REPORT set, written to that JSON file.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter
from datetime import datetime, timezone

import paho.mqtt.client as mqtt
import pytest

import fuzz_inputs as fuzz
from iomt.bridge import VitalsBridge
from iomt.dead_letters import PAYLOAD_PREFIX_BYTES
from iomt.identity import AdtEvent
from iomt.pipeline import UNKNOWN_DEVICE
from peers import wait_until
from serving.store import Store

N_PAYLOADS = 1_100
DEVICE_TOPIC = "medgate/h1/w1/b1/dev1/vitals"
INTERNAL_ERROR = "internal error while processing"


@pytest.fixture
def thread_crashes(monkeypatch):
    """Exceptions that escape any thread while the test runs."""
    crashes: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashes.append(f"{args.thread}: {args.exc_value!r}"))
    return crashes


def _client(port: int, client_id: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def _observations(store: Store) -> int:
    return len(store.resources("Observation"))


def _good(k: int) -> bytes:
    return json.dumps({"d": "dev1", "t": fuzz.T0_MS + k * 1000, "v": [[147842, 72 + k], [150456, 97]]}).encode()


def _category(reason: str) -> str:
    """A short name for a dead-letter reason: its JSON pointer, or its first words (numbers as N)."""
    head = reason.split(":")[0] if reason.startswith("/") else " ".join(reason.split("(")[0].split()[:4])
    return re.sub(r"(?<![A-Za-z_])\d+", "N", head)


def test_bad_payloads_are_dead_lettered_with_a_reason(mosquitto, tmp_path, thread_crashes):
    store = Store(tmp_path / "db.sqlite3")
    bridge = VitalsBridge("127.0.0.1", mosquitto, topic_prefix="medgate", store=store.vitals, client_id="fuzz-bridge")
    bridge.registry.apply(AdtEvent("admit", "dev1", datetime(2026, 1, 1, tzinfo=timezone.utc), patient_id="P1"))
    letters: list[dict] = []
    listener = _client(mosquitto, "fuzz-deadletter-listener")
    listener.on_message = lambda client, userdata, message: letters.append(json.loads(message.payload))
    listener.subscribe(bridge.deadletter_topic, qos=1)
    bridge.start()
    publisher = _client(mosquitto, "fuzz-publisher")
    try:
        assert bridge.connected.wait(10)
        publisher.publish(DEVICE_TOPIC, _good(0), qos=1).wait_for_publish(30)
        wait_until(lambda: bridge.processed == 1, timeout_s=30)
        observations = _observations(store)

        inputs = fuzz.bad_vitals_payloads(N_PAYLOADS)
        infos = [publisher.publish(bad.topic, bad.payload, qos=1) for bad in inputs]
        for info in infos:
            info.wait_for_publish(60)
            assert info.is_published()
        wait_until(lambda: len(store.vitals.dead_letters()) >= len(inputs), timeout_s=120)
        wait_until(lambda: len(letters) >= len(inputs), timeout_s=60)
        assert _observations(store) == observations  # nothing bad became a resource

        publisher.publish(DEVICE_TOPIC, _good(1), qos=1).wait_for_publish(30)  # the bridge goes on
        wait_until(lambda: bridge.processed == 2, timeout_s=30)
        assert _observations(store) > observations
    finally:
        publisher.loop_stop()
        listener.loop_stop()
        bridge.stop()
    rows = store.vitals.dead_letters()
    store.close()

    reasons = Counter(_category(r["reason"]) for r in rows)
    families = Counter(bad.family for bad in inputs)
    counts = {"inputs": len(inputs), "by_family": dict(sorted(families.items())),
              "dead_lettered_table": len(rows), "dead_lettered_topic": len(letters),
              "reasons": dict(reasons.most_common()), "internal_errors": reasons[INTERNAL_ERROR],
              "processed_bad": bridge.processed - 2,
              "crashes": len(thread_crashes) + sum(INTERNAL_ERROR in r["reason"] for r in rows)}
    fuzz.report("mqtt_vitals", counts)

    assert len(inputs) >= 1_000
    assert counts["crashes"] == 0, thread_crashes
    # each one, once: a bounded prefix and the whole payload's hash
    assert Counter((r["payload_sha256"], bytes(r["payload"])) for r in rows) == Counter(
        (hashlib.sha256(bad.payload).hexdigest(), bad.payload[:PAYLOAD_PREFIX_BYTES]) for bad in inputs)
    assert all(r["reason"] and r["reason"] != UNKNOWN_DEVICE for r in rows)  # the payload's fault, named
    assert sorted(letter["reason"] for letter in letters) == sorted(r["reason"] for r in rows)
