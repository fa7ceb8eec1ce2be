"""The bridge with several worker processes, against a real Mosquitto: every message stored once,
each bed on one worker in publish order, and the same stored resources and alerts as one worker."""
from __future__ import annotations

import json
import threading
from collections import defaultdict
from datetime import datetime, timezone

import paho.mqtt.client as mqtt
import pytest

from iomt import vital_records
from iomt.bridge import VitalsBridge
from iomt.identity import AdtEvent
from iomt.mqtt_client import MqttOptions
from iomt.topics import Topics
from iomt_peers import broker
from models import clinical_codes as codes
from peers import wait_until
from serving.store import Store

T0_MS = 1_795_000_000_000
BEDS = 12
MDC_HR, MDC_SPO2, MDC_RR, MDC_SYS, MDC_DIA, MDC_TEMP = 147842, 150456, 151562, 150021, 150022, 150364


def publish_all(port: int, messages: list[tuple[str, bytes]]) -> None:
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="workers-pub")
    pub.max_inflight_messages_set(100)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    infos = [pub.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(timeout=60)
        assert info.is_published()
    pub.loop_stop()
    pub.disconnect()


def ward_stream(n_rounds: int) -> list[tuple[str, bytes]]:
    """Per bed a monitor (HR, SpO2, RR every round) and a cuff (BP every 5th round) on their own
    topics; beds 0 and 1 deteriorate (alerts), the rest stay well."""
    out = []
    for k in range(n_rounds):
        for bed in range(BEDS):
            t = T0_MS + k * 1000 + bed
            worse = bed < 2 and k > n_rounds // 2
            hr, spo2, rr = (128, 90, 27) if worse else (70 + k % 5, 97, 15)
            out.append((f"medgate/h1/w{bed % 3}/b{bed}/mon{bed}/vitals",
                        json.dumps({"d": f"mon{bed}", "t": t,
                                    "v": [[MDC_HR, hr], [MDC_SPO2, spo2], [MDC_RR, rr]]}).encode()))
            if k % 5 == 0:
                out.append((f"medgate/h1/w{bed % 3}/b{bed}/cuff{bed}/vitals",
                            json.dumps({"d": f"cuff{bed}", "t": t + 1,
                                        "v": [[MDC_SYS, 85 if worse else 125], [MDC_DIA, 70],
                                              [MDC_TEMP, 36.8]], "o": False, "c": "A"}).encode()))
    return out


def admit(bridge: VitalsBridge) -> None:
    since = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for bed in range(BEDS):
        for device in (f"mon{bed}", f"cuff{bed}"):
            bridge.registry.apply(AdtEvent("admit", device, since, patient_id=f"P{bed}"))


def run_bridge(tmp_path, name: str, workers: int, messages, **kwargs):
    """Publish ``messages`` through a fresh broker to a bridge; returns the store and what each
    commit saw: (worker thread, topic, payload) in commit order."""
    mosq = broker(tmp_path, "allow_anonymous true", "persistence false")
    store = Store(tmp_path / f"{name}.sqlite3")
    seen: list[tuple[str, str, bytes]] = []
    lock = threading.Lock()

    def on_commit(batch, committed_at, worker):
        with lock:
            seen.extend((worker, m.topic, m.payload) for m in batch)

    bridge = VitalsBridge("127.0.0.1", mosq.port, topic_prefix="medgate", store=store.vitals,
                          client_id=f"workers-{name}", options=MqttOptions(protocol="5"),
                          on_commit=on_commit, workers=workers, **kwargs)
    admit(bridge)
    bridge.start()
    try:
        assert bridge.connected.wait(20)
        publish_all(mosq.port, messages)
        wait_until(lambda: len(seen) >= len(messages), timeout_s=120)
    finally:
        bridge.stop()
        mosq.stop()
    return store, seen, bridge


def stored(store: Store) -> dict[tuple[str, str], dict]:
    whole = {(r["resource_type"], r["id"]): json.loads(r["body"])
             for r in store.database.rows("SELECT resource_type, id, body FROM fhir_resources")}
    built = vital_records.observations(vital_records.select(store.vitals))
    return whole | {("Observation", r["id"]): r for r in built}


def test_two_workers_store_the_same_as_one(tmp_path):
    messages = ward_stream(40)
    one, seen_one, _ = run_bridge(tmp_path, "one", 1, messages)
    two, seen_two, bridge = run_bridge(tmp_path, "two", 2, messages, queue_size=64,
                                       batch_max_messages=25)
    try:
        assert len(seen_two) == len(messages)  # nothing lost, nothing committed twice
        by_worker = defaultdict(set)
        order = defaultdict(list)
        for worker, topic, payload in seen_two:
            bed = topic.split("/")[3]
            by_worker[bed].add(worker)
            order[topic].append(json.loads(payload)["t"])
        assert all(len(workers) == 1 for workers in by_worker.values())  # a bed stays on one worker
        assert len(set().union(*by_worker.values())) == 2  # and both workers had beds
        assert all(times == sorted(times) for times in order.values())  # in publish order
        assert stored(two) == stored(one)  # NEWS2 (values of both devices), Flags, Patients...
        alerts = ("SELECT key, payload FROM outbox WHERE kind='mqtt' ORDER BY key")
        assert [tuple(r) for r in two.database.rows(alerts)] == [tuple(r) for r in one.database.rows(alerts)]
        assert one.database.rows(alerts)  # the deteriorating beds did alert
        assert bridge.processed == len(messages)
        census = "SELECT ward, bed, patient_ref, device, seen_at FROM bed_census ORDER BY bed"
        assert [tuple(r) for r in two.database.rows(census)] == [tuple(r) for r in one.database.rows(census)]
        assert len(two.database.rows(census)) == BEDS
    finally:
        one.close()
        two.close()


def test_a_worker_that_dies_is_started_again_and_nothing_is_lost(tmp_path):
    mosq = broker(tmp_path, "allow_anonymous true", "persistence false")
    store = Store(tmp_path / "db.sqlite3")
    bridge = VitalsBridge("127.0.0.1", mosq.port, topic_prefix="medgate", store=store.vitals,
                          client_id="workers-crash", options=MqttOptions(protocol="5"), workers=2)
    admit(bridge)
    messages = ward_stream(20)
    half = len(messages) // 2

    def heart_rates() -> int:
        return vital_records.count(store.vitals, codes.HEART_RATE)

    bridge.start()
    try:
        assert bridge.connected.wait(20)
        publish_all(mosq.port, messages[:half])
        wait_until(lambda: bridge.processed >= half, timeout_s=60)
        victim = bridge.workers[0]
        victim.kill()
        publish_all(mosq.port, messages[half:])
        wait_until(lambda: heart_rates() >= 20 * BEDS, timeout_s=120)
        assert victim.restarts == 1
    finally:
        bridge.stop()
        mosq.stop()
    assert heart_rates() == 20 * BEDS
    store.close()


def test_adt_over_mqtt_reaches_every_worker_and_a_parked_message_is_replayed_once(tmp_path):
    mosq = broker(tmp_path, "allow_anonymous true", "persistence false")
    store = Store(tmp_path / "db.sqlite3")
    bridge = VitalsBridge("127.0.0.1", mosq.port, topic_prefix="medgate", store=store.vitals,
                          client_id="workers-adt", options=MqttOptions(protocol="5"), workers=3)
    vitals = [(f"medgate/h1/w1/b{bed}/mon{bed}/vitals",
               json.dumps({"d": f"mon{bed}", "t": T0_MS, "v": [[MDC_HR, 80]]}).encode())
              for bed in range(BEDS)]
    adts = [("medgate/adt", json.dumps({"event": "admit", "device": f"mon{bed}",
                                        "time": "2026-11-22T08:00:00+07:00",
                                        "patient": {"id": f"P{bed}"}}).encode())
            for bed in range(BEDS)]
    bridge.start()
    try:
        assert bridge.connected.wait(20)
        publish_all(mosq.port, vitals)  # nobody admitted yet: all parked
        wait_until(lambda: len(store.vitals.dead_letters()) == BEDS, timeout_s=60)
        publish_all(mosq.port, adts)
        wait_until(lambda: all(r["replayed_at"] for r in store.vitals.dead_letters()), timeout_s=60)
        wait_until(lambda: bridge.processed >= 2 * BEDS, timeout_s=30)
    finally:
        bridge.stop()
        mosq.stop()
    heart = [r for r in store.resources("Observation") if r["code"]["coding"][0]["code"] == "8867-4"]
    assert sorted(r["subject"]["reference"] for r in heart) == sorted(f"Patient/P{b}" for b in range(BEDS))
    assert len(store.resources("Patient")) == BEDS and len(store.resources("Device")) == BEDS
    assert bridge.processed == 2 * BEDS  # each ADT counted once, by the worker owning its topic
    assert len(store.vitals.dead_letters()) == BEDS  # parked once each, replayed once each
    store.close()


def test_partition_keeps_a_bed_together_and_spreads_beds():
    topics = Topics("medgate")
    for count in (2, 3, 8):
        for bed in range(50):
            parts = {topics.partition(f"medgate/h1/w1/b{bed}/{device}/vitals", count)
                     for device in ("mon", "cuff", "pump")}
            assert len(parts) == 1 and 0 <= parts.pop() < count
        spread = {topics.partition(f"medgate/h1/w1/b{bed}/mon/vitals", count) for bed in range(200)}
        assert spread == set(range(count))
    assert topics.partition("medgate/w1/b1/vitals", 4) == topics.partition("medgate/w1/b1/vitals", 4)
    assert topics.partition("not/a/vitals/topic", 1) == 0


@pytest.mark.parametrize("bad", [0, -1])
def test_worker_count_must_be_positive(tmp_path, bad):
    store = Store(tmp_path / "db.sqlite3")
    with pytest.raises(ValueError, match="workers must be >= 1"):
        VitalsBridge("127.0.0.1", 1, topic_prefix="medgate", store=store.vitals, workers=bad)
    store.close()
