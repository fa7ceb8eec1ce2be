"""BridgeClient against a real Mosquitto: the lean receive path hands on_message (or a read at a
time to on_messages) what stock paho would, in order, and PUBACKs written by ack_many are the
only ones the broker sees."""
from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
import pytest

from iomt.mqtt_client import BridgeClient, Message, MqttOptions, connect_async, make_client
from iomt_peers import broker
from peers import wait_until

TOPIC = "medgate/h1/w1/b{}/dev{}/vitals"


def payloads() -> list[tuple[str, bytes]]:
    """Sizes around the 64 KiB socket read, so packets straddle reads; one topic in UTF-8."""
    out = [(TOPIC.format(k % 7, k % 7), bytes([k % 251]) * size)
           for k, size in enumerate([0, 1, 127, 128, 16_383, 16_384, 65_000, 70_000, 200] * 30)]
    out.append(("medgate/h1/phòng-3/b1/dev1/vitals", b'{"d": "dev1"}'))
    return out


def subscriber(port: int, client_id: str, protocol: str, received: list,
               bulk: bool = False) -> BridgeClient:
    client = make_client(client_id, MqttOptions(protocol=protocol, reconnect_min_s=0.2,
                                                reconnect_max_s=1))
    ready = threading.Event()

    def on_connect(c, userdata, flags, reason_code, properties):
        c.subscribe([("medgate/#", 1)])

    client.on_connect = on_connect
    client.on_subscribe = lambda *args: ready.set()  # the broker has the subscription: SUBACK
    client.on_message = lambda c, userdata, message: received.append(message)
    if bulk:
        client.on_messages = lambda c, userdata, messages: received.extend(messages)
    connect_async(client, "127.0.0.1", port, MqttOptions(protocol=protocol))
    client.loop_start()
    assert ready.wait(10)
    return client


def publish_all(port: int, messages: list[tuple[str, bytes]]) -> None:
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="mqtt-client-pub")
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    infos = [pub.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(timeout=30)
    pub.loop_stop()
    pub.disconnect()


@pytest.mark.parametrize("lean, bulk", [(True, True), (True, False), (False, False)])
@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_messages_arrive_whole_and_in_order(tmp_path, monkeypatch, protocol, lean, bulk):
    monkeypatch.setattr(BridgeClient, "lean", lean)
    mosq = broker(tmp_path, "allow_anonymous true", "persistence false")
    received: list = []
    client = subscriber(mosq.port, f"lean-{protocol}-{lean}-{bulk}", protocol, received, bulk)
    sent = payloads()
    try:
        publish_all(mosq.port, sent)
        wait_until(lambda: len(received) >= len(sent), timeout_s=30)
        client.ack_many([m.mid for m in received])
    finally:
        client.disconnect()
        client.loop_stop()
        mosq.stop()
    assert [(m.topic, m.payload) for m in received] == sent
    assert all(m.qos == 1 and m.mid > 0 for m in received)
    if lean:
        assert all(isinstance(m, Message) for m in received)


@pytest.mark.parametrize("lean, bulk", [(True, True), (True, False), (False, False)])
def test_only_acknowledged_messages_are_not_delivered_again(tmp_path, monkeypatch, lean, bulk):
    monkeypatch.setattr(BridgeClient, "lean", lean)
    mosq = broker(tmp_path, "allow_anonymous true", "persistence false")
    sent = [(TOPIC.format(1, 1), str(k).encode()) for k in range(200)]
    first: list = []
    client = subscriber(mosq.port, "ack-many", "5", first, bulk)
    try:
        publish_all(mosq.port, sent)
        wait_until(lambda: len(first) >= len(sent), timeout_s=30)
        client.ack_many([m.mid for m in first[:120]])  # one write of 120 PUBACKs
        wait_until(lambda: not client.want_write(), timeout_s=10)
        client.disconnect()
        client.loop_stop()
        again: list = []
        client = subscriber(mosq.port, "ack-many", "5", again, bulk)  # same session: the rest again
        wait_until(lambda: len(again) >= 80, timeout_s=30)
        client.ack_many([m.mid for m in again])
    finally:
        client.disconnect()
        client.loop_stop()
        mosq.stop()
    assert [m.payload for m in again] == [p for _, p in sent[120:]]
    assert all(m.dup for m in again)


def test_publish_properties_go_through_paho(tmp_path):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    mosq = broker(tmp_path, "allow_anonymous true", "persistence false")
    received: list = []
    client = subscriber(mosq.port, "props", "5", received, bulk=True)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="props-pub", protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", mosq.port)
    pub.loop_start()
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = ("source", "test")
    try:
        pub.publish(TOPIC.format(1, 1), b"with", qos=1, properties=props).wait_for_publish(10)
        pub.publish(TOPIC.format(1, 1), b"without", qos=1).wait_for_publish(10)
        wait_until(lambda: len(received) >= 2, timeout_s=10)
    finally:
        pub.loop_stop()
        pub.disconnect()
        client.disconnect()
        client.loop_stop()
        mosq.stop()
    assert [m.payload for m in received] == [b"with", b"without"]
    assert ("source", "test") in received[0].properties.UserProperty
    assert isinstance(received[1], Message)
