"""ORU^R01 over MLLP through the outbox, against the ``hl7`` package's MLLP server (its asyncio
``hl7.mllp.start_hl7_server``, answering with ``message.create_ack()``) as the RIS.

* AA: delivered, the message parses at the peer;
* AE: dead-lettered at once with MSA-3 and the ERR text;
* AR, a refused connection, no ACK in time: retried by the outbox; the copy sent again keeps MSH-10;
* a CXR study through the imaging pipeline (the tb model, no Ray) reaches the peer as one ORU.
"""
from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import hl7
import numpy as np
import pytest
from hl7.mllp import start_hl7_server

from dicom_gateway.scp import StorageScp
from kernel.delivery_errors import PermanentDeliveryError, TransientDeliveryError
from peers import find_peer, free_port, require_peer, storescu, wait_until
from serving.config import Hl7Destination, Hl7Section, Hl7Tls
from serving.delivery.hl7_message import MessageHeader, build_oru, control_id
from serving.delivery.hl7_sender import Hl7Sender, check_ack
from serving.delivery.outbox import Outbox
from serving.imaging.findings import source_image
from serving.imaging.pipeline import ImagingPipeline
from serving.imaging.results import HL7_KIND
from serving.inference.deployments import ModelServer
from serving.store import Store
from models.finding import Concept, Finding
from training.synthetic.cxr import generate_cxr
from training.synthetic.dicom import make_dx_dataset

#: An ACK the peer leaves unsent (the receiver is stuck).
SILENT = "no answer"


