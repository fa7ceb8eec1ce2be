"""Allow-list, DICOM TLS (DCMTK storescu +tls), free-space watermark and retention."""
from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from pynetdicom import AE

from dicom_gateway.config import DicomConfig, DicomTls
from dicom_gateway.retention import purge_processed
from dicom_gateway.security import AllowedPeer, AllowList, tls_context
from dicom_gateway.status import StoreStatus
from dicom_gateway.store import open_gateway_store
from dicom_gateway.wiring import build_scp
from gateway_helpers import Running, storescu
from peers import DCMTK_ENV, association_rejection, find_peer, free_port, require_peer, wait_until
from training.synthetic.dicom import make_dx_dataset


def _associate(port: int, calling: str = "MODALITY"):
    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.1")
    return ae.associate("127.0.0.1", port, ae_title="MEDGATE")


def test_allow_list_rejects_unknown_ae_and_wrong_address(tmp_path, caplog):
    allow = AllowList([AllowedPeer("MODALITY", "127.0.0.1"), AllowedPeer("ELSEWHERE", "10.1.2.3")])
    running = Running(tmp_path, allow=allow)
    try:
        good = _associate(running.scp.port)
        assert good.is_established
        good.release()
        for calling in ("INTRUDER", "ELSEWHERE"):  # PS3.8 9.3.4: 1, 1, 3
            assert ("Result: Rejected Permanent, Source: Service User\nF: Reason: Calling AE Title Not Recognized"
                    in association_rejection(running.scp.port, calling))
        assert "'INTRUDER' is not in dicom.allow" in caplog.text
        assert "allowed from ['10.1.2.3'], not from 127.0.0.1" in caplog.text
    finally:
        running.stop()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


#: name -> (subject CN, subjectAltName) of each certificate the ``pki`` fixture makes.
CERTIFICATES = {
    "server": ("127.0.0.1", "IP:127.0.0.1"),
    "client": ("127.0.0.1", "IP:127.0.0.1"),
    "modality1": ("MODALITY1", None),  # the AE title in the CN only
    "modality2": ("ward 2 portable", "DNS:MODALITY2"),  # the AE title in a DNS subjectAltName only
}


@pytest.fixture
def pki(tmp_path):
    """A throw-away CA and the :data:`CERTIFICATES` signed by it, made with openssl."""
    if find_peer("openssl") is None:
        pytest.skip(reason="openssl not installed")
    d = tmp_path / "pki"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=medgate test CA", cwd=d)
    for name, (common_name, alt_name) in CERTIFICATES.items():
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={common_name}", cwd=d)
        (d / f"{name}.cnf").write_text(f"subjectAltName={alt_name}\n" if alt_name else "")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.cnf", cwd=d)
    return d


def _tls(pki: Path, name: str) -> tuple[str, ...]:
    """DCMTK's options for TLS with ``name``'s key and certificate, trusting the test CA."""
    return "+tls", str(pki / f"{name}.key"), str(pki / f"{name}.pem"), "+cf", str(pki / "ca.pem")


