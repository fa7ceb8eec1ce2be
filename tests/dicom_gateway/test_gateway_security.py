"""Allow-list, DICOM TLS (DCMTK storescu +tls), free-space watermark and retention."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from pynetdicom import AE

from dicom_gateway.retention import purge_processed
from dicom_gateway.security import AllowedPeer, AllowList, tls_context
from dicom_gateway.status import StoreStatus
from dicom_gateway.testdata import make_dx_dataset
from gateway_helpers import Running, storescu
from peers import association_rejection, find_peer, free_port, require_peer, wait_until


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


@pytest.fixture
def pki(tmp_path):
    """A throw-away CA, a server and a client certificate (CN=127.0.0.1), made with openssl."""
    if find_peer("openssl") is None:
        pytest.skip(reason="openssl not installed")
    d = tmp_path / "pki"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=medgate test CA", cwd=d)
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", "/CN=127.0.0.1", cwd=d)
        (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    return d


def test_storescu_over_tls(tmp_path, pki):
    require_peer("storescu", "dcmtk")
    context = tls_context(pki / "server.pem", pki / "server.key", pki / "ca.pem")
    running = Running(tmp_path, tls_port=free_port(), ssl_context=context)
    try:
        ds = make_dx_dataset(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
        path = tmp_path / "dx.dcm"
        ds.save_as(path, enforce_file_format=True)
        tls = ("+tls", str(pki / "client.key"), str(pki / "client.pem"), "+cf", str(pki / "ca.pem"))
        result = storescu(running.scp.tls_port, path, extra=tls)
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