class MllpPeer:
    """The ``hl7`` package's MLLP server on a loopback port, in a thread of its own, answering the
    n-th message with ``answers[n]`` (the last one repeats): an HL7 table 0008 code or
    :data:`SILENT`."""

    def __init__(self, port: int, answers: list[str] | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.port, self.answers, self.tls = port, list(answers or ["AA"]), tls
        self.received: list[hl7.Message] = []
        self._loop = asyncio.new_event_loop()
        self._server = None
        self._thread = threading.Thread(target=self._run, name="mllp-peer", daemon=True)
        self._ready = threading.Event()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            start_hl7_server(self._handle, "127.0.0.1", self.port, encoding="utf-8", ssl=self.tls))
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader, writer) -> None:
        try:
            while True:
                message = await reader.readmessage()
                code = self.answers[min(len(self.received), len(self.answers) - 1)]
                self.received.append(message)
                if code == SILENT:
                    continue
                ack = str(message.create_ack(code)).rstrip("\r")
                if code == "AE":  # MSA-3 and an ERR naming the field, as a RIS would
                    ack = ack.replace("\rMSA|AE|", "\rMSA|AE|", 1) + "|Unknown patient \\F\\ order"
                    ack += "\rERR||PID^1^3|204^Unknown key identifier^HL70357|E||||No order for this accession"
                writer.writeblock((ack + "\r").encode("utf-8"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    def start(self) -> "MllpPeer":
        self._thread.start()
        assert self._ready.wait(10), "the MLLP peer did not start"
        return self

    def stop(self) -> None:
        def close() -> None:
            self._server.close()
            self._loop.stop()
        self._loop.call_soon_threadsafe(close)
        self._thread.join(10)

    def control_ids(self) -> list[str]:
        return [str(m.segment("MSH")(10)) for m in self.received]


@pytest.fixture
def peer():
    peers: list[MllpPeer] = []

    def start(answers=None, port=None, tls=None) -> MllpPeer:
        peers.append(MllpPeer(port or free_port(), answers, tls).start())
        return peers[-1]

    yield start
    for p in peers:
        p.stop()


def destination(port: int, **kw) -> Hl7Destination:
    return Hl7Destination(name="ris", port=port, receiving_application="RIS", receiving_facility="RADIOLOGY",
                          connect_timeout_s=2.0, read_timeout_s=kw.pop("read_timeout_s", 2.0), **kw)


def message(ds, message_id: str) -> str:
    finding = Finding(model="tb", model_version="1.2.0", code=Concept("56717001", "SCT", "Tuberculosis"),
                      probability=0.8, threshold=0.5, source=source_image(ds))
    return build_oru([finding], ds, MessageHeader("MEDGATE", "", "RIS", "RADIOLOGY"), message_id,
                     datetime(2026, 12, 3, tzinfo=timezone.utc))


@pytest.fixture
def cxr():
    return make_dx_dataset(np.zeros((64, 64), np.uint16), issuer="CCCD", accession="A100")


def outbox(tmp_path: Path, port: int, **kw) -> Outbox:
    store = Store(tmp_path / "db.sqlite3")
    return Outbox(store, {HL7_KIND: Hl7Sender({"ris": destination(port, **kw)})}, backoff_base_s=0.0,
                  max_attempts=5)


def deliver(box: Outbox, rounds: int) -> None:
    for _ in range(rounds):
        box.deliver_due()


def test_aa_delivers_and_the_peer_parses_the_oru(peer, tmp_path, cxr):
    ris = peer(["AA"])
    box = outbox(tmp_path, ris.port)
    box.enqueue("hl7:ris:M1", HL7_KIND, "ris", {"message": message(cxr, "M1"), "control_id": "M1"})
    assert box.deliver_due() == 1
    [item] = box.items()
    assert item.status == "sent" and item.attempts == 1
    [received] = ris.received
    assert str(received.segment("MSH")(9)) == "ORU^R01^ORU_R01" and str(received.segment("MSH")(10)) == "M1"
    assert str(received.segment("OBR")(3)) == "A100" and str(received.segment("OBR")(25)) == "P"
    assert str(received.segment("PID")(3)) == f"{cxr.PatientID}^^^CCCD"


def test_ae_dead_letters_at_once_with_the_receivers_reason(peer, tmp_path, cxr):
    ris = peer(["AE"])
    box = outbox(tmp_path, ris.port)
    box.enqueue("hl7:ris:M2", HL7_KIND, "ris", {"message": message(cxr, "M2"), "control_id": "M2"})
    deliver(box, 3)
    [item] = box.items()
    assert item.status == "dead" and item.attempts == 1 and len(ris.received) == 1
    assert "PermanentDeliveryError" in item.last_error and "answered AE (MSA-1) to M2" in item.last_error
    assert "Unknown patient | order" in item.last_error  # MSA-3, unescaped
    assert "No order for this accession at PID^1^3" in item.last_error  # ERR-8 at ERR-2


def test_ar_is_retried_and_the_copy_keeps_msh10(peer, tmp_path, cxr):
    ris = peer(["AR", "AR", "AA"])
    box = outbox(tmp_path, ris.port)
    box.enqueue("hl7:ris:M3", HL7_KIND, "ris", {"message": message(cxr, "M3"), "control_id": "M3"})
    deliver(box, 4)
    [item] = box.items()
    assert item.status == "sent" and item.attempts == 3
    assert ris.control_ids() == ["M3", "M3", "M3"]
    assert len({str(m) for m in ris.received}) == 1  # the same message each time


def test_refused_connection_is_retried_until_the_ris_is_up(peer, tmp_path, cxr):
    port = free_port()
    box = outbox(tmp_path, port)
    box.enqueue("hl7:ris:M4", HL7_KIND, "ris", {"message": message(cxr, "M4"), "control_id": "M4"})
    deliver(box, 2)
    [item] = box.items()
    assert item.status == "pending" and item.attempts == 2
    assert "TransientDeliveryError" in item.last_error and "not reachable" in item.last_error
    ris = peer(["AA"], port=port)
    deliver(box, 1)
    assert box.items()[0].status == "sent" and ris.control_ids() == ["M4"]


def test_no_ack_in_time_is_retried_and_the_duplicate_keeps_msh10(peer, tmp_path, cxr):
    ris = peer([SILENT, "AA"])
    box = outbox(tmp_path, ris.port, read_timeout_s=0.5)
    box.enqueue("hl7:ris:M5", HL7_KIND, "ris", {"message": message(cxr, "M5"), "control_id": "M5"})
    started = time.monotonic()
    deliver(box, 1)
    assert 0.4 < time.monotonic() - started < 3.0  # the read timeout, not a hang
    assert box.items()[0].status == "pending" and "sent no ACK within 0.5 s" in box.items()[0].last_error
    deliver(box, 1)
    assert box.items()[0].status == "sent"
    assert ris.control_ids() == ["M5", "M5"]  # the RIS got it twice and can tell it is one message


def test_an_ack_of_another_message_or_garbage_is_transient():
    where = "HL7 destination ris"
    other = b"MSH|^~\\&|RIS||MEDGATE||20261203||ACK^R01^ACK|9|P|2.5.1\rMSA|AA|OTHER\r"
    with pytest.raises(TransientDeliveryError, match="acknowledged message 'OTHER'"):
        check_ack(other, "M6", where)
    with pytest.raises(TransientDeliveryError, match="unreadable ACK"):
        check_ack(b"HTTP/1.1 400 Bad Request\r\n", "M6", where)
    with pytest.raises(TransientDeliveryError, match="not an HL7 table 0008 code"):
        check_ack(other.replace(b"AA|OTHER", b"ZZ|M6"), "M6", where)
    check_ack(other.replace(b"AA|OTHER", b"CA|M6"), "M6", where)  # enhanced-mode commit accept


def test_a_peer_that_closes_or_is_not_configured(tmp_path, cxr):
    with pytest.raises(PermanentDeliveryError, match="HL7 destination 'his' is not configured"):
        Hl7Sender({"ris": destination(1)})("his", {"message": "MSH|", "control_id": "X"})
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def close_at_once() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.close()

    thread = threading.Thread(target=close_at_once, daemon=True)
    thread.start()
    try:
        with pytest.raises(TransientDeliveryError, match="closed the connection before a complete ACK"):
            Hl7Sender({"ris": destination(port)})("ris", {"message": message(cxr, "M7"), "control_id": "M7"})
    finally:
        thread.join(5)
        listener.close()


def test_tls_to_a_ris_whose_certificate_is_verified(peer, tmp_path, cxr):
    if find_peer("openssl") is None:
        pytest.skip(reason="openssl not installed")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ris",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", "ris.key", "-out", "ris.crt"],
                   cwd=tmp_path, check=True, capture_output=True, timeout=60)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "ris.crt", tmp_path / "ris.key")
    ris = peer(["AA"], tls=context)
    payload = {"message": message(cxr, "M8"), "control_id": "M8"}
    Hl7Sender({"ris": destination(ris.port, tls=Hl7Tls(ca_file=tmp_path / "ris.crt"))})("ris", payload)
    assert ris.control_ids() == ["M8"]
    with pytest.raises(TransientDeliveryError, match="CERTIFICATE_VERIFY_FAILED"):  # not signed by a system CA
        Hl7Sender({"ris": destination(ris.port, tls=Hl7Tls())})("ris", payload)
    with pytest.raises(TransientDeliveryError):  # plain MLLP to a TLS port: no ACK
        Hl7Sender({"ris": destination(ris.port, read_timeout_s=0.5)})("ris", payload)
    assert ris.control_ids() == ["M8"]
    with pytest.raises(ValueError, match="hl7.destinations 'ris': TLS files unreadable .* ca_file /nonexistent.pem"):
        Hl7Sender({"ris": destination(ris.port, tls=Hl7Tls(ca_file="/nonexistent.pem"))})