def _echoscu(port: int, calling: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([require_peer("echoscu", "dcmtk"), "-aet", calling, "-aec", "MEDGATE", *extra,
                           "127.0.0.1", str(port)], env=DCMTK_ENV, capture_output=True, text=True, timeout=60)


def test_storescu_over_tls(tmp_path, pki):
    require_peer("storescu", "dcmtk")
    context = tls_context(pki / "server.pem", pki / "server.key", pki / "ca.pem")
    running = Running(tmp_path, tls_port=free_port(), ssl_context=context)
    try:
        ds = make_dx_dataset(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
        path = tmp_path / "dx.dcm"
        ds.save_as(path, enforce_file_format=True)
        result = storescu(running.scp.tls_port, path, extra=_tls(pki, "client"))
        assert result.returncode == 0, result.stderr
        wait_until(lambda: running.completed, timeout_s=10)
        assert running.completed == [(ds.StudyInstanceUID, "tb")]
        plain = storescu(running.scp.tls_port, path)  # no TLS on the TLS port: refused
        assert plain.returncode != 0
        no_cert = storescu(running.scp.tls_port, path, extra=("+tla", "-ic"))  # no client certificate
        assert no_cert.returncode != 0
        assert storescu(running.scp.port, path).returncode == 0  # the plain port still works
    finally:
        running.stop()


def _dicom_with_tls(pki: Path, **tls) -> DicomConfig:
    return DicomConfig(port=free_port(), tls=DicomTls(port=free_port(), cert_file=pki / "server.pem",
                                                      key_file=pki / "server.key", ca_file=pki / "ca.pem", **tls))


def test_tls_only_opens_no_plain_port(tmp_path, pki):
    dicom = _dicom_with_tls(pki, only=True)
    store = open_gateway_store(tmp_path / "db.sqlite3")
    scp = build_scp(dicom, store, tmp_path / "spool", lambda study, model: None, known_models=["tb", "nodule", "derm"])
    scp.start()
    try:
        assert scp.port is None and scp.tls_port == dicom.tls.port
        with socket.socket() as plain:
            assert plain.connect_ex(("127.0.0.1", dicom.port)) != 0  # nothing listens there
        assert _echoscu(dicom.port, "MODALITY").returncode != 0
        result = _echoscu(dicom.tls.port, "MODALITY", _tls(pki, "client"))
        assert result.returncode == 0, result.stderr
    finally:
        scp.stop()
        store.close()


def test_tls_options_are_checked(pki):
    with pytest.raises(ValueError, match="match_calling_ae needs ca_file"):
        DicomTls(cert_file=pki / "server.pem", key_file=pki / "server.key", match_calling_ae=True)
    assert _dicom_with_tls(pki).tls.only is False  # the plain port stays unless asked
    assert _dicom_with_tls(pki).tls.match_calling_ae is False


def test_client_certificate_must_name_the_calling_ae(tmp_path, pki, caplog):
    require_peer("echoscu", "dcmtk")
    allow = AllowList([AllowedPeer(ae, "127.0.0.1") for ae in ("MODALITY1", "MODALITY2", "OTHER_AE")],
                      match_certificate=True)
    context = tls_context(pki / "server.pem", pki / "server.key", pki / "ca.pem")
    running = Running(tmp_path, allow=allow, tls_port=free_port(), ssl_context=context)
    try:
        port = running.scp.tls_port
        for calling, certificate in (("MODALITY1", "modality1"), ("MODALITY2", "modality2")):  # CN, DNS SAN
            accepted = _echoscu(port, calling, _tls(pki, certificate))
            assert accepted.returncode == 0, accepted.stderr
        for calling, certificate in (("OTHER_AE", "modality1"), ("MODALITY1", "modality2"), ("MODALITY1", "client")):
            rejected = _echoscu(port, calling, _tls(pki, certificate))
            assert rejected.returncode != 0 and "Association Rejected" in rejected.stderr, rejected.stderr
            # PS3.8 9.3.4: rejected-permanent, DICOM UL service-user, calling-AE-title-not-recognized
            assert ("Result: Rejected Permanent, Source: Service User\nF: Reason: Calling AE Title Not Recognized"
                    in rejected.stderr)
        assert ("calling AE title 'OTHER_AE' is not named by the client certificate "
                "(CN ['MODALITY1'], DNS subjectAltName []; dicom.tls.match_calling_ae)") in caplog.text
        ds = make_dx_dataset(np.zeros((64, 64), np.uint16))
        path = tmp_path / "dx.dcm"
        ds.save_as(path, enforce_file_format=True)
        stored = storescu(port, path, calling="MODALITY1", extra=_tls(pki, "modality1"))
        assert stored.returncode == 0, stored.stderr
        assert storescu(port, path, calling="OTHER_AE", extra=_tls(pki, "modality1")).returncode != 0
    finally:
        running.stop()


def test_tls_files_are_checked_at_start(tmp_path):
    with pytest.raises(ValueError, match="dicom.tls.cert_file"):
        tls_context(tmp_path / "missing.pem", tmp_path / "missing.key")


def test_watermark_refuses_associations_and_instances(tmp_path, caplog):
    running = Running(tmp_path)
    try:
        assoc = _associate(running.scp.port)
        assert assoc.is_established
        running.scp.intake.min_free_bytes = running.scp.min_free_bytes = 1 << 62  # "disk full"
        ds = make_dx_dataset(np.zeros((64, 64), np.uint16))
        assert assoc.send_c_store(ds).Status == StoreStatus.OUT_OF_RESOURCES
        assoc.release()
        assert ("Result: Rejected Transient, Source: Service Provider (Presentation Related)\n"
                "F: Reason: Local Limit Exceeded" in association_rejection(running.scp.port))  # PS3.8 9.3.4: 2, 3, 2
        assert "below dicom.storage.min_free_bytes" in caplog.text
        assert running.store.instances_of(ds.StudyInstanceUID) == []
    finally:
        running.stop()


def test_retention_deletes_processed_studies_only(tmp_path):
    running = Running(tmp_path)
    try:
        sent = []
        for _ in range(3):
            ds = make_dx_dataset(np.zeros((64, 64), np.uint16))
            assoc = _associate(running.scp.port)
            assert assoc.send_c_store(ds).Status == StoreStatus.SUCCESS
            assoc.release()
            sent.append(ds.StudyInstanceUID)
        wait_until(lambda: len(running.completed) == 3, timeout_s=10)
        done, failed, waiting = sent
        running.store.set_study_status(done, "done")
        running.store.set_study_status(failed, "failed")  # waiting stays "complete" (in the pipeline)
        spool = tmp_path / "spool"
        assert purge_processed(running.store, spool, 1.0, now=time.time() + 0.5 * 86400) == []
        assert purge_processed(running.store, spool, 1.0, now=time.time() + 2 * 86400) == [done]
        assert not (spool / done).exists() and running.store.study(done) is None
        for study in (failed, waiting):
            assert (spool / study).is_dir() and running.store.instances_of(study)
    finally:
        running.stop()


def test_retention_removes_only_spool_folders_named_by_a_uid(tmp_path):
    """A study row whose UID is not a UID (a planted or damaged row) never names a folder to delete."""
    spool, victim = tmp_path / "spool", tmp_path / "precious"
    (spool / "1.2.3").mkdir(parents=True)
    victim.mkdir()
    store = open_gateway_store(tmp_path / "medgate.sqlite3")
    try:
        with store.database.transaction() as db:  # as a row planted or damaged outside the intake would be
            db.executemany("INSERT INTO studies(study_uid, status, received_at, updated_at) VALUES (?, 'done', 0, 0)",
                           [("1.2.3",), ("../precious",)])
        assert sorted(purge_processed(store, spool, 1.0, now=time.time() + 2 * 86400)) == ["../precious", "1.2.3"]
        assert not (spool / "1.2.3").exists() and victim.is_dir()
    finally:
        store.close()
