"""The Mosquitto configuration medgate ships (deploy/mosquitto/) enforced by a real Mosquitto:
TLS with client certificates, a password per account, per-device publish ACLs, alerts and dead
letters writable by the bridge only, and the bridge working through it with its own account."""
from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from iomt.bridge import VitalsBridge
from iomt.mqtt_client import MqttOptions
from iomt_peers import broker, make_pki
from peers import find_peer, wait_until
from serving.delivery.outbox import Outbox
from serving.store import Store
from training.synthetic.vitals import vitals_course

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"
ACCOUNTS = {"MON-1": "mon1-pw", "MON-2": "mon2-pw", "medgate-bridge": "bridge-pw",
            "ward-display": "display-pw"}
NOT_AUTHORIZED = 0x87  # MQTT 5.0 section 2.4 reason code "Not authorized"
OWN_VITALS = "medgate/h1/ward-1/bed-2/MON-1/vitals"


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory):
    """Mosquitto running deploy/mosquitto/mosquitto.conf and acl, on a free loopback port."""
    folder = tmp_path_factory.mktemp("mosquitto-acl")
    pki = make_pki(folder / "pki")
    binary = find_peer("mosquitto_passwd")
    if binary is None:
        pytest.skip(reason="mosquitto_passwd not installed: the password file cannot be made")
    passwd = folder / "passwd"
    passwd.write_text("")
    for user, password in ACCOUNTS.items():
        subprocess.run([binary, "-b", str(passwd), user, password], check=True, capture_output=True,
                       timeout=30)
    files = {"passwd": passwd, "acl": DEPLOY / "acl", "ca.crt": pki.ca,
             "server.crt": pki.server_cert, "server.key": pki.server_key}
    lines = []
    for line in (DEPLOY / "mosquitto.conf").read_text().splitlines():
        if line.startswith("listener "):
            continue  # the test's own listener on 127.0.0.1 comes first (peers.broker)
        for name, path in files.items():
            line = line.replace(f"/etc/mosquitto/medgate/{name}", str(path))
        assert line.startswith("#") or "/etc/" not in line, line
        lines.append(line)
    b = broker(folder, *lines, "persistence false")
    try:
        yield b.port, pki
    finally:
        b.stop()


def connect(secure_broker, user: str, protocol=mqtt.MQTTv5) -> mqtt.Client:
    port, pki = secure_broker
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{user}-{threading.get_ident()}",
                         protocol=protocol)
    client.tls_set(ca_certs=str(pki.ca), certfile=str(pki.client_cert), keyfile=str(pki.client_key))
    client.username_pw_set(user, ACCOUNTS[user])
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set() if not rc.is_failure else None
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert connected.wait(10), f"{user} could not log in"
    return client


def publish_reason(secure_broker, user: str, topic: str, payload: bytes = b"{}") -> int:
    """The PUBACK reason code (MQTT 5.0 section 3.4.2.1) of ``user`` publishing on ``topic``."""
    client = connect(secure_broker, user)
    codes: list[int] = []
    client.on_publish = lambda c, u, mid, rc, p: codes.append(rc.value)
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(10)
        wait_until(lambda: codes, timeout_s=10)
    finally:
        client.loop_stop()
        client.disconnect()
    return codes[0]


def subscribe_reasons(secure_broker, user: str, topic: str) -> list[int]:
    client = connect(secure_broker, user)
    codes: list[int] = []
    client.on_subscribe = lambda c, u, mid, rcs, p: codes.extend(rc.value for rc in rcs)
    try:
        client.subscribe(topic, qos=1)
        wait_until(lambda: codes, timeout_s=10)
    finally:
        client.loop_stop()
        client.disconnect()
    return codes


def test_anonymous_and_wrong_password_are_refused(secure_broker):
    port, pki = secure_broker
    for user, password in ((None, None), ("MON-1", "wrong")):
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.tls_set(ca_certs=str(pki.ca), certfile=str(pki.client_cert), keyfile=str(pki.client_key))
        if user:
            client.username_pw_set(user, password)
        refused: list[int] = []
        client.on_connect = lambda c, u, f, rc, p: refused.append(rc.value)
        client.connect("127.0.0.1", port)
        client.loop_start()
        try:
            wait_until(lambda: refused, timeout_s=10)
        finally:
            client.loop_stop()
        assert refused[0] >= 0x80  # MQTT 5.0 3.2.2.2: 0x86 bad user name or password / 0x87


