"""Dead letters keep a bounded prefix, the SHA-256 and the length of the payload, stored and published."""
from __future__ import annotations

import base64
import hashlib
import json

import paho.mqtt.client as mqtt
import pytest

from iomt.bridge import VitalsBridge
from iomt.dead_letters import PAYLOAD_PREFIX_BYTES, dead_letter, message
from peers import wait_until
from serving.store import Store

BIG = b"{" + b"A" * (16 * 1024 * 1024 - 1)  # 16 MiB that is not a vitals message
T0_MS = 1_795_000_000_000


def test_a_dead_letter_is_bounded():
    letter = dead_letter("mqtt:medgate/w/b/vitals", "r" * 100_000, BIG)
    assert letter.payload == BIG[:PAYLOAD_PREFIX_BYTES]
    assert letter.payload_sha256 == hashlib.sha256(BIG).hexdigest() and letter.payload_bytes == len(BIG)
    assert len(letter.reason) < 600
    published = json.dumps(message(letter))
    assert len(published) < 2 * PAYLOAD_PREFIX_BYTES
    assert json.loads(published)["payload_truncated"] is True


def test_a_parked_message_is_kept_whole():
    payload = b'{"d": "MON-7"}'
    letter = dead_letter("mqtt:medgate/w/b/vitals", "unknown device", payload, "MON-7", whole=True)
    assert letter.payload == payload and letter.payload_bytes == len(payload)
    assert message(letter)["payload_truncated"] is False


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "db.sqlite3")
    yield s
    s.close()


def test_the_stored_row_holds_the_prefix_and_hash(store):
    b = VitalsBridge("127.0.0.1", 1, topic_prefix="medgate", store=store.vitals)
    assert b.handle("medgate/w/b/vitals", BIG) == []
    row, = store.vitals.dead_letters()
    assert bytes(row["payload"]) == BIG[:PAYLOAD_PREFIX_BYTES]
    assert row["payload_sha256"] == hashlib.sha256(BIG).hexdigest()
    assert row["payload_bytes"] == len(BIG)


def test_the_published_dead_letter_is_bounded(store, mosquitto):
    b = VitalsBridge("127.0.0.1", mosquitto, topic_prefix="medgate", store=store.vitals, client_id="dl-bridge")
    got: list[bytes] = []
    listener = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dl-listener")
    listener.on_message = lambda c, u, m: got.append(m.payload)
    listener.connect("127.0.0.1", mosquitto)
    listener.subscribe("medgate/deadletter", qos=1)
    listener.loop_start()
    b.start()
    try:
        assert b.connected.wait(10)
        listener.publish("medgate/w/b/vitals", BIG, qos=1).wait_for_publish(30)
        wait_until(lambda: got, timeout_s=30)
    finally:
        b.stop()
        listener.loop_stop()
        listener.disconnect()
    assert len(got[0]) < 2 * PAYLOAD_PREFIX_BYTES
    letter = json.loads(got[0])
    assert base64.b64decode(letter["payload_base64"]) == BIG[:PAYLOAD_PREFIX_BYTES]
    assert letter["payload_sha256"] == hashlib.sha256(BIG).hexdigest()
    assert letter["payload_bytes"] == len(BIG) and letter["payload_truncated"] is True
    assert "more than" in letter["reason"]