class LocalHandle:
    """The part of a Ray Serve deployment handle the imaging pipeline uses, over a ModelServer."""

    def __init__(self, server) -> None:
        self.server = server
        self.info = SimpleNamespace(remote=lambda: SimpleNamespace(result=lambda timeout_s=None: server.info()))

    def remote(self, item):
        reply = self.server.run_batch([item])[0]
        return SimpleNamespace(result=lambda timeout_s=None: reply)


def test_a_cxr_study_pushed_by_storescu_reaches_the_ris_as_one_oru(peer, tmp_path):
    """DCMTK storescu -> the DICOM SCP -> the imaging pipeline (tb model, no Ray) -> outbox -> RIS."""
    require_peer("storescu", "dcmtk")
    ris = peer(["AR", "AA"])  # busy once: the worker retries
    model = ModelServer("tb", {"device": "cpu"})
    model.reconfigure({})
    cfg = Hl7Section(facility="BV_CHORAY", destinations=[destination(ris.port)])
    store = Store(tmp_path / "db.sqlite3")
    box = Outbox(store, {HL7_KIND: Hl7Sender(cfg.named())}, backoff_base_s=0.05, poll_interval_s=0.05)
    pipeline = ImagingPipeline(store, box, {"tb": LocalHandle(model)}, tmp_path / "results", hl7=cfg)
    scp = StorageScp("MEDGATE", "127.0.0.1", free_port(), store.gateway, tmp_path / "spool", pipeline.submit,
                     quiet_period_s=0.5, poll_interval_s=0.05)
    ds = make_dx_dataset(generate_cxr(np.random.default_rng(11), tb=True).pixels, issuer="CCCD", accession="ACC1")
    ds.save_as(tmp_path / "cxr.dcm", enforce_file_format=True)
    box.start()
    pipeline.start()
    scp.start()
    try:
        assert storescu(scp.port, tmp_path / "cxr.dcm").returncode == 0
        wait_until(lambda: box.items("sent"), timeout_s=120)
        time.sleep(0.5)  # a second message would arrive by now
    finally:
        scp.stop()
        pipeline.stop()
        box.stop()
        store.close()
    info = model.info()
    expected = control_id(ds.StudyInstanceUID, "tb", info["version"], "ris", [ds.SOPInstanceUID])
    assert ris.control_ids() == [expected, expected]  # AR, then the same message again
    received = ris.received[-1]
    msh, obr = received.segment("MSH"), received.segment("OBR")
    assert str(msh(4)) == "BV_CHORAY" and str(msh(5)) == "RIS" and str(msh(6)) == "RADIOLOGY"
    assert str(obr(3)) == "ACC1" and str(received.segment("PID")(3)) == f"{ds.PatientID}^^^CCCD^NI"
    study, finding, probability = received.segments("OBX")
    assert str(study(5)) == ds.StudyInstanceUID
    assert str(finding(3)) == "{value}^{meaning}^{scheme}".format(**info["finding"])
    p = float(str(probability(5)))
    assert str(finding(8)) == str(probability(8)) == ("A" if p >= info["threshold"] else "N")


