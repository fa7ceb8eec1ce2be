"""The listener as the server builds it from its configuration: TLS, client certificates."""
from __future__ import annotations

import socket
import ssl

import hl7
import pytest

from hl7_fixtures import message
from iomt.hl7.wiring import build_listener
from tests.iomt.iomt_peers import make_pki  # beside the MQTT TLS tests
from serving.config import Settings
from serving.store import Store


@pytest.fixture
def tls_listener(tmp_path):
    pki = make_pki(tmp_path / "pki")
    settings = Settings(state_dir=tmp_path, hl7={"port": 0, "cert_file": pki.server_cert, "key_file": pki.server_key,
                                                 "ca_file": pki.ca})
    store = Store(tmp_path / "db.sqlite3")
    listener = build_listener(settings, store.vitals)
    listener.start()
    try:
        yield listener, pki, store
    finally:
        listener.stop()
        store.close()


def exchange(port: int, context: ssl.SSLContext, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
        with context.wrap_socket(plain, server_hostname="127.0.0.1") as conn:
            conn.sendall(b"\x0b" + raw + b"\x1c\r")
            return conn.recv(65536)


def test_mllp_over_tls_with_a_client_certificate(tls_listener):
    listener, pki, store = tls_listener
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    reply = hl7.parse(exchange(listener.port, context, message("adt_a01_admit.hl7")).strip(b"\x0b\x1c\r"))
    assert str(reply.segment("MSA")[1]) == "AA"
    assert store.vitals.hl7_receipt("BVDK_HN", "HIS", "ADT0001") is not None


def test_a_sender_without_a_certificate_or_in_plain_tcp_gets_nothing(tls_listener):
    listener, pki, _ = tls_listener
    anonymous = ssl.create_default_context(cafile=str(pki.ca))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        exchange(listener.port, anonymous, message("adt_a01_admit.hl7"))
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as plain:
        plain.sendall(b"\x0b" + message("adt_a01_admit.hl7") + b"\x1c\r")
        try:
            assert b"MSA" not in plain.recv(65536)
        except ConnectionResetError:
            pass
    context = ssl.create_default_context(cafile=str(pki.ca))  # the listener is still up
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    assert b"MSA|AA|ADT0001" in exchange(listener.port, context, message("adt_a01_admit.hl7"))


def test_the_tls_keys_go_together():
    with pytest.raises(ValueError, match="cert_file and key_file"):
        Settings(hl7={"port": 2575, "cert_file": "/etc/medgate/hl7.pem"})
    with pytest.raises(ValueError, match="allowed_sources"):
        Settings(hl7={"allowed_sources": ["10.0.0.0/33"]})


def test_the_server_starts_the_listener_when_hl7_port_is_set_and_stops_it(tmp_path, monkeypatch):
    """``medgate serve``'s wiring with no model (the Ray part replaced): MLLP in, the bridge's registry shared."""
    from hl7.client import MLLPClient

    from peers import free_port
    from serving.config import load_config
    from serving.server import Server

    monkeypatch.setattr(Server, "_start_ray", lambda self: {})
    port = free_port()
    settings = load_config(state_dir=tmp_path / "var", dicom={"port": free_port(), "routes": []},
                           mqtt={"embedded_port": free_port()}, hl7={"port": port})
    server = Server(settings)
    try:
        server.start()
        assert server.hl7.port == port and server.hl7.intake.pipeline.registry is server.bridge.registry
        with MLLPClient("127.0.0.1", port) as client:
            assert b"MSA|AA|ADT0001" in client.send_message(message("adt_a01_admit.hl7"))
            assert b"MSA|AA|PHL0001" in client.send_message(message("pcd01_intellivue.hl7"))
        assert server.store.resources("Observation", "Patient/MRN0012345")
    finally:
        server.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_no_listener_without_hl7_port(tmp_path, monkeypatch):
    from peers import free_port
    from serving.config import load_config
    from serving.server import Server

    monkeypatch.setattr(Server, "_start_ray", lambda self: {})
    server = Server(load_config(state_dir=tmp_path / "var", dicom={"port": free_port(), "routes": []},
                                mqtt={"embedded_port": free_port()}))
    try:
        server.start()
        assert server.hl7 is None
    finally:
        server.stop()
