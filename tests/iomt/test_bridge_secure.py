"""The bridge against Mosquitto with TLS (own CA, client certificate) and a password file."""
from __future__ import annotations

import json
import subprocess

import pytest
from fhir.resources.R4B.observation import Observation

from iomt.bridge import VitalsBridge
from iomt.mqtt_client import MqttOptions
from iomt_peers import PASSWORD, USER, broker, make_pki, password_file
from peers import require_peer, wait_until
from serving.store import Store

T0_MS = 1_795_000_000_000


@pytest.fixture
def secure(tmp_path):
    pki = make_pki(tmp_path / "pki")
    passwd = password_file(tmp_path)
    b = broker(tmp_path, "allow_anonymous false", f"password_file {passwd}", f"cafile {pki.ca}",
               f"certfile {pki.server_cert}", f"keyfile {pki.server_key}", "require_certificate true",
               "persistence false")
    try:
        yield b.port, pki
    finally:
        b.stop()


def pub_tls(port, pki, topic, message):
    binary = require_peer("mosquitto_pub", "mosquitto-clients")
    subprocess.run([binary, "-h", "127.0.0.1", "-p", str(port), "-q", "1", "--cafile", str(pki.ca),
                    "--cert", str(pki.client_cert), "--key", str(pki.client_key), "-u", USER,
                    "-P", PASSWORD, "-t", topic, "-m", message], check=True, timeout=30)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_tls_client_certificate_and_password(tmp_path, secure, protocol):
    port, pki = secure
    store = Store(tmp_path / "db.sqlite3")
    options = MqttOptions(protocol=protocol, tls=True, username=USER, password=PASSWORD, ca_file=pki.ca,
                          cert_file=pki.client_cert, key_file=pki.client_key, reconnect_min_s=0.2,
                          reconnect_max_s=1)
    bridge = VitalsBridge("127.0.0.1", port, topic_prefix="medgate", store=store.vitals, options=options,
                          client_id=f"tls-{protocol}")
    bridge.start()
    try:
        assert bridge.connected.wait(10)
        adt = {"event": "admit", "device": "MON-1", "patient": {"id": "079123456789"},
               "time": "2026-11-22T10:00:00+07:00", "ward": "w1", "bed": "b1"}
        pub_tls(port, pki, "medgate/adt", json.dumps(adt))
        compact = {"d": "MON-1", "t": T0_MS, "v": [[147842, 88], [150456, 97], [151562, 18]]}
        pub_tls(port, pki, "medgate/h1/w1/b1/MON-1/vitals", json.dumps(compact))
        wait_until(lambda: bridge.processed >= 2, timeout_s=15)
    finally:
        bridge.stop()
    observations = store.resources("Observation", "Patient/079123456789")
    assert len(observations) == 4  # HR, SpO2, RR, NEWS2
    for resource in observations:
        Observation.model_validate(resource)
    store.close()


def test_wrong_password_is_refused(tmp_path, secure):
    port, pki = secure
    store = Store(tmp_path / "db.sqlite3")
    options = MqttOptions(tls=True, username=USER, password="wrong", ca_file=pki.ca,
                          cert_file=pki.client_cert, key_file=pki.client_key)
    bridge = VitalsBridge("127.0.0.1", port, topic_prefix="medgate", store=store.vitals, options=options,
                          client_id="tls-wrong")
    bridge.start(timeout_s=3)
    try:
        assert not bridge.connected.is_set()
    finally:
        bridge.stop()
        store.close()