def test_the_server_wires_the_hl7_section_to_the_pipeline_and_the_outbox(peer, tmp_path, monkeypatch):
    """``medgate serve``'s wiring with the Ray part replaced by the same model in-process: a study
    stored through the gateway reaches the RIS named in ``hl7.destinations``."""
    from dicom_gateway.scu import send_files
    from serving.config import load_config
    from serving.server import Server

    ris = peer(["AA"])
    model = ModelServer("tb", {"device": "cpu"})
    model.reconfigure({})
    monkeypatch.setattr(Server, "_start_ray", lambda self: {"tb": LocalHandle(model)})
    settings = load_config(state_dir=tmp_path / "var",
                           dicom={"port": free_port(), "routes": [{"models": ["tb"], "modality": ["DX"]}]},
                           mqtt={"embedded_port": free_port()},
                           hl7={"facility": "BV_CHORAY", "destinations": [
                               {"name": "ris", "port": ris.port, "receiving_application": "RIS"}]})
    ds = make_dx_dataset(generate_cxr(np.random.default_rng(3), tb=True).pixels, accession="ACC9")
    ds.save_as(tmp_path / "cxr.dcm", enforce_file_format=True)
    server = Server(settings)
    try:
        server.start()
        send_files([tmp_path / "cxr.dcm"], ae_title="MEDGATE", host="127.0.0.1", port=server.scp.port,
                   calling_ae_title="MODALITY")
        wait_until(lambda: server.outbox.items("sent"), timeout_s=120)
        # an item queued for a destination since removed from the configuration is dead, naming it
        server.outbox.enqueue("hl7:old-ris:X1", HL7_KIND, "old-ris", {"message": "MSH|", "control_id": "X1"})
        [gone] = wait_until(lambda: server.outbox.items("dead"), timeout_s=30)
        assert gone.attempts == 1 and "HL7 destination 'old-ris' is not configured" in gone.last_error
    finally:
        server.stop()
    [received] = ris.received
    assert str(received.segment("MSH")(4)) == "BV_CHORAY" and str(received.segment("OBR")(3)) == "ACC9"
