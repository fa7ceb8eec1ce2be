"""Two bridge nodes on one store and one Mosquitto: each takes its share of the partitions; when one
dies (sessions closed without DISCONNECT, leases left to expire) the other takes them over and its
persistent sessions are delivered what was queued for them: every message stored once."""
from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone

import paho.mqtt.client as mqtt
import pytest

from iomt.wiring import build_partitioned_bridge
from kernel.cluster import ClusterStore
from kernel.leases import Membership
from models import clinical_codes as codes
from peers import wait_until
from serving.config import Settings
from serving.store import Store

TTL_S = 2.0
WARDS = ("w1", "w2", "h1/w3", "h1/w4")
BEDS = 3
ROUNDS = 16  # messages a bed
T0 = datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc)


def _topic(partition: str, bed: int) -> str:
    if "/" in partition:  # site/ward: the full form
        return f"medgate/{partition}/b{bed}/MON-{partition.replace('/', '-')}-{bed}/vitals"
    return f"medgate/{partition}/b{bed}/vitals"


def _messages() -> list[tuple[str, bytes]]:
    out = []
    for k in range(ROUNDS):
        for partition in WARDS:
            for bed in range(BEDS):
                doc = {"patient": {"id": f"P-{partition.replace('/', '-')}-{bed}"},
                       "time": (T0 + timedelta(seconds=k)).isoformat(),
                       "vitals": [{"code": "8867-4", "value": 70 + k, "unit": "/min"},
                                  {"code": "9279-1", "value": 16, "unit": "/min"}]}
                out.append((_topic(partition, bed), json.dumps(doc).encode()))
    return out


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_a_dead_nodes_partitions_move_and_nothing_is_lost(tmp_path, mosquitto, protocol):
    store = Store(tmp_path / "db.sqlite3")
    cluster = ClusterStore(store.database)
    settings = Settings(mqtt={"url": f"mqtt://127.0.0.1:{mosquitto}", "client_id": "ward-bridge", "protocol": protocol,
                              "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
                        iomt={"partitions": list(WARDS), "partition_lease_ttl_s": TTL_S,
                              "registry_refresh_s": 1.0})
    members = {n: Membership(cluster, n, ["bridge"], TTL_S) for n in ("node-a", "node-b")}
    nodes = {n: build_partitioned_bridge(settings, store.vitals, None, cluster, n, role="bridge") for n in members}
    for name in members:
        members[name].start()
    for node in nodes.values():
        node.start()
    a, b = nodes["node-a"], nodes["node-b"]
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="wards-publisher")
    publisher.connect("127.0.0.1", mosquitto)
    publisher.loop_start()
    try:
        wait_until(lambda: len(a.held()) == len(b.held()) == 2 and a.connected.is_set()
                   and b.connected.is_set(), timeout_s=20)
        assert sorted(a.held() + b.held()) == sorted(WARDS)  # each its fair share, none twice
        for bridge in a.bridges().values():  # node A slow: it dies with a batch received, not acknowledged
            worker = bridge.workers[0]
            worker.process = lambda batch, process=worker.process: (time.sleep(0.3), process(batch))[1]
        messages = _messages()

        def publish() -> None:  # a round every 0.2 s, across the node's death and the takeover
            for i, (topic, body) in enumerate(messages):
                publisher.publish(topic, body, qos=1).wait_for_publish(10)
                if i % (len(WARDS) * BEDS) == len(WARDS) * BEDS - 1:
                    time.sleep(0.2)
        stream = threading.Thread(target=publish)
        stream.start()
        wait_until(lambda: a.processed >= 20, timeout_s=20)
        lost = a.held()
        died = time.monotonic()
        a.halt()  # sessions closed without DISCONNECT, nothing more acknowledged, leases kept
        members["node-a"].stop(leave=False)  # its heartbeat lapses
        assert store.vitals.count(codes.HEART_RATE) < len(messages)
        wait_until(lambda: len(b.held()) == len(WARDS) and b.connected.is_set(), timeout_s=30)
        taken_s = time.monotonic() - died
        stream.join(30)
        wait_until(lambda: store.vitals.count(codes.HEART_RATE) >= len(messages), timeout_s=30)
        drained_s = time.monotonic() - died
        print(f"\nMQTT {protocol}: takeover of {lost} by node-b: {taken_s:.2f} s after node-a died "
              f"(lease ttl {TTL_S} s); "
              f"every message stored {drained_s:.2f} s after; rebuild and start: "
              f"{', '.join(f'{p} {s * 1000:.0f} ms' for p, s in b.takeovers[-len(lost):])}")
        assert taken_s < TTL_S * 4
        time.sleep(0.5)  # nothing more arrives: each message once
        assert store.vitals.count(codes.HEART_RATE) == len(messages)
        assert store.vitals.dead_letters() == []
        for partition in WARDS:  # each bed's last message, whichever node stored it
            rows = store.vitals.vital_rows(f"Patient/P-{partition.replace('/', '-')}-0", limit=1)
            assert rows[0].effective_us == int((T0 + timedelta(seconds=ROUNDS - 1)).timestamp() * 1e6)
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        b.stop()
        members["node-b"].stop()
        store.close()