@pytest.mark.parametrize("topic", [
    "medgate/h1/ward-1/bed-3/MON-2/vitals",  # another device's topic
    "medgate/ward-1/bed-2/vitals",  # the short form, not tied to a device
    "medgate/alerts/ward-1/bed-2",  # a fake alert
    "medgate/deadletter",
    "medgate/adt",  # a fake admission
])
def test_a_device_may_not_publish_elsewhere(secure_broker, topic):
    assert publish_reason(secure_broker, "MON-1", topic) == NOT_AUTHORIZED


def test_a_device_publishes_its_own_vitals(secure_broker):
    assert publish_reason(secure_broker, "MON-1", OWN_VITALS) < 0x80


def test_a_device_reads_nothing(secure_broker):
    """Mosquitto may grant a wildcard subscription (it checks wildcards at delivery), but
    delivers nothing the account may not read."""
    spy = connect(secure_broker, "MON-1")
    seen: list[str] = []
    spy.on_message = lambda c, u, m: seen.append(m.topic)
    control = connect(secure_broker, "medgate-bridge")
    vitals: list[str] = []
    control.on_message = lambda c, u, m: vitals.append(m.topic)
    display = connect(secure_broker, "ward-display")
    alerts: list[str] = []
    display.on_message = lambda c, u, m: alerts.append(m.topic)
    try:
        for client, topic, done in ((spy, "#", []), (spy, "medgate/+/+/+/+/vitals", []),
                                    (spy, "medgate/alerts/#", []), (spy, "medgate/deadletter", []),
                                    (control, "medgate/+/+/+/+/vitals", []),
                                    (display, "medgate/alerts/#", [])):
            client.on_subscribe = lambda c, u, mid, rcs, p, done=done: done.append(mid)
            client.subscribe(topic, qos=1)
            wait_until(lambda done=done: done, timeout_s=10)
        assert publish_reason(secure_broker, "MON-2", "medgate/h1/ward-1/bed-3/MON-2/vitals") < 0x80
        assert publish_reason(secure_broker, "medgate-bridge", "medgate/alerts/ward-1/bed-3") < 0x80
        assert publish_reason(secure_broker, "medgate-bridge", "medgate/deadletter") < 0x80
        wait_until(lambda: vitals and alerts, timeout_s=10)  # delivered to those who may read
        time.sleep(0.5)  # what reached the others would have reached the spy by now
    finally:
        for client in (spy, control, display):
            client.loop_stop()
            client.disconnect()
    assert seen == []


def test_the_bridge_account_reads_vitals_and_writes_alerts_and_dead_letters(secure_broker):
    for topic in ("medgate/+/+/vitals", "medgate/+/+/+/+/vitals", "medgate/adt"):
        assert subscribe_reasons(secure_broker, "medgate-bridge", topic) == [1]  # granted QoS 1
    for topic in ("medgate/alerts/ward-1/bed-2", "medgate/deadletter"):
        assert publish_reason(secure_broker, "medgate-bridge", topic) < 0x80
    assert publish_reason(secure_broker, "medgate-bridge", OWN_VITALS) == NOT_AUTHORIZED


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_the_bridge_works_through_the_acl_over_tls(tmp_path, secure_broker, protocol):
    port, pki = secure_broker
    store = Store(tmp_path / "db.sqlite3")
    bridges: list[VitalsBridge] = []
    outbox = Outbox(store, {"mqtt": lambda topic, payload: bridges[0].publish(topic, payload)},
                    backoff_base_s=0.1)
    options = MqttOptions(protocol=protocol, tls=True, username="medgate-bridge",
                          password=ACCOUNTS["medgate-bridge"], ca_file=pki.ca, cert_file=pki.client_cert,
                          key_file=pki.client_key, reconnect_min_s=0.2, reconnect_max_s=1)
    bridge = VitalsBridge("127.0.0.1", port, topic_prefix="medgate", store=store.vitals, outbox=outbox,
                          options=options, client_id=f"acl-bridge-{protocol}")
    bridges.append(bridge)
    display = connect(secure_broker, "ward-display")
    alerts: list[dict] = []
    display.on_message = lambda c, u, m: alerts.append(json.loads(m.payload))
    display.subscribe("medgate/alerts/#", qos=1)
    bridge.start()
    outbox.start()
    try:
        assert bridge.connected.wait(10)
        last = vitals_course(30, patient_id=f"P-{protocol}", deteriorating=True, seed=4)[-1]
        assert publish_reason(secure_broker, "MON-1", OWN_VITALS, json.dumps(last).encode()) < 0x80
        wait_until(lambda: alerts, timeout_s=20)
    finally:
        display.loop_stop()
        outbox.stop()
        bridge.stop()
    assert alerts[0]["patient"] == f"P-{protocol}" and alerts[0]["bed"] == "bed-2"
    assert store.resources("Observation", f"Patient/P-{protocol}")
    store.close()
