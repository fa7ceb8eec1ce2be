"""Broker restart mid-stream, shared subscriptions over two bridges, bad payloads: real Mosquitto."""
from __future__ import annotations

import json

import paho.mqtt.client as mqtt
import pytest

from iomt import vital_records
from iomt.bridge import VitalsBridge
from iomt.identity import AdtEvent
from iomt.mqtt_client import MqttOptions
from iomt_peers import broker
from models import clinical_codes as codes
from peers import wait_until
from serving.store import Store

T0_MS = 1_795_000_000_000
N_DEVICES = 10


def publisher(port: int, client_id: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def publish_all(client: mqtt.Client, messages: list[tuple[str, bytes]]) -> None:
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(timeout=30)
        assert info.is_published()


def compact_messages(start: int, n: int) -> list[tuple[str, bytes]]:
    out = []
    for k in range(start, start + n):
        dev = f"dev{k % N_DEVICES}"
        doc = {"d": dev, "t": T0_MS + k * 1000, "v": [[147842, 70 + k % 20], [150456, 97]]}
        out.append((f"medgate/h1/w1/b{k % N_DEVICES}/{dev}/vitals", json.dumps(doc).encode()))
    return out


def admit_all(bridge: VitalsBridge) -> None:
    for i in range(N_DEVICES):
        bridge.registry.apply(AdtEvent("admit", f"dev{i}", _t0(), patient_id=f"P{i}"))


def _t0():
    from datetime import datetime, timezone

    return datetime.fromtimestamp(T0_MS / 1000 - 3600, tz=timezone.utc)


def heart_rates(store: Store) -> int:
    return vital_records.count(store.vitals, codes.HEART_RATE)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_broker_restart_mid_stream_loses_nothing(tmp_path, protocol):
    mosq = broker(tmp_path, "allow_anonymous true", "persistence true", f"persistence_location {tmp_path}/",
                  "autosave_interval 1")
    store = Store(tmp_path / "db.sqlite3")
    options = MqttOptions(protocol=protocol, reconnect_min_s=0.2, reconnect_max_s=1)
    bridge = VitalsBridge("127.0.0.1", mosq.port, topic_prefix="medgate", store=store.vitals,
                          options=options, client_id=f"restart-{protocol}", batch_max_messages=50)
    admit_all(bridge)
    bridge.start()
    try:
        assert bridge.connected.wait(10)
        pub = publisher(mosq.port, "restart-pub-1")
        publish_all(pub, compact_messages(0, 300))
        pub.loop_stop()
        pub.disconnect()
        mosq.restart()  # some of the 300 are still queued or unacknowledged at the broker
        wait_until(lambda: bridge.connected.is_set(), timeout_s=20)
        pub = publisher(mosq.port, "restart-pub-2")
        publish_all(pub, compact_messages(300, 300))
        pub.loop_stop()
        pub.disconnect()
        wait_until(lambda: heart_rates(store) >= 600, timeout_s=40)
    finally:
        bridge.stop()
        mosq.stop()
    assert heart_rates(store) == 600  # every message once (duplicates update the same ids)
    store.close()


def test_shared_subscription_splits_the_load(tmp_path):
    mosq = broker(tmp_path, "allow_anonymous true", "persistence false")
    store = Store(tmp_path / "db.sqlite3")
    bridges = [VitalsBridge("127.0.0.1", mosq.port, topic_prefix="medgate", store=store.vitals,
                            options=MqttOptions(protocol="5"), shared_group="workers",
                            client_id=f"worker-{i}") for i in range(2)]
    try:
        for b in bridges:
            admit_all(b)
            b.start()
            assert b.connected.wait(10)
        pub = publisher(mosq.port, "shared-pub")
        publish_all(pub, compact_messages(0, 400))
        pub.loop_stop()
        wait_until(lambda: heart_rates(store) >= 400, timeout_s=30)
    finally:
        for b in bridges:
            b.stop()
        mosq.stop()
    assert sum(b.processed for b in bridges) == 400
    assert all(b.processed > 0 for b in bridges)
    store.close()


BAD = [
    ("not json", b"{not json", "not JSON"),
    ("nan", b'{"d": "dev0", "t": 1795000000000, "v": [[147842, NaN]]}', "not JSON"),
    ("string value", b'{"d": "dev0", "t": 1795000000000, "v": [[147842, "80"]]}', "finite number"),
    ("out of range time", b'{"d": "dev0", "t": 1795000000, "v": [[147842, 80]]}', "epoch milliseconds"),
    ("out of range fraction", json.dumps({"patient": {"id": "p"}, "time": "2026-11-22T10:00:00Z",
     "vitals": [{"code": "150456", "value": 1.5, "unit": "1"}]}).encode(), "within [0, 1]"),
    ("1 MB", b'{"d": "' + b"x" * 1_000_000 + b'"}', "more than"),
    ("unknown device", b'{"d": "nobody", "t": 1795000000000, "v": [[147842, 80]]}', "unknown device"),
]


def test_bad_payloads_are_dead_lettered_with_a_reason(tmp_path):
    mosq = broker(tmp_path, "allow_anonymous true", "persistence false")
    store = Store(tmp_path / "db.sqlite3")
    bridge = VitalsBridge("127.0.0.1", mosq.port, topic_prefix="medgate", store=store.vitals,
                          client_id="bad-bridge")
    letters: list[dict] = []
    listener = publisher(mosq.port, "dl-listener")
    listener.on_message = lambda c, u, m: letters.append(json.loads(m.payload))
    listener.subscribe("medgate/deadletter", qos=1)
    bridge.start()
    try:
        assert bridge.connected.wait(10)
        pub = publisher(mosq.port, "bad-pub")
        publish_all(pub, [("medgate/h1/w1/b1/dev0/vitals", payload) for _, payload, _ in BAD])
        wait_until(lambda: len(letters) >= len(BAD), timeout_s=20)
    finally:
        bridge.stop()
        listener.loop_stop()
        mosq.stop()
    rows = store.vitals.dead_letters()
    assert len(rows) == len(BAD)
    for (name, _, reason), row, letter in zip(BAD, rows, letters):
        assert reason in row["reason"], name
        assert letter["reason"] == row["reason"]
    assert rows[-1]["device"] == "nobody"
    store.close()


def test_a_bridge_on_postgresql_runs_no_sqlite_checkpointer(postgres_url, tmp_path, monkeypatch):
    """PostgreSQL runs its own checkpoints: a bridge on it opens no SQLite file (the database's name
    taken for a path once left an empty file of that name in the working directory)."""
    monkeypatch.chdir(tmp_path)
    store = Store(postgres_url)
    try:
        bridge = VitalsBridge("127.0.0.1", 1, topic_prefix="medgate", store=store.vitals)
        assert bridge.checkpointer is None
        assert list(tmp_path.iterdir()) == []
    finally:
        store.close()
